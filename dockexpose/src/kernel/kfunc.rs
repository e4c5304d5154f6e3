//! Kernel function (kfunc) calls in the eBPF object, resolved before aya loads it.
//!
//! aya 0.14 has no kfunc support: bpf-linker emits a kfunc call as `call -1` with a
//! relocation against an undefined symbol, and aya rejects it. The kernel wants
//! `src_reg = BPF_PSEUDO_KFUNC_CALL` and `imm` = the function's BTF id, so that is
//! written into a copy of the object here; aya then leaves those instructions alone.
//! A kernel without the function (no conntrack, no BTF) gets `r0 = 0` instead of the
//! call: the program sees "no entry" and falls back to what the packet says.

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

/// BPF_PSEUDO_KFUNC_CALL.
const PSEUDO_KFUNC_CALL: u8 = 2;
/// BPF_ALU64 | BPF_MOV | BPF_K: `r0 = imm`.
const MOV64_IMM: u8 = 0xb7;
const INSN_LEN: usize = 8;

/// Which calls were patched, and how.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Patched {
    pub resolved: Vec<&'static str>,
    /// Kfuncs the running kernel does not have: their calls now return 0.
    pub missing: Vec<&'static str>,
}

/// Returns a copy of `elf` whose calls to `kfuncs` point at their BTF ids (`id_of`).
pub fn resolve(
    elf: &[u8],
    kfuncs: &[&'static str],
    id_of: impl Fn(&str) -> Option<u32>,
) -> Result<(Vec<u8>, Patched), String> {
    let file = object::File::parse(elf).map_err(|e| format!("the embedded eBPF object is not valid ELF: {e}"))?;
    let mut out = elf.to_vec();
    let mut patched = Patched::default();
    for section in file.sections() {
        let Some((section_start, section_len)) = section.file_range() else { continue };
        for (offset, reloc) in section.relocations() {
            let RelocationTarget::Symbol(index) = reloc.target() else { continue };
            let Ok(symbol) = file.symbol_by_index(index) else { continue };
            if !symbol.is_undefined() {
                continue;
            }
            let Ok(name) = symbol.name() else { continue };
            let Some(&kfunc) = kfuncs.iter().find(|k| **k == name) else { continue };
            if offset + INSN_LEN as u64 > section_len {
                return Err(format!("relocation for {name} outside its section"));
            }
            let at = (section_start + offset) as usize;
            let insn = &mut out[at..at + INSN_LEN];
            match id_of(kfunc) {
                Some(id) => {
                    insn[1] = (insn[1] & 0x0f) | (PSEUDO_KFUNC_CALL << 4);
                    insn[2..4].copy_from_slice(&0u16.to_le_bytes());
                    insn[4..8].copy_from_slice(&(id as i32).to_le_bytes());
                    if !patched.resolved.contains(&kfunc) {
                        patched.resolved.push(kfunc);
                    }
                }
                None => {
                    insn.copy_from_slice(&[MOV64_IMM, 0, 0, 0, 0, 0, 0, 0]);
                    if !patched.missing.contains(&kfunc) {
                        patched.missing.push(kfunc);
                    }
                }
            }
        }
    }
    Ok((out, patched))
}
