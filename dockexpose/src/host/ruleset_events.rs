//! Ruleset changes as the kernel announces them: every committed nftables transaction
//! (from `nft`, iptables-nft, firewalld, Docker's iptables calls on an nf_tables host)
//! ends with one NFT_MSG_NEWGEN on multicast group NFNLGRP_NFTABLES, naming the
//! process that committed it. The object messages before it (NEWTABLE, NEWRULE, ...)
//! are not changes of their own; only their table names are kept, so the caller can
//! tell a transaction that touched nothing but dockexpose's own trace table.
//!
//! iptables-legacy sends nothing: `legacy_in_use` says when its tables are live, and
//! `legacy_digest` is what a poller compares between two reads of them.

use std::{
    collections::BTreeSet,
    hash::{Hash, Hasher},
    io,
    process::Command,
    time::Duration,
};

use netlink_packet_core::{NetlinkBuffer, NlasIterator, Parseable};
use netlink_packet_netfilter::nftables::{GenAttribute, GenMessage};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::host::netlink::{read_was_idle, set_read_timeout};

/// include/uapi/linux/netfilter/nfnetlink.h: the nftables multicast group.
const NFNLGRP_NFTABLES: u32 = 7;
/// The nftables subsystem in the high byte of a netfilter message type.
const NFNL_SUBSYS_NFTABLES: u8 = 10;
/// The end of a committed transaction.
const NFT_MSG_NEWGEN: u8 = 15;
/// NFT_MSG_TRACE: not a change (and sent on another group anyway).
const NFT_MSG_TRACE: u8 = 17;
/// struct nlmsghdr.
pub(crate) const NETLINK_HEADER_LEN: usize = 16;
/// The nfgenmsg header (family, version, res_id) before the attributes.
const NFGENMSG_LEN: usize = 4;
/// NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, ... are all 1.
const NFTA_TABLE: u16 = 1;

/// One committed ruleset transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesetChange {
    /// The ruleset generation it made.
    pub gen_id: Option<u32>,
    /// The committing process (its pid and comm, as the kernel saw them).
    pub pid: Option<u32>,
    pub process: Option<String>,
    /// The tables its object messages named (empty when they were not seen).
    pub tables: BTreeSet<String>,
}

/// What one read gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Changes(Vec<RulesetChange>),
    /// The socket's buffer overflowed (ENOBUFS): some transactions went unseen.
    Lost,
    /// Nothing within the read timeout.
    Idle,
}

/// Folds netlink messages into transactions. Object messages of a transaction may
/// come in other datagrams than its NEWGEN, so the table names are kept across reads.
#[derive(Debug, Default)]
pub struct Transactions {
    tables: BTreeSet<String>,
}

impl Transactions {
    /// The transactions a datagram completes. Truncated or malformed messages end
    /// the parse (bounds are checked by the netlink buffers), keeping what came before.
    pub fn feed(&mut self, datagram: &[u8]) -> Vec<RulesetChange> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + NETLINK_HEADER_LEN <= datagram.len() {
            let Ok(msg) = NetlinkBuffer::new_checked(&datagram[at..]) else {
                break;
            };
            let len = msg.length() as usize;
            let kind = msg.message_type();
            let payload = msg.payload();
            if (kind >> 8) as u8 == NFNL_SUBSYS_NFTABLES && payload.len() >= NFGENMSG_LEN {
                let attrs = &payload[NFGENMSG_LEN..];
                match kind as u8 {
                    NFT_MSG_NEWGEN => {
                        let mut change = parse_gen(attrs);
                        change.tables = std::mem::take(&mut self.tables);
                        out.push(change);
                    }
                    NFT_MSG_TRACE => {}
                    _ => {
                        if let Some(t) = table_name(attrs) {
                            self.tables.insert(t);
                        }
                    }
                }
            }
            if len == 0 {
                break;
            }
            // Netlink messages are 4-byte aligned in a datagram.
            at += (len + 3) & !3;
        }
        out
    }
}

/// NFTA_GEN_* of a NEWGEN; unknown or malformed attributes are left out.
fn parse_gen(attrs: &[u8]) -> RulesetChange {
    let mut change = RulesetChange::default();
    let Ok(msg) = GenMessage::parse(attrs) else {
        return change;
    };
    for attr in msg.attributes {
        match attr {
            GenAttribute::Id(id) => change.gen_id = Some(id),
            GenAttribute::ProcPid(pid) => change.pid = Some(pid),
            GenAttribute::ProcName(name) => change.process = Some(name),
            _ => {}
        }
    }
    change
}

/// Attribute 1 of an nftables object message: the table it belongs to.
fn table_name(attrs: &[u8]) -> Option<String> {
    NlasIterator::new(attrs).map_while(Result::ok).find(|nla| nla.kind() == NFTA_TABLE).and_then(|nla| {
        let v = nla.value();
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        std::str::from_utf8(&v[..end]).ok().map(str::to_string)
    })
}

/// A NETLINK_NETFILTER socket joined to NFNLGRP_NFTABLES.
pub struct RulesetEvents {
    socket: Socket,
    transactions: Transactions,
}

impl RulesetEvents {
    /// Subscribes in this thread's network namespace; reads wait at most `timeout`
    /// (so a reader thread can notice that nobody listens any more).
    pub fn subscribe(timeout: Duration) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.add_membership(NFNLGRP_NFTABLES)?;
        // A firewalld reload is thousands of object messages: room for them.
        let _ = socket.set_rx_buf_sz(4 << 20);
        set_read_timeout(&socket, timeout)?;
        Ok(Self { socket, transactions: Transactions::default() })
    }

    /// Waits for the next datagram.
    pub fn recv(&mut self) -> io::Result<Received> {
        match self.socket.recv_from_full() {
            Ok((data, _)) => Ok(Received::Changes(self.transactions.feed(&data))),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // The half-seen transaction's tables are unreliable now.
                self.transactions = Transactions::default();
                Ok(Received::Lost)
            }
            Err(e) if read_was_idle(&e) => Ok(Received::Idle),
            Err(e) => Err(e),
        }
    }
}

/// Whether iptables-legacy tables are in use: `iptables -V` names the legacy backend,
/// or the legacy tables list (/proc/net/ip_tables_names, ip6_tables_names) is not empty.
pub fn legacy_in_use(iptables_version: &str, legacy_table_names: &str) -> bool {
    iptables_version.contains("legacy") || legacy_table_names.lines().any(|l| !l.trim().is_empty())
}

/// `legacy_in_use` in this thread's network namespace (/proc/thread-self: a thread
/// may have entered another namespace than the process's main thread).
pub fn detect_legacy() -> bool {
    let version = Command::new("iptables")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let names = ["ip_tables_names", "ip6_tables_names"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).ok())
        .collect::<String>();
    legacy_in_use(&version, &names)
}

/// A digest of `iptables-legacy-save` output that changes with the rules only: the
/// "# Generated ... on DATE" comments and the chains' packet counters are left out.
pub fn legacy_digest(save_outputs: &[&str]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for out in save_outputs {
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let line = match line.strip_prefix(':') {
                // ":INPUT ACCEPT [12:345]": the counters move with every packet.
                Some(_) => line.rsplit_once(" [").map_or(line, |(head, _)| head),
                None => line,
            };
            line.hash(&mut h);
        }
        "\0".hash(&mut h);
    }
    h.finish()
}

/// Reads and digests the legacy IPv4 and IPv6 rulesets (one missing program counts
/// as empty output; both missing is an error).
pub fn read_legacy_digest() -> io::Result<u64> {
    let mut outs = Vec::new();
    let mut last_err = None;
    for prog in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        match Command::new(prog).stderr(std::process::Stdio::null()).output() {
            Ok(o) => outs.push(String::from_utf8_lossy(&o.stdout).into_owned()),
            Err(e) => last_err = Some(e),
        }
    }
    if outs.is_empty() {
        return Err(last_err.unwrap_or_else(|| io::Error::other("no iptables-legacy-save")));
    }
    Ok(legacy_digest(&outs.iter().map(String::as_str).collect::<Vec<_>>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    // Captured from the kernel (6.18) on NFNLGRP_NFTABLES in a fresh namespace:
    // `nft add table inet dxd_t` run as pid 10378: NEWTABLE, then NEWGEN.
    const NFT_NEWTABLE: &str = "3c000000000a0000010000008a280000010000020a0001006478645f7400000008000300000000000c00040000000000000000010800020000000000";
    const NFT_NEWGEN: &str = "2c0000000f0a0000010000008a280000000000020800010000000002080002000000288a080003006e667400";
    // `iptables -A INPUT -p tcp --dport 8080 -j DROP` (iptables-nft 1.8.9) as pid 10469:
    // NEWTABLE filter, NEWCHAIN INPUT and NEWRULE in one datagram, NEWGEN in the next.
    const IPT_OBJECTS: &str = "3c000000000a000402000000e5280000020000030b00010066696c746572000008000300000000010c0004000000000000000002080002000000000070000000030a000403000000e5280000020000030b00010066696c74657200000a000300494e5055540000000c0002000000000000000001140004000800010000000001080002000000000008000500000000010b00070066696c746572000008000a0000000001080006000000000148010000060a000c04000000e5280000020000030b00010066696c74657200000a000200494e5055540000000c00030000000000000000021001040024000100090001006d6574610000000014000200080002000000001008000100000000012c00010008000100636d700020000200080001000000000108000200000000000c0003000500010006000000340001000c0001007061796c6f6164002400020008000100000000010800020000000002080003000000000208000400000000022c00010008000100636d700020000200080001000000000108000200000000000c000300060001001f9000002c0001000c000100636f756e746572001c0002000c00010000000000000000000c0002000000000000000000300001000e000100696d6d6564696174650000001c0002000800010000000000100002000c0002000800010000000000";
    const IPT_NEWGEN: &str =
        "340000000f0a000002000000e528000000000003080001000000000308000200000028e50d00030069707461626c657300000000";

    #[test]
    fn newgen_of_nft_names_the_process_and_the_tables_before_it() {
        let mut t = Transactions::default();
        assert_eq!(t.feed(&hex(NFT_NEWTABLE)), vec![], "object messages are no change of their own");
        let changes = t.feed(&hex(NFT_NEWGEN));
        assert_eq!(
            changes,
            vec![RulesetChange {
                gen_id: Some(2),
                pid: Some(10378),
                process: Some("nft".into()),
                tables: BTreeSet::from(["dxd_t".to_string()]),
            }]
        );
        // The next transaction starts with no tables.
        assert_eq!(t.feed(&hex(NFT_NEWGEN))[0].tables, BTreeSet::new());
    }

    #[test]
    fn newgen_of_iptables_nft_reports_iptables() {
        let mut t = Transactions::default();
        assert!(t.feed(&hex(IPT_OBJECTS)).is_empty());
        let mut both = hex(IPT_OBJECTS);
        both.extend(hex(IPT_NEWGEN));
        let changes = Transactions::default().feed(&both);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].gen_id, Some(3));
        assert_eq!(changes[0].pid, Some(10469));
        assert_eq!(changes[0].process.as_deref(), Some("iptables"));
        assert_eq!(changes[0].tables, BTreeSet::from(["filter".to_string()]));
    }

    #[test]
    fn truncated_or_foreign_messages_give_nothing_and_do_not_panic() {
        let gen = hex(NFT_NEWGEN);
        for cut in 0..gen.len() {
            assert!(Transactions::default().feed(&gen[..cut]).is_empty(), "cut at {cut}");
        }
        // A conntrack (subsystem 1) message of the NEWGEN's shape is not a change.
        let mut other = gen.clone();
        other[5] = 1;
        assert!(Transactions::default().feed(&other).is_empty());
        // A NEWGEN whose attributes are garbage is still a change, of unknown origin.
        let mut bad = gen[..20].to_vec();
        bad[0] = 24;
        bad.extend([0xff, 0x00, 0x01, 0x00]); // an attribute longer than the message
        let c = Transactions::default().feed(&bad);
        assert_eq!(c, vec![RulesetChange::default()]);
    }

    #[test]
    fn legacy_detection() {
        assert!(legacy_in_use("iptables v1.8.7 (legacy)\n", ""));
        assert!(legacy_in_use("iptables v1.8.9 (nf_tables)\n", "filter\nnat\n"));
        assert!(!legacy_in_use("iptables v1.8.9 (nf_tables)\n", ""));
        assert!(!legacy_in_use("", "\n"));
    }

    #[test]
    fn legacy_digest_ignores_dates_and_counters_but_not_rules() {
        let a = "# Generated by iptables-save v1.8.9 on Mon Dec  7 06:51:19 2026\n*filter\n:INPUT ACCEPT [9535:364713054]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n";
        let b = "# Generated by iptables-save v1.8.9 on Mon Dec  7 06:52:00 2026\n*filter\n:INPUT ACCEPT [9999:364799999]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n";
        let c = b.replace("--dport 22", "--dport 23");
        let d = b.replace(":INPUT ACCEPT", ":INPUT DROP");
        assert_eq!(legacy_digest(&[a, ""]), legacy_digest(&[b, ""]));
        assert_ne!(legacy_digest(&[a, ""]), legacy_digest(&[&c, ""]));
        assert_ne!(legacy_digest(&[a, ""]), legacy_digest(&[&d, ""]));
        // The same rules in IPv6 rather than IPv4 are another ruleset.
        assert_ne!(legacy_digest(&[a, ""]), legacy_digest(&["", a]));
    }
}
