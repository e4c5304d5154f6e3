//! The record's `community_id` against the reference implementation (PyPI
//! `communityid`, by the spec's authors), on a table of random tuples (a fixed seed;
//! TCP, UDP and SCTP; IPv4 and IPv6). No root, no network: the reference runs as a
//! `python3` subprocess reading the tuples as JSON on stdin, one id a line out.
//! Without the package (`python3 -m pip install communityid`) the test says SKIPPED,
//! unless `CI` is set, where it fails.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
};

use dockexpose::output::community_id::community_id_v1;

const REFERENCE: &str = r#"
import json, sys
import communityid
cid = communityid.CommunityID()
make = {6: communityid.FlowTuple.make_tcp, 17: communityid.FlowTuple.make_udp,
        132: communityid.FlowTuple.make_sctp}
for proto, src, sport, dst, dport in json.load(sys.stdin):
    print(cid.calc(make[proto](src, dst, sport, dport)))
"#;

/// splitmix64: a fixed sequence, no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn addr(&mut self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(u128::from(self.next()) << 64 | u128::from(self.next())))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.next() as u32))
        }
    }
}

type Tuple = (u8, IpAddr, u16, IpAddr, u16);

fn tuples() -> Vec<Tuple> {
    let mut rng = Rng(0x00c0_ffee_d0c4_e5e7);
    let mut out = Vec::new();
    for i in 0..24 {
        let proto = [6u8, 17, 132][i % 3];
        let v6 = (i / 3) % 2 == 1;
        let (src, dst) = (rng.addr(v6), rng.addr(v6));
        let (sport, dport) = (rng.next() as u16, rng.next() as u16);
        out.push((proto, src, sport, dst, dport));
    }
    // Ties: one address (the ports decide the order), and one endpoint on both ends.
    let a = rng.addr(false);
    out.push((6, a, 9000, a, 80));
    out.push((17, a, 53, a, 53));
    let b = rng.addr(true);
    out.push((132, b, 80, b, 9000));
    out
}

#[test]
fn community_ids_match_the_reference_implementation() {
    let table = tuples();
    let input = serde_json::to_vec(
        &table.iter().map(|&(p, s, sp, d, dp)| (p, s.to_string(), sp, d.to_string(), dp)).collect::<Vec<_>>(),
    )
    .unwrap();

    let skip = |why: String| {
        if std::env::var_os("CI").is_some() {
            panic!("the Community ID reference is needed in CI: {why}");
        }
        println!("SKIPPED: {why} (python3 -m pip install communityid)");
    };
    let probe = Command::new("python3").args(["-c", "import communityid"]).stderr(Stdio::null()).status();
    match probe {
        Ok(s) if s.success() => {}
        Ok(_) => return skip("python3 cannot import communityid".into()),
        Err(e) => return skip(format!("no python3: {e}")),
    }

    let mut child = Command::new("python3")
        .args(["-c", REFERENCE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the reference failed: {out:?}");
    let expected: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(expected.len(), table.len(), "one id per tuple: {expected:?}");

    for (&(proto, src, sport, dst, dport), want) in table.iter().zip(&expected) {
        let ours = community_id_v1(proto, src, sport, dst, dport);
        assert_eq!(ours, *want, "proto {proto} {src}:{sport} -> {dst}:{dport}");
        // Either direction names the same flow.
        assert_eq!(community_id_v1(proto, dst, dport, src, sport), ours, "reversed {src}:{sport} -> {dst}:{dport}");
    }
    println!("{} tuples match the reference", table.len());
}
