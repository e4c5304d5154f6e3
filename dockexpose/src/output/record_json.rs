//! The native record's JSON line, written straight into the audit log's buffer.
//!
//! The byte-for-byte same output as serde_json's for `Record` (the contract's key
//! order, the same escaping: `record_json_tests` checks the two agree on every shape
//! of record), at a fraction of the cost: serde_json escapes every string byte by
//! byte, which was a quarter of the daemon's time per record, while most of a
//! record's strings are ours (stage names, hex ids, addresses) and need none. A
//! string that might need escaping is scanned once, eight bytes at a time; only one
//! that does goes through serde_json's escaper. What a busy host's records share (the
//! container object, the interface's name, host and boot id, the second's date) is
//! encoded once and reused while the next record shares it (`Encoder`).

use std::{io::Write as _, net::IpAddr, sync::Arc};

use super::record::{ContainerRef, HostSide, Record, Timestamp};
use crate::kernel::event::IfName;

/// Encodes records, keeping the encoded bytes of what most records share with the one
/// before: under load they name the same container and interface (the same `Arc`),
/// the same host and boot, and the same second.
#[derive(Default)]
pub struct Encoder {
    container: Kept<Arc<ContainerRef>>,
    /// A few interfaces' (an uplink's attempt and a bridge's reach alternate).
    ifaces: Vec<(IfName, Vec<u8>)>,
    /// `,"host":…,"host_id":…` (either may be absent).
    host: Kept<Hosts>,
    /// `,"boot_id":…` of a boot id (static: compared by address).
    boot: Kept<&'static str>,
    /// "YYYY-MM-DDTHH:MM:SS" of the last record's second (a date is divisions).
    second: Option<(u64, [u8; 19])>,
}

/// The bytes encoded from a value, kept while the next value is the same one (the same
/// allocation: an `Arc` kept here cannot be freed and its address reused meanwhile).
struct Kept<K>(Option<(K, Vec<u8>)>);

impl<K> Default for Kept<K> {
    fn default() -> Self {
        Self(None)
    }
}

impl<K> Kept<K> {
    /// The kept bytes if `same` says the kept value is this one; else `encode`s it and
    /// keeps the bytes with `key()`.
    fn put(
        &mut self,
        out: &mut Vec<u8>,
        same: impl Fn(&K) -> bool,
        key: impl FnOnce() -> K,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        match &self.0 {
            Some((kept, bytes)) if same(kept) => out.extend_from_slice(bytes),
            _ => {
                let start = out.len();
                encode(out);
                self.0 = Some((key(), out[start..].to_vec()));
            }
        }
    }
}

/// A record's `host` and `host_id`.
type Hosts = (Option<Arc<str>>, Option<Arc<str>>);

/// The same allocation, or both absent.
fn same_arc<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Interfaces whose encoded names are kept (the oldest goes first).
const IFACES_KEPT: usize = 8;

/// The longest record the daemon writes without a rare key (intent, why, ban) is
/// under 1 KiB: reserved once, so that no append on the way grows the buffer.
const RESERVE: usize = 1024;

impl Encoder {
    /// Appends `rec` as one JSON object (no newline).
    pub fn write(&mut self, rec: &Record, out: &mut Vec<u8>) {
        out.reserve(RESERVE);
        encode(rec, out, self);
    }

    fn timestamp(&mut self, out: &mut Vec<u8>, ts: Timestamp) {
        let (secs, micros) = ts.parts();
        let date = match self.second {
            Some((s, date)) if s == secs => date,
            _ => {
                let date = Timestamp::format_second(secs);
                self.second = Some((secs, date));
                date
            }
        };
        out.extend_from_slice(&date);
        out.push(b'.');
        out.extend_from_slice(&Timestamp::format_micros(micros));
        out.push(b'Z');
    }

    fn container(&mut self, out: &mut Vec<u8>, c: &Arc<ContainerRef>) {
        self.container.put(out, |kept| Arc::ptr_eq(kept, c), || c.clone(), |out| container(out, c));
    }

    fn iface(&mut self, out: &mut Vec<u8>, name: &IfName) {
        if let Some((_, bytes)) = self.ifaces.iter().find(|(known, _)| Arc::ptr_eq(known, name)) {
            out.extend_from_slice(bytes);
            return;
        }
        let start = out.len();
        string(out, name);
        if self.ifaces.len() == IFACES_KEPT {
            self.ifaces.remove(0);
        }
        self.ifaces.push((name.clone(), out[start..].to_vec()));
    }

    fn host(&mut self, out: &mut Vec<u8>, host: &Option<Arc<str>>, host_id: &Option<Arc<str>>) {
        let same = |(h, id): &Hosts| same_arc(h, host) && same_arc(id, host_id);
        self.host.put(
            out,
            same,
            || (host.clone(), host_id.clone()),
            |out| {
                if let Some(host) = host {
                    out.extend_from_slice(b",\"host\":");
                    string(out, host);
                }
                if let Some(host_id) = host_id {
                    out.extend_from_slice(b",\"host_id\":");
                    string(out, host_id);
                }
            },
        );
    }

    fn boot(&mut self, out: &mut Vec<u8>, boot: &'static str) {
        self.boot.put(
            out,
            |kept| std::ptr::eq(*kept, boot),
            || boot,
            |out| {
                out.extend_from_slice(b",\"boot_id\":");
                string(out, boot);
            },
        );
    }
}

/// Appends `rec` as one JSON object (no newline).
pub fn write(rec: &Record, out: &mut Vec<u8>) {
    Encoder::default().write(rec, out);
}

fn encode(rec: &Record, out: &mut Vec<u8>, enc: &mut Encoder) {
    out.extend_from_slice(b"{\"schema\":");
    int(out, rec.schema);
    out.extend_from_slice(b",\"ts\":\"");
    enc.timestamp(out, rec.ts);
    out.extend_from_slice(b"\",\"stage\":");
    ours(out, rec.stage);
    out.extend_from_slice(b",\"proto\":");
    ours(out, rec.proto);
    out.extend_from_slice(b",\"family\":");
    ours(out, rec.family);
    out.extend_from_slice(b",\"src_ip\":");
    ip(out, rec.src_ip);
    out.extend_from_slice(b",\"src_port\":");
    int(out, rec.src_port);
    out.extend_from_slice(b",\"dst_ip\":");
    ip(out, rec.dst_ip);
    out.extend_from_slice(b",\"dst_port\":");
    int(out, rec.dst_port);
    out.extend_from_slice(b",\"host_ip\":");
    match rec.host_ip {
        Some(a) => ip(out, a),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"host_port\":");
    match rec.host_port {
        Some(p) => int(out, p),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(id) = &rec.community_id {
        out.extend_from_slice(b",\"community_id\":");
        string(out, id);
    }
    out.extend_from_slice(b",\"iface\":");
    enc.iface(out, &rec.iface);
    out.extend_from_slice(b",\"container\":");
    match &rec.container {
        Some(c) => enc.container(out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"exposure\":");
    ours(out, rec.exposure);
    out.extend_from_slice(b",\"published\":[");
    for (i, side) in rec.published.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        host_side(out, side);
    }
    out.extend_from_slice(b"],\"path\":");
    match rec.path {
        Some(p) => ours(out, p),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"spoofed_local\":");
    boolean(out, rec.spoofed_local);
    out.extend_from_slice(b",\"spoofed_trusted\":");
    boolean(out, rec.spoofed_trusted);
    out.extend_from_slice(b",\"shape\":[");
    for (i, word) in rec.shape.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        ours(out, word);
    }
    out.push(b']');
    if let Some(v) = rec.verdict {
        out.extend_from_slice(b",\"verdict\":");
        ours(out, v);
    }
    if let Some(why) = &rec.why {
        out.extend_from_slice(b",\"why\":");
        string(out, why);
    }
    if let Some(intent) = &rec.intent {
        // Rare (a port the host's firewall speaks for): serde's own encoding.
        out.extend_from_slice(b",\"intent\":");
        serde(out, intent);
    }
    if let Some(c) = rec.contradiction {
        out.extend_from_slice(b",\"contradiction\":");
        boolean(out, c);
    }
    if let Some(ban) = &rec.ban_bypassed {
        out.extend_from_slice(b",\"ban_bypassed\":");
        string(out, ban);
    }
    if let Some(boot) = rec.boot_id {
        enc.boot(out, boot);
    }
    if let Some(cpu) = rec.cpu {
        out.extend_from_slice(b",\"cpu\":");
        int(out, cpu);
    }
    if let Some(kseq) = rec.kseq {
        out.extend_from_slice(b",\"kseq\":");
        int(out, kseq);
    }
    if let Some(id) = &rec.record_id {
        out.extend_from_slice(b",\"record_id\":\"");
        out.extend_from_slice(&id.hex());
        out.push(b'"');
    }
    enc.host(out, &rec.host, &rec.host_id);
    out.push(b'}');
}

fn container(out: &mut Vec<u8>, c: &ContainerRef) {
    out.extend_from_slice(b"{\"id\":");
    string(out, &c.id);
    out.extend_from_slice(b",\"name\":");
    string(out, &c.name);
    out.extend_from_slice(b",\"image\":");
    string(out, &c.image);
    out.extend_from_slice(b",\"compose_project\":");
    optional_string(out, c.compose_project.as_deref());
    out.extend_from_slice(b",\"compose_service\":");
    optional_string(out, c.compose_service.as_deref());
    out.extend_from_slice(b",\"swarm_service\":");
    optional_string(out, c.swarm_service.as_deref());
    out.extend_from_slice(b",\"swarm_task\":");
    optional_string(out, c.swarm_task.as_deref());
    out.push(b'}');
}

fn host_side(out: &mut Vec<u8>, side: &HostSide) {
    out.extend_from_slice(b"{\"host_ip\":");
    ip(out, side.host_ip);
    out.extend_from_slice(b",\"host_port\":");
    int(out, side.host_port);
    out.push(b'}');
}

fn optional_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An address in its Display form, quoted (as serde writes `IpAddr`): digits, dots,
/// colons and hex letters, never escaped.
fn ip(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            // Built on the stack from the octets' table, appended at once as a whole
            // buffer (a copy of known size) and cut back to the address's length.
            let mut buf = [0u8; IPV4_QUOTED];
            buf[0] = b'"';
            let mut n = 1;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let [a, b, c, len] = OCTETS[usize::from(octet)];
                buf[n..n + 3].copy_from_slice(&[a, b, c]);
                n += usize::from(len);
            }
            buf[n] = b'"';
            let start = out.len();
            out.extend_from_slice(&buf);
            out.truncate(start + n + 1);
        }
        // Rarer, and its shortest form has rules of its own: std's Display.
        IpAddr::V6(v6) => {
            let _ = write!(out, "\"{v6}\"");
        }
    }
}

/// "255.255.255.255" and its quotes.
const IPV4_QUOTED: usize = 17;

/// 0 to 255 in decimal: up to three digits (the rest zero) and how many there are. A
/// table, not divisions: four octets in every address, three addresses a record.
const OCTETS: [[u8; 4]; 256] = {
    let mut table = [[0u8; 4]; 256];
    let mut n = 0;
    while n < 256 {
        let v = n as u8;
        table[n] = if v >= 100 {
            [b'0' + v / 100, b'0' + v / 10 % 10, b'0' + v % 10, 3]
        } else if v >= 10 {
            [b'0' + v / 10, b'0' + v % 10, 0, 2]
        } else {
            [b'0' + v, 0, 0, 1]
        };
        n += 1;
    }
    table
};

/// One of the daemon's own words (a stage, a protocol, an exposure, a path, a shape,
/// a verdict): never anything to escape, so not looked at.
fn ours(out: &mut Vec<u8>, s: &'static str) {
    debug_assert!(!needs_escape(s.as_bytes()), "{s:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A JSON string: as it is when nothing in it needs escaping, else serde_json's.
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde(out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether any byte is one serde_json escapes (a control character, `"` or `\`),
/// eight bytes at a time: a byte below 0x20 or equal to one of the two sets a high bit
/// (bytes of 0x80 and above, UTF-8, never do).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_in = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0;
        if control || zero_in(x ^ (ONES * u64::from(b'"'))) || zero_in(x ^ (ONES * u64::from(b'\\'))) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn serde<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Into memory: only a serializer bug could fail, and then the key gets null
    // rather than half a value.
    let start = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
#[path = "record_json_tests.rs"]
mod tests;
