//! `record_id`: a record's own name, the same each time the same record is delivered
//! (a store or a broker counts it once however often it arrives).
//!
//! - A record the kernel made is named by where it came from: the boot, the CPU and
//!   the per-CPU sequence number of its kernel record, and its stage.
//! - A verdict (`blocked`, a `reached` through a proxy) by the attempt it judges:
//!   the same kernel record's name with the verdict's stage (a verdict made again
//!   after a restart, from the same attempt, gets the same id).
//! - A `verified` record, made by userspace alone, by its content: its time, tuple and
//!   verdict.
//!
//! 32 hex digits: the first 16 bytes of a SHA-1 of those fields (a name, not a secret:
//! SHA-1 is what Community ID uses already).

use sha1::{Digest as _, Sha1};

use super::record::Record;

/// A record's id: 16 bytes, written as 32 hex digits (on a stack buffer: the kernel's
/// records each get one, on the per-record path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordId(pub [u8; 16]);

impl RecordId {
    fn of(hasher: Sha1) -> Self {
        let digest = hasher.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }

    /// The 32 hex digits.
    pub fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 15)];
        }
        out
    }
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hex digits only.
        f.write_str(std::str::from_utf8(&self.hex()).expect("ASCII"))
    }
}

impl serde::Serialize for RecordId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(std::str::from_utf8(&self.hex()).expect("ASCII"))
    }
}

/// The id of a record that comes from kernel record (boot, cpu, kseq), at `stage`.
pub fn of_kernel(boot_id: &str, cpu: u32, kseq: u64, stage: &str) -> RecordId {
    let mut h = Sha1::new();
    h.update(b"k\0");
    h.update(boot_id.as_bytes());
    h.update(cpu.to_le_bytes());
    h.update(kseq.to_le_bytes());
    h.update(stage.as_bytes());
    RecordId::of(h)
}

/// The id of a record userspace alone made (a probe's `verified` record).
pub fn of_content(rec: &Record) -> RecordId {
    let mut h = Sha1::new();
    h.update(b"c\0");
    h.update(rec.ts.format());
    h.update(
        format!(
            "\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}",
            rec.stage,
            rec.proto,
            rec.src_ip,
            rec.src_port,
            rec.dst_ip,
            rec.dst_port,
            rec.host_port.map_or(0, u32::from),
            rec.verdict.unwrap_or("")
        )
        .as_bytes(),
    );
    RecordId::of(h)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::kernel::event::{Observation, Proto, Stage};

    #[test]
    fn a_kernel_record_is_named_by_its_origin_and_stage() {
        let a = of_kernel("b1", 0, 7, "attempted");
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert!(text.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(serde_json::to_value(a).unwrap(), serde_json::Value::from(text));
        assert_eq!(a, of_kernel("b1", 0, 7, "attempted"), "the same record, the same id");
        for other in
            [of_kernel("b2", 0, 7, "attempted"), of_kernel("b1", 1, 7, "attempted"), of_kernel("b1", 0, 8, "attempted")]
        {
            assert_ne!(a, other);
        }
        assert_ne!(a, of_kernel("b1", 0, 7, "blocked"), "a verdict on an attempt is not the attempt");
    }

    #[test]
    fn a_userspace_record_is_named_by_its_content() {
        let o = Observation::sample(Stage::Reached, Proto::Tcp, "198.18.3.2", 40000, "172.17.0.2", 80);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut rec = Record::from_observation(&o, Stage::Reached, at, "eth0");
        rec.verdict = Some("EXPOSED");
        let id = of_content(&rec);
        assert_eq!(id, of_content(&rec.clone()));
        let mut held = rec.clone();
        held.verdict = Some("HELD");
        assert_ne!(id, of_content(&held));
        let mut later = rec.clone();
        later.ts = crate::output::record::Timestamp(at + Duration::from_micros(1));
        assert_ne!(id, of_content(&later));
    }
}
