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
//! 32 hex digits: the first 16 bytes of a SHA-1 of those fields.

use sha1::{Digest as _, Sha1};

use super::record::Record;

fn hex16(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The id of a record that comes from kernel record (boot, cpu, kseq), at `stage`.
pub fn of_kernel(boot_id: &str, cpu: u32, kseq: u64, stage: &str) -> String {
    let mut h = Sha1::new();
    h.update(format!("k\0{boot_id}\0{cpu}\0{kseq}\0{stage}").as_bytes());
    hex16(&h.finalize())
}

/// The id of a record userspace alone made (a probe's `verified` record).
pub fn of_content(rec: &Record) -> String {
    let mut h = Sha1::new();
    let ts = rec.ts.format();
    h.update(b"c\0");
    h.update(ts);
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
    hex16(&h.finalize())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::kernel::event::{Observation, Proto, Stage};

    #[test]
    fn a_kernel_record_is_named_by_its_origin_and_stage() {
        let a = of_kernel("b1", 0, 7, "attempted");
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, of_kernel("b1", 0, 7, "attempted"), "the same record, the same id");
        for other in [of_kernel("b2", 0, 7, "attempted"), of_kernel("b1", 1, 7, "attempted"), of_kernel("b1", 0, 8, "attempted")] {
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
