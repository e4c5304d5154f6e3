//! Bans INPUT applies: ipset sets matched as `--match-set NAME src -j DROP|REJECT`,
//! fail2ban jails (their `f2b-JAIL` chains of `-s IP -j REJECT` rules, or their
//! `f2b-JAIL` ipsets), and nftables sets dropped by `saddr @set`. UFW's `deny from`
//! bans come from ufw.rs. Pure: the dumps come in as text or JSON.

use std::collections::BTreeMap;

use super::{netfilter::Filter, Ban};
use crate::net::prefix::Prefix;

/// `ipset save` / `ipset list -o save`: set name to members. A member with a port
/// (`hash:ip,port`'s "198.18.3.2,tcp:80") counts as its address: approximate, the ban
/// then reads as wider than it is.
pub fn parse_ipset_save(text: &str) -> BTreeMap<String, Vec<Prefix>> {
    let mut sets: BTreeMap<String, Vec<Prefix>> = BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("create"), Some(name), _) => {
                sets.entry(name.to_string()).or_default();
            }
            (Some("add"), Some(name), Some(member)) => {
                let addr = member.split(',').next().unwrap_or(member);
                if let Ok(p) = addr.parse::<Prefix>() {
                    sets.entry(name.to_string()).or_default().push(p);
                }
            }
            _ => {}
        }
    }
    sets
}

/// How a set or chain is named to the operator: fail2ban's `f2b-JAIL` is its jail.
fn ban_name(kind: &str, name: &str) -> String {
    match name.strip_prefix("f2b-") {
        Some(jail) => format!("fail2ban jail {jail}"),
        None => format!("{kind} {name}"),
    }
}

fn drops(target: Option<&str>) -> bool {
    matches!(target, Some("DROP") | Some("REJECT"))
}

/// The bans of one iptables-save dump: sets matched by INPUT or the chains it jumps to,
/// and fail2ban chains INPUT jumps to. Warnings name sets that `ipset` did not list.
pub fn iptables_bans(f: &Filter, ipsets: &BTreeMap<String, Vec<Prefix>>) -> (Vec<Ban>, Vec<String>) {
    let (mut bans, mut warnings): (Vec<Ban>, Vec<String>) = (Vec::new(), Vec::new());
    for chain in f.reachable_from_input() {
        for r in f.rules(chain) {
            if let (Some(set), true) = (&r.src_set, drops(r.target.as_deref()) && !r.negated) {
                if bans.iter().any(|b| b.name == ban_name("ipset", set)) {
                    continue;
                }
                match ipsets.get(set) {
                    Some(m) => bans.push(Ban { name: ban_name("ipset", set), members: m.clone() }),
                    None => warnings.push(format!("ipset {set} is matched by INPUT but could not be listed")),
                }
            }
        }
        // fail2ban's iptables-multiport action: one `-s IP/32 -j REJECT` per banned IP.
        if chain.starts_with("f2b-") {
            let members: Vec<Prefix> = f
                .rules(chain)
                .iter()
                .filter(|r| drops(r.target.as_deref()) && !r.negated)
                .filter_map(|r| r.src.as_deref()?.parse().ok())
                .collect();
            bans.push(Ban { name: ban_name("chain", chain), members });
        }
    }
    (bans, warnings)
}

/// The elements of nftables set `name` of `family table`, from `nft -j list ruleset`.
pub fn nft_set(json: &serde_json::Value, family: &str, table: &str, name: &str) -> Option<Ban> {
    let set = json["nftables"]
        .as_array()?
        .iter()
        .filter_map(|i| i.get("set"))
        .find(|s| s["family"] == family && s["table"] == table && s["name"] == name)?;
    let members = set["elem"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| {
                    // An element with a timeout is {"elem": {"val": ..}}.
                    let e = e.get("elem").map(|x| &x["val"]).unwrap_or(e);
                    if let Some(s) = e.as_str() {
                        return s.parse().ok();
                    }
                    if let Some(p) = e.get("prefix") {
                        return format!("{}/{}", p["addr"].as_str()?, p["len"]).parse().ok();
                    }
                    let r = e.get("range")?.as_array()?;
                    // A range reads as its first address: approximate.
                    r.first()?.as_str()?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Ban { name: format!("nft set {family} {table} {name}"), members })
}

/// Merges bans of the same name (a jail seen in iptables and ip6tables).
pub fn merge(bans: Vec<Ban>) -> Vec<Ban> {
    let mut out: Vec<Ban> = Vec::new();
    for b in bans {
        match out.iter_mut().find(|o| o.name == b.name) {
            Some(o) => {
                for m in b.members {
                    if !o.members.contains(&m) {
                        o.members.push(m);
                    }
                }
            }
            None => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::{
        netfilter::{parse_save, tests::SAVE},
        nft::tests::NFT,
    };

    // `ipset save` (ipset v7.17) in a scratch namespace.
    const IPSET: &str =
        "create dxi-block hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x55e5c8b3
add dxi-block 198.18.7.9
create dxi-nets hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x37131dc2
add dxi-nets 198.18.9.1
add dxi-nets 198.18.8.0/24
create dxi6 hash:net family inet6 hashsize 1024 maxelem 65536 bucketsize 12 initval 0x361a087d
add dxi6 fd42:198:7::/64
create f2b-web hash:ip family inet hashsize 1024 maxelem 65536 timeout 600 bucketsize 12 initval 0xe6f3a4a8
add f2b-web 198.18.7.11 timeout 499
";

    #[test]
    fn bans_ipset_save_members() {
        let s = parse_ipset_save(IPSET);
        assert_eq!(s["dxi-nets"], vec!["198.18.9.1/32".parse().unwrap(), "198.18.8.0/24".parse().unwrap()]);
        assert_eq!(s["dxi6"], vec!["fd42:198:7::/64".parse::<Prefix>().unwrap()]);
        assert_eq!(s["f2b-web"].len(), 1);
    }

    #[test]
    fn bans_from_iptables_sets_and_fail2ban_chains() {
        let (bans, warnings) = iptables_bans(&parse_save(SAVE), &parse_ipset_save(IPSET));
        assert!(warnings.is_empty(), "{warnings:?}");
        let names: Vec<&str> = bans.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, vec!["ipset dxi-block", "fail2ban jail web", "fail2ban jail sshd"]);
        let book = crate::intent::IntentBook::from_rules(None, String::new(), vec![], bans);
        let of = |ip: &str| book.ban_of(ip.parse().unwrap()).map(|b| b.name.clone());
        assert_eq!(of("198.18.7.9").as_deref(), Some("ipset dxi-block"));
        assert_eq!(of("198.18.7.10").as_deref(), Some("fail2ban jail sshd"));
        assert_eq!(of("198.18.7.11").as_deref(), Some("fail2ban jail web"));
        // dxi-nets exists but INPUT never matches it: not a ban.
        assert_eq!(of("198.18.8.1"), None);
        let (_, w) = iptables_bans(&parse_save(SAVE), &BTreeMap::new());
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn bans_nft_sets_and_merge() {
        let v: serde_json::Value = serde_json::from_str(NFT).unwrap();
        let b = nft_set(&v, "inet", "dxfilter", "blocklist").unwrap();
        assert_eq!(b.name, "nft set inet dxfilter blocklist");
        assert!(b.covers("198.18.8.200".parse().unwrap()) && b.covers("198.18.7.9".parse().unwrap()));
        assert!(!b.covers("198.18.7.8".parse().unwrap()));
        let m = merge(vec![
            Ban { name: "fail2ban jail x".into(), members: vec!["198.18.1.1".parse().unwrap()] },
            Ban { name: "fail2ban jail x".into(), members: vec!["fd42:198:1::1".parse().unwrap()] },
        ]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].members.len(), 2);
    }
}
