//! Community ID v1 (<https://github.com/corelight/community-id-spec>): a flow's
//! name that other tools (Zeek, Suricata, Arkime, ...) compute the same way, so that
//! a record can be joined with theirs.
//!
//! `"1:" + base64(SHA-1(seed (2 bytes, big-endian) + src addr + dst addr + proto
//! (1 byte) + 0 (1 byte) + src port (2 bytes, BE) + dst port (2 bytes, BE)))`, the
//! endpoints ordered so that the smaller (address, port) comes first, seed 0.

use std::{net::IpAddr, sync::Arc};

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use super::record::Record;

/// The seed: 0, the spec's default (other tools use it unless told otherwise).
const SEED: u16 = 0;

/// IANA protocol numbers of the record's `proto`.
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_SCTP: u8 = 132;

/// Longest hashed input: seed 2 + two IPv6 addresses 32 + proto and pad 2 + ports 4.
const MAX_INPUT: usize = 2 + 16 + 16 + 2 + 4;
/// "1:" and the base64 of a 20-byte digest (28 characters, one '=').
const ID_LEN: usize = 2 + 28;

/// 16 bytes of an address, and how many of them count (4 or 16). An IPv4 address
/// paired with an IPv6 one is taken in its IPv4-mapped form, so that both ends have
/// one length (a record's ends are always of one family).
fn octets(addr: IpAddr, as_v6: bool) -> ([u8; 16], usize) {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(v4) if !as_v6 => {
            out[..4].copy_from_slice(&v4.octets());
            (out, 4)
        }
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 16),
        IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

/// The Community ID v1 (seed 0) of a port-based flow (TCP 6, UDP 17, SCTP 132) from
/// (`src`, `sport`) to (`dst`, `dport`); either direction gives the same id.
pub fn community_id_v1(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> String {
    IdText::of(proto, src, sport, dst, dport).as_str().to_owned()
}

/// An id's text, made on the stack (the caller chooses where it is kept).
struct IdText {
    bytes: [u8; ID_LEN],
    len: usize,
}

impl IdText {
    fn as_str(&self) -> &str {
        // "1:" and base64: ASCII.
        std::str::from_utf8(&self.bytes[..self.len]).expect("ASCII")
    }

    fn of(proto: u8, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        let as_v6 = src.is_ipv6() || dst.is_ipv6();
        let (mut a, len) = octets(src, as_v6);
        let (mut b, _) = octets(dst, as_v6);
        let (mut pa, mut pb) = (sport, dport);
        // The smaller (address, port) first: addresses compared as bytes, ports on a tie.
        if (&b[..len], pb) < (&a[..len], pa) {
            std::mem::swap(&mut a, &mut b);
            std::mem::swap(&mut pa, &mut pb);
        }

        let mut input = [0u8; MAX_INPUT];
        let mut n = 0;
        let mut put = |bytes: &[u8]| {
            input[n..n + bytes.len()].copy_from_slice(bytes);
            n += bytes.len();
        };
        put(&SEED.to_be_bytes());
        put(&a[..len]);
        put(&b[..len]);
        put(&[proto, 0]);
        put(&pa.to_be_bytes());
        put(&pb.to_be_bytes());
        let digest = Sha1::digest(&input[..n]);

        let mut id = [0u8; ID_LEN];
        id[..2].copy_from_slice(b"1:");
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(digest.as_slice(), &mut id[2..])
            .expect("28 bytes hold the base64 of 20");
        Self { bytes: id, len: 2 + written }
    }
}

/// The IANA number of a record's `proto` (TCP for an unknown name: a record's proto
/// is always one of the three).
fn proto_number(proto: &str) -> u8 {
    match proto {
        "udp" => PROTO_UDP,
        "sctp" => PROTO_SCTP,
        _ => PROTO_TCP,
    }
}

/// The tuple the outsider used, as a record tells it: from the source to the host side
/// (`host_ip`, `host_port`: the tuple before DNAT) when the record knows it, otherwise
/// the tuple observed (`src_ip`/`src_port` to `dst_ip`/`dst_port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowTuple {
    proto: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
}

impl FlowTuple {
    fn of_record(rec: &Record) -> Self {
        let proto = proto_number(rec.proto);
        let (src, sport) = (rec.src_ip, rec.src_port);
        match (rec.host_ip, rec.host_port) {
            (Some(dst), Some(dport)) if dst.is_ipv4() == src.is_ipv4() => Self { proto, src, sport, dst, dport },
            _ => Self { proto, src, sport, dst: rec.dst_ip, dport: rec.dst_port },
        }
    }

    fn id(&self) -> IdText {
        IdText::of(self.proto, self.src, self.sport, self.dst, self.dport)
    }

    /// A slot of `Recent` (its source port and the low bits of its source address:
    /// what differs between the connections of a busy moment).
    fn slot(&self) -> usize {
        let low = match self.src {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(a) => (u128::from(a) & 0xffff_ffff) as u32,
        };
        (usize::from(self.sport) ^ (low as usize).wrapping_mul(0x9e37)) % RECENT_SLOTS
    }
}

/// The Community ID of the tuple the outsider used (see `FlowTuple`).
pub fn of_record(rec: &Record) -> String {
    FlowTuple::of_record(rec).id().as_str().to_owned()
}

/// Slots of `Recent`.
const RECENT_SLOTS: usize = 256;

/// The ids made lately, by tuple: a connection's `reached` record names the very tuple
/// its `attempted` record named a moment before, so its id (a SHA-1 and a base64) is
/// not made twice. A tuple is kept until another one takes its slot.
pub struct Recent {
    slots: Vec<Option<(FlowTuple, Arc<str>)>>,
}

impl Default for Recent {
    fn default() -> Self {
        Self { slots: vec![None; RECENT_SLOTS] }
    }
}

impl Recent {
    /// The record's Community ID (`of_record`), made again only for a tuple not seen lately.
    pub fn of_record(&mut self, rec: &Record) -> Arc<str> {
        let flow = FlowTuple::of_record(rec);
        let slot = &mut self.slots[flow.slot()];
        match slot {
            Some((seen, id)) if *seen == flow => id.clone(),
            _ => {
                // Straight from the stack into its one allocation.
                let id: Arc<str> = flow.id().as_str().into();
                *slot = Some((flow, id.clone()));
                id
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::kernel::event::{Observation, Proto, Stage};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // Expected ids from the reference implementation (PyPI `communityid` 1.5.0), e.g.
    //   python3 -c "import communityid; cid=communityid.CommunityID();
    //     print(cid.calc(communityid.FlowTuple.make_tcp('198.18.3.2','198.18.3.1',40112,8080)))"
    // (make_udp / make_sctp for the other protocols).

    #[test]
    fn the_spec_example_matches() {
        // The spec's README: 128.232.110.120:34855 -> 66.35.250.204:80, TCP.
        assert_eq!(
            community_id_v1(6, ip("128.232.110.120"), 34855, ip("66.35.250.204"), 80),
            "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
        );
    }

    #[test]
    fn ipv4_tcp_udp_sctp_match_the_reference() {
        let (s, d) = (ip("198.18.3.2"), ip("198.18.3.1"));
        // make_tcp('198.18.3.2','198.18.3.1',40112,8080)
        assert_eq!(community_id_v1(6, s, 40112, d, 8080), "1:q56dCzNiETsI+i/gyEbUFrETGt0=");
        // make_udp('198.18.3.2','198.18.3.1',40112,5353)
        assert_eq!(community_id_v1(17, s, 40112, d, 5353), "1:egxd8Dm3jkvSqRCnM7xLVUg3GkY=");
        // make_sctp('198.18.3.2','198.18.3.1',40112,9899)
        assert_eq!(community_id_v1(132, s, 40112, d, 9899), "1:g4XRxFKq3FoANM5rLo9+aHvyr7Q=");
    }

    #[test]
    fn ipv6_tcp_udp_match_the_reference() {
        let (s, d) = (ip("fd42:1::2"), ip("fd42:1::1"));
        // make_tcp('fd42:1::2','fd42:1::1',5000,8080)
        assert_eq!(community_id_v1(6, s, 5000, d, 8080), "1:/3zBZoBQTHcuJrY8aiykq2Whwcw=");
        // make_udp('fd42:1::2','fd42:1::1',5000,8080)
        assert_eq!(community_id_v1(17, s, 5000, d, 8080), "1:WEYhSZLBjIV+XwV013+wDJOyrww=");
    }

    #[test]
    fn either_direction_gives_the_same_id() {
        let (s, d) = (ip("198.18.3.2"), ip("198.18.3.1"));
        assert_eq!(community_id_v1(6, d, 8080, s, 40112), "1:q56dCzNiETsI+i/gyEbUFrETGt0=");
        let (s6, d6) = (ip("fd42:1::2"), ip("fd42:1::1"));
        assert_eq!(community_id_v1(17, s6, 5000, d6, 8080), community_id_v1(17, d6, 8080, s6, 5000));
        // One address: the ports order the ends. make_tcp('10.0.0.1','10.0.0.1',9000,80)
        let a = ip("10.0.0.1");
        assert_eq!(community_id_v1(6, a, 9000, a, 80), "1:h7TinaUh4GjLw6QxFuNrAT0ci7Y=");
        assert_eq!(community_id_v1(6, a, 80, a, 9000), "1:h7TinaUh4GjLw6QxFuNrAT0ci7Y=");
    }

    fn record(orig_dst: Option<(&str, u16)>) -> Record {
        let obs = Observation {
            ktime_ns: 1,
            stage: Stage::Reached,
            proto: Proto::Tcp,
            src: ip("198.18.3.2"),
            src_port: 40000,
            dst: ip("10.251.0.2"),
            dst_port: 80,
            orig_dst: orig_dst.map(|(a, p)| (ip(a), p)),
            ifindex: 3,
            seq: 0,
            flags: 0,
            cpu: 0,
            rec_seq: 0,
        };
        Record::from_observation(&obs, Stage::Reached, SystemTime::UNIX_EPOCH, "br0")
    }

    #[test]
    fn a_record_is_named_by_its_host_side_when_known() {
        // make_tcp('198.18.3.2','198.18.3.1',40000,8080): the tuple before DNAT.
        assert_eq!(of_record(&record(Some(("198.18.3.1", 8080)))), "1:aXRMY0laAR6kRty6zK3tARBmywY=");
        // make_tcp('198.18.3.2','10.251.0.2',40000,80): no host side, the tuple observed.
        assert_eq!(of_record(&record(None)), "1:rXw9lstaJ21x7omukF/t8dhziPk=");
        // Half a host side is no host side.
        let mut half = record(Some(("198.18.3.1", 8080)));
        half.host_port = None;
        assert_eq!(of_record(&half), "1:rXw9lstaJ21x7omukF/t8dhziPk=");
    }

    #[test]
    fn a_record_s_protocol_and_family_are_used() {
        let mut rec = record(Some(("198.18.3.1", 8080)));
        (rec.proto, rec.src_ip, rec.src_port, rec.dst_ip, rec.dst_port) =
            ("udp", ip("fd42::2"), 5000, ip("fd42:1::2"), 80);
        rec.host_ip = Some(ip("fd42::1"));
        // make_udp('fd42::2','fd42::1',5000,8080)
        assert_eq!(of_record(&rec), "1:VhxOkkKT37tswI0qtq6jxDvutZI=");
        rec.proto = "sctp";
        assert_eq!(of_record(&rec), community_id_v1(132, ip("fd42::2"), 5000, ip("fd42::1"), 8080));
    }

    #[test]
    fn a_record_written_carries_its_id() {
        let mut rec = record(Some(("198.18.3.1", 8080)));
        let v: serde_json::Value = serde_json::from_str(&rec.to_json_line()).unwrap();
        assert!(v.get("community_id").is_none(), "set by the fan-out, not before");
        rec.community_id = Some(of_record(&rec).into());
        let v: serde_json::Value = serde_json::from_str(&rec.to_json_line()).unwrap();
        assert_eq!(v["community_id"], "1:aXRMY0laAR6kRty6zK3tARBmywY=");
    }

    #[test]
    fn recent_ids_are_the_ids_of_their_own_tuples_only() {
        let mut recent = Recent::default();
        let attempt = record(Some(("198.18.3.1", 8080)));
        let first = recent.of_record(&attempt);
        assert_eq!(*first, of_record(&attempt));
        // The reach of the same connection: the same tuple (its host side), not made again.
        let mut reach = attempt.clone();
        (reach.dst_ip, reach.dst_port) = (ip("172.17.0.2"), 80);
        assert!(Arc::ptr_eq(&recent.of_record(&reach), &first));
        // Every other tuple gets its own id, also where it shares a slot: 3 000 sources
        // over 256 slots, each asked twice, in turn.
        let mut others = Vec::new();
        for i in 0..3000u32 {
            let mut rec = attempt.clone();
            rec.src_ip = IpAddr::V4(std::net::Ipv4Addr::from(0xc613_0000 + i / 7));
            rec.src_port = 20_000 + (i % 7) as u16;
            others.push(rec);
        }
        for rec in others.iter().chain(others.iter().rev()) {
            assert_eq!(*recent.of_record(rec), of_record(rec), "{}:{}", rec.src_ip, rec.src_port);
        }
        // The tuple observed, when a record has no host side.
        let mut observed = attempt.clone();
        (observed.host_ip, observed.host_port) = (None, None);
        assert_eq!(*recent.of_record(&observed), of_record(&observed));
        assert_ne!(*recent.of_record(&observed), *recent.of_record(&attempt));
    }
}
