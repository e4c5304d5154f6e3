//! Crafted first packets (IP options, tiny fragments, IPv6 extension headers, SCTP
//! INIT...) sent from a namespace by `craft.py` (scapy), with the target's answer.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

/// The shapes `craft.py` knows (see its docstring for what each one hides).
pub const TCP4_SHAPES: [&str; 3] = ["tcp4-plain", "tcp4-options", "tcp4-tiny-frags"];
pub const TCP6_SHAPES: [&str; 6] =
    ["tcp6-plain", "tcp6-hbh", "tcp6-dstopts", "tcp6-routing", "tcp6-frag", "tcp6-chain"];
pub const UDP4_SHAPES: [&str; 2] = ["udp4-plain", "udp4-frags"];
pub const UDP6_SHAPES: [&str; 1] = ["udp6-dstopts"];
pub const SCTP_SHAPES: [&str; 2] = ["sctp4-init", "sctp6-init"];

/// What came back for one crafted packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crafted {
    /// The target answered at the transport layer (dst:dport -> src:sport).
    pub answered: bool,
    /// "SA" (SYN-ACK), "R" (reset), "udp", "INIT-ACK", "ABORT", or None.
    pub answer: Option<String>,
    /// An ICMP error quoting the packet, "type/code" (e.g. "3/2": protocol
    /// unreachable, the answer of a host without SCTP to an INIT), or None.
    pub icmp: Option<String>,
}

/// The path of craft.py.
pub fn script() -> String {
    format!("{}/tests/support/craft.py", env!("CARGO_MANIFEST_DIR"))
}

/// Sends one crafted first packet of `shape` from namespace `ns` (source `src`, any
/// address, port `sport`) to `dst`, and waits up to `timeout` for the answer.
/// Panics with the script's stderr if scapy is missing or the script fails.
pub fn craft(ns: &str, shape: &str, src: IpAddr, dst: SocketAddr, sport: u16, timeout: Duration) -> Crafted {
    craft_args(ns, shape, src, dst, sport, timeout, &[])
}

/// `craft` with extra arguments for the script (e.g. `["--rh-type", "4"]`).
pub fn craft_args(
    ns: &str,
    shape: &str,
    src: IpAddr,
    dst: SocketAddr,
    sport: u16,
    timeout: Duration,
    extra: &[&str],
) -> Crafted {
    let script = script();
    let args: Vec<String> = [
        "netns",
        "exec",
        ns,
        "python3",
        &script,
        shape,
        "--src",
        &src.to_string(),
        "--dst",
        &dst.ip().to_string(),
        "--dport",
        &dst.port().to_string(),
        "--sport",
        &sport.to_string(),
        "--timeout",
        &format!("{:.3}", timeout.as_secs_f64()),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(extra.iter().map(|s| s.to_string()))
    .collect();
    let out = Command::new("ip").args(&args).output().unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) || stderr.contains("No module named 'scapy'") {
        panic!("craft {shape}: scapy is missing: install it with `python3 -m pip install scapy`\n{stderr}");
    }
    assert!(out.status.success(), "craft {shape} from {ns} failed ({}):\n{stdout}{stderr}", out.status);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("craft {shape}: no JSON line:\n{stdout}{stderr}"));
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("craft {shape}: bad JSON {line:?}: {e}"));
    assert_eq!(v["shape"], shape, "craft.py answered for another shape: {line}");
    assert_eq!(v["sport"], sport, "craft.py answered for another port: {line}");
    Crafted {
        answered: v["answered"].as_bool().unwrap_or_else(|| panic!("craft {shape}: no 'answered' in {line}")),
        answer: v["answer"].as_str().map(str::to_string),
        icmp: v["icmp"].as_str().map(str::to_string),
    }
}
