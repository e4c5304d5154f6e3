//! Just enough of the running kernel's BTF (/sys/kernel/btf/vmlinux) to find a
//! function's type id (for kfunc calls) and a struct member's byte offset (for reading
//! `struct nf_conn`). Rust cannot emit CO-RE relocations, and aya 0.14 keeps its own
//! BTF walk private, so the few offsets the bridge program needs are computed here at
//! load time and handed to it as read-only globals.

use std::borrow::Cow;

const MAGIC: u16 = 0xeb9f;

pub const KIND_STRUCT: u8 = 4;
pub const KIND_UNION: u8 = 5;
pub const KIND_FUNC: u8 = 12;
const KIND_INT: u8 = 1;
const KIND_ARRAY: u8 = 3;
const KIND_ENUM: u8 = 6;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset (the bitfield size already masked off).
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: u8,
    /// The referenced type for typedef/const/volatile/..., the element type for arrays.
    type_ref: u32,
    members: Vec<Member>,
}

/// A parsed BTF blob.
pub struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

/// Why a BTF blob could not be read or a name not found.
#[derive(Debug, PartialEq, Eq)]
pub struct BtfError(pub String);

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| BtfError(format!("truncated at byte {at}")))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| BtfError(format!("truncated at byte {at}")))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|e| BtfError(format!("reading {path}: {e}")))?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob (header, type section, string section).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0)? != MAGIC {
            return Err(BtfError("not BTF (bad magic)".into()));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_raw = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| BtfError("type section out of bounds".into()))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| BtfError("string section out of bounds".into()))?
            .to_vec();
        let mut types = vec![Type { name_off: 0, kind: 0, type_ref: 0, members: Vec::new() }];
        let mut at = 0;
        while at < types_raw.len() {
            let name_off = u32_at(types_raw, at)?;
            let info = u32_at(types_raw, at + 4)?;
            let size_or_type = u32_at(types_raw, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = ((info >> 24) & 0x1f) as u8;
            let kind_flag = info >> 31 == 1;
            let mut ty = Type { name_off, kind, type_ref: size_or_type, members: Vec::new() };
            at += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => {
                    ty.type_ref = u32_at(types_raw, at)?;
                    12
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw = u32_at(types_raw, m + 8)?;
                        ty.members.push(Member {
                            name_off: u32_at(types_raw, m)?,
                            type_id: u32_at(types_raw, m + 4)?,
                            bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_ENUM64 => {
                    // Value names only (features.rs asks whether an enum has a value).
                    let step = if kind == KIND_ENUM { 8 } else { 12 };
                    for i in 0..vlen {
                        ty.members.push(Member {
                            name_off: u32_at(types_raw, at + i * step)?,
                            type_id: 0,
                            bit_offset: 0,
                        });
                    }
                    vlen * step
                }
                KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC => vlen * 12,
                0..=19 => 0,
                other => return Err(BtfError(format!("unknown BTF kind {other}"))),
            };
            types.push(ty);
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> Cow<'_, str> {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end])
    }

    /// The id of the type called `name` of `kind` (KIND_FUNC, KIND_STRUCT, ...).
    pub fn id_of(&self, name: &str, kind: u8) -> Option<u32> {
        self.types.iter().position(|t| t.kind == kind && self.name(t.name_off) == name).map(|i| i as u32)
    }

    /// Whether the enum called `enum_name` has a value called `value` (the kernel's
    /// UAPI enums say which attach types and map types it knows).
    pub fn has_enum_value(&self, enum_name: &str, value: &str) -> bool {
        self.types
            .iter()
            .filter(|t| matches!(t.kind, KIND_ENUM | KIND_ENUM64) && self.name(t.name_off) == enum_name)
            .any(|t| t.members.iter().any(|m| self.name(m.name_off) == value))
    }

    /// Follows typedefs and qualifiers, and arrays to their element (index 0).
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG | KIND_ARRAY => {
                    id = t.type_ref
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of member `name` in struct/union `ty`, looking into anonymous members.
    fn member(&self, ty: &Type, name: &str) -> Option<(u32, u32)> {
        for m in &ty.members {
            if m.name_off != 0 {
                if self.name(m.name_off) == name {
                    return Some((m.bit_offset, m.type_id));
                }
                continue;
            }
            let inner = self.resolve(m.type_id)?;
            if let Some((off, id)) = self.member(inner, name) {
                return Some((m.bit_offset + off, id));
            }
        }
        None
    }

    /// Byte offset of `path` (member names, arrays taken at index 0) from the start of
    /// the struct called `root`.
    pub fn offset_of(&self, root: &str, path: &[&str]) -> Result<u32, BtfError> {
        let id = self
            .id_of(root, KIND_STRUCT)
            .ok_or_else(|| BtfError(format!("struct {root} is not in the kernel's BTF")))?;
        let mut ty = self.resolve(id).ok_or_else(|| BtfError(format!("struct {root}: broken type chain")))?;
        let mut bits = 0;
        for name in path {
            if ty.kind != KIND_STRUCT && ty.kind != KIND_UNION {
                return Err(BtfError(format!("{root}.{}: {name} is not inside a struct or union", path.join("."))));
            }
            let (off, next) =
                self.member(ty, name).ok_or_else(|| BtfError(format!("{root} has no member {}", path.join("."))))?;
            bits += off;
            ty = self.resolve(next).ok_or_else(|| BtfError(format!("{root}.{name}: broken type chain")))?;
        }
        if bits % 8 != 0 {
            return Err(BtfError(format!("{root}.{} is a bitfield", path.join("."))));
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: int, struct inner { u16 port; }, struct outer { int a; union
    /// { int x; } (anonymous); struct inner arr[2]; }, func f.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0port\0outer\0a\0x\0arr\0f\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            (strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() + 1) as u32
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| t.extend_from_slice(&w.to_le_bytes()));
        // 1: int (4 bytes)
        push(&[s("int"), (KIND_INT as u32) << 24, 4, 32]);
        // 2: struct inner { int port @ bit 16 }
        push(&[s("inner"), (KIND_STRUCT as u32) << 24 | 1, 4, s("port"), 1, 16]);
        // 3: anonymous union { int x }
        push(&[0, (KIND_UNION as u32) << 24 | 1, 4, s("x"), 1, 0]);
        // 4: array of 2 inner
        push(&[0, (KIND_ARRAY as u32) << 24, 0, 2, 1, 2]);
        // 5: struct outer { int a @0; union @32; inner arr[2] @64 }
        push(&[s("outer"), (KIND_STRUCT as u32) << 24 | 3, 16, s("a"), 1, 0, 0, 3, 32, s("arr"), 4, 64]);
        // 6: func f (proto 0)
        push(&[s("f"), (KIND_FUNC as u32) << 24, 0]);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(strings);
        b
    }

    #[test]
    fn finds_functions_and_member_offsets_through_arrays_and_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.id_of("f", KIND_FUNC), Some(6));
        assert_eq!(btf.id_of("f", KIND_STRUCT), None);
        assert_eq!(btf.offset_of("outer", &["a"]), Ok(0));
        assert_eq!(btf.offset_of("outer", &["x"]), Ok(4), "found inside the anonymous union");
        assert_eq!(btf.offset_of("outer", &["arr", "port"]), Ok(10), "array element 0, then the member");
        assert!(btf.offset_of("outer", &["nope"]).unwrap_err().0.contains("no member nope"));
        assert!(btf.offset_of("missing", &["a"]).is_err());
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Btf::parse(b"\x00\x00garbage").is_err());
        assert!(Btf::parse(&[]).is_err());
    }

    #[test]
    fn reads_the_running_kernels_nf_conn() {
        // The kernels this project runs on have BTF and conntrack built in.
        let btf = Btf::from_sys_fs().unwrap();
        assert!(btf.id_of("bpf_rdonly_cast", KIND_FUNC).is_some());
        assert!(btf.offset_of("sk_buff", &["_nfct"]).is_ok());
        let dst = btf.offset_of("nf_conn", &["tuplehash", "tuple", "dst", "u3"]).unwrap();
        let src = btf.offset_of("nf_conn", &["tuplehash", "tuple", "src", "u3"]).unwrap();
        // struct nf_conntrack_man is u3 (16 bytes), u (2), l3num (2): dst follows 20 bytes on.
        assert_eq!(dst - src, 20);
    }
}
