//! IP prefixes (CIDR): parsing, containment, and which sources count as local or trusted.
//! The kernel does the same classification with LPM tries filled from `PrefixTable`.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// An address prefix, stored with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix of `len` bits; host bits of `addr` are cleared. None if `len` is too long.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let max = max_len(&addr);
        if len > max {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask_u32(u32::from(a), len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask_u128(u128::from(a), len))),
        };
        Some(Self { addr, len })
    }

    /// The single-address prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self { addr, len: max_len(&addr) }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length in bits.
    #[expect(clippy::len_without_is_empty, reason = "a prefix length, not a collection's")]
    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_u32(u32::from(ip), self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_u128(u128::from(ip), self.len) == u128::from(net),
            _ => false,
        }
    }
}

/// 169.254.0.0/16 or fe80::/10.
pub fn is_link_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask_u32(v: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        v & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask_u128(v: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        v & (u128::MAX << (128 - u32::from(len)))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why a prefix did not parse; becomes `Error::InvalidCidr` with the option's name.
#[derive(Debug, PartialEq, Eq)]
pub struct PrefixParseError(pub String);

impl FromStr for Prefix {
    type Err = PrefixParseError;

    /// Accepts `addr/len` or a bare address (a host prefix). Host bits set under the
    /// mask are cleared, as `ip route` does: 10.1.2.3/8 means 10.0.0.0/8.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr =
            addr.parse().map_err(|_| PrefixParseError(format!("{addr:?} is not an IPv4 or IPv6 address")))?;
        let len = match len {
            None => max_len(&addr),
            Some(l) => l.parse::<u8>().map_err(|_| {
                PrefixParseError(format!("prefix length {l:?} is not a number from 0 to {}", max_len(&addr)))
            })?,
        };
        Prefix::new(addr, len)
            .ok_or_else(|| PrefixParseError(format!("prefix length {len} is longer than {} bits", max_len(&addr))))
    }
}

/// Why a trusted network is refused, and how to write what was meant.
#[derive(Debug, PartialEq, Eq)]
pub struct TrustedRefusal {
    pub reason: String,
    pub fix: String,
}

/// The widest trusted networks taken without a warning: /8 for IPv4 (a sixteenth of
/// a million hosts' worth of blocks: a large organisation), /16 for IPv6 (wider than
/// any allocation but a registry's).
pub const TRUSTED_WIDEST_V4: u8 = 8;
pub const TRUSTED_WIDEST_V6: u8 = 16;

/// A trusted network as the operator wrote it, checked: a /0 (every address: the whole
/// internet never reported) and host bits under the mask (`10.8.0.1/24`: the host, or
/// its network?) are refused, since `Prefix`'s parser would silently widen them. A
/// network wider than /8 (IPv4) or /16 (IPv6) is kept, with the warning returned.
pub fn trusted_network(s: &str) -> Result<(Prefix, Option<String>), TrustedRefusal> {
    let s = s.trim();
    let p = s.parse::<Prefix>().map_err(|e| TrustedRefusal {
        reason: e.0,
        fix: "write an address or a prefix such as 198.51.100.0/24, 10.1.2.3 or 2001:db8::/32".into(),
    })?;
    let given: IpAddr = s.split_once('/').map_or(s, |(a, _)| a).parse().unwrap_or(p.addr());
    let (family, widest) = if given.is_ipv4() { ("IPv4", TRUSTED_WIDEST_V4) } else { ("IPv6", TRUSTED_WIDEST_V6) };
    if p.len() == 0 {
        return Err(TrustedRefusal {
            reason: format!("a /0 is every {family} address: the whole internet would never be reported"),
            fix: format!(
                "write the network meant, such as {}, or the one host: {}",
                example_network(given),
                Prefix::host(given)
            ),
        });
    }
    if p.addr() != given {
        return Err(TrustedRefusal {
            reason: format!("host bits are set below the /{}: it would trust all of {p}", p.len()),
            fix: format!("write {p} to trust that network, or {} to trust that one host", Prefix::host(given)),
        });
    }
    let warning = (p.len() < widest).then(|| {
        format!("{p} is wider than /{widest}: every source in it is never reported; narrow it unless you mean it")
    });
    Ok((p, warning))
}

/// A plausible network for the fix: the /24 (IPv4) or /64 (IPv6) holding `addr`.
fn example_network(addr: IpAddr) -> Prefix {
    Prefix::new(addr, if addr.is_ipv4() { 24 } else { 64 }).unwrap_or(Prefix::host(addr))
}

/// Why a source is not reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceKind {
    /// The host itself: loopback, the watched bridges' subnets.
    Local,
    /// One of the host's own addresses: local as a source, and the only destination
    /// an attempt at a published port can have (Docker's DNAT matches local addresses).
    HostAddress,
    /// Given with `--trusted`.
    Trusted,
}

/// The set of prefixes the kernel treats as local or trusted (what goes in the LPM tries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixTable {
    entries: BTreeMap<Prefix, SourceKind>,
}

impl PrefixTable {
    /// Adds a prefix; where the same prefix is both local and trusted, local wins.
    pub fn insert(&mut self, prefix: Prefix, kind: SourceKind) {
        let slot = self.entries.entry(prefix).or_insert(kind);
        *slot = (*slot).min(kind);
    }

    /// Sets a prefix's kind (what the kernel holds for it), or removes it with None.
    pub fn set(&mut self, prefix: Prefix, kind: Option<SourceKind>) {
        match kind {
            Some(k) => self.entries.insert(prefix, k),
            None => self.entries.remove(&prefix),
        };
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The longest matching prefix's kind, as the kernel's LPM lookup gives it.
    pub fn classify(&self, ip: IpAddr) -> Option<SourceKind> {
        self.entries.iter().filter(|(p, _)| p.contains(ip)).max_by_key(|(p, _)| p.len()).map(|(_, k)| *k)
    }

    /// At most `max` entries per family (the kernel's tries are bounded), and how many
    /// were left out. Kept first: networks (loopback, the bridges' subnets, trusted
    /// networks: few, and each covers many sources), then the host's global addresses,
    /// then its link-local ones, each in address order.
    pub fn fit(&self, max: usize) -> (PrefixTable, usize) {
        let mut ranked: Vec<(&Prefix, &SourceKind)> = self.entries.iter().collect();
        ranked.sort_by_key(|(p, _)| (p.len() == max_len(&p.addr()), is_link_local(p.addr()), **p));
        let mut kept = PrefixTable::default();
        let (mut v4, mut v6, mut left_out) = (0usize, 0usize, 0usize);
        for (p, kind) in ranked {
            let n = if p.addr().is_ipv4() { &mut v4 } else { &mut v6 };
            if *n < max {
                *n += 1;
                kept.entries.insert(*p, *kind);
            } else {
                left_out += 1;
            }
        }
        (kept, left_out)
    }

    /// What to remove and what to add (or change) to go from `self` to `next`.
    pub fn diff<'a>(&'a self, next: &'a PrefixTable) -> (Vec<Prefix>, Vec<(Prefix, SourceKind)>) {
        let removed = self.entries.keys().filter(|p| !next.entries.contains_key(p)).copied().collect();
        let added =
            next.entries.iter().filter(|(p, k)| self.entries.get(p) != Some(k)).map(|(p, k)| (*p, *k)).collect();
        (removed, added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn parses_prefixes_and_bare_addresses() {
        assert_eq!(p("198.18.0.0/15").to_string(), "198.18.0.0/15");
        assert_eq!(p("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(p("2001:db8::1").to_string(), "2001:db8::1/128");
        assert_eq!(p("fd42::/16").len(), 16);
        // Host bits under the mask are cleared, as `ip route` does.
        assert_eq!(p("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(p("0.0.0.0/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn rejects_bad_prefixes_with_a_reason() {
        for bad in ["", "10.0.0.0/33", "fd00::/129", "10.0.0/8", "10.0.0.0/x", "example.com", "10.0.0.0/-1"] {
            let err = bad.parse::<Prefix>().unwrap_err();
            assert!(!err.0.is_empty(), "{bad:?} gave an empty reason");
        }
        assert!("10.0.0.0/33".parse::<Prefix>().unwrap_err().0.contains("longer than 32"));
    }

    #[test]
    fn trusted_networks_that_trust_everything_or_carry_host_bits_are_refused() {
        for (bad, reason, fix) in [
            ("10.8.0.1/0", "every IPv4 address", "10.8.0.1/32"),
            ("0.0.0.0/0", "every IPv4 address", "/32"),
            ("::/0", "every IPv6 address", "/128"),
            ("10.8.0.1/24", "host bits", "10.8.0.0/24"),
            ("2001:db8::1/64", "host bits", "2001:db8::/64"),
        ] {
            let e = trusted_network(bad).unwrap_err();
            assert!(e.reason.contains(reason), "{bad}: {}", e.reason);
            assert!(e.fix.contains(fix), "{bad}: {}", e.fix);
        }
        assert!(trusted_network("10.0.0.0/33").unwrap_err().reason.contains("longer than 32"));
    }

    #[test]
    fn wide_trusted_networks_are_kept_with_a_warning() {
        assert_eq!(trusted_network("10.8.0.0/24").unwrap(), (p("10.8.0.0/24"), None));
        assert_eq!(trusted_network("10.8.0.1").unwrap(), (p("10.8.0.1/32"), None));
        assert_eq!(
            trusted_network("10.0.0.0/8").unwrap(),
            (p("10.0.0.0/8"), None),
            "/8 is the widest without a warning"
        );
        assert_eq!(trusted_network("2001:db8::/32").unwrap(), (p("2001:db8::/32"), None));
        assert_eq!(trusted_network("2001::/16").unwrap().1, None, "/16 is the widest IPv6 without a warning");
        let (net, warning) = trusted_network("0.0.0.0/1").unwrap();
        assert_eq!(net, p("0.0.0.0/1"));
        assert!(warning.unwrap().contains("wider than /8"));
        let (_, warning) = trusted_network("fc00::/7").unwrap();
        assert!(warning.unwrap().contains("wider than /16"));
    }

    #[test]
    fn containment_respects_family_and_length() {
        let net = p("198.18.0.0/15");
        assert!(net.contains("198.19.255.255".parse().unwrap()));
        assert!(!net.contains("198.20.0.0".parse().unwrap()));
        assert!(!net.contains("::ffff:198.18.0.1".parse().unwrap()));
        assert!(p("::/0").contains("fd42::1".parse().unwrap()));
        assert!(!p("::/0").contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn classification_takes_the_longest_match_and_local_wins_ties() {
        let mut t = PrefixTable::default();
        t.insert(p("10.0.0.0/8"), SourceKind::Trusted);
        t.insert(p("10.1.0.0/16"), SourceKind::Local);
        t.insert(p("10.1.2.3/32"), SourceKind::Trusted);
        t.insert(p("10.1.2.3/32"), SourceKind::Local);
        assert_eq!(t.classify("10.2.0.1".parse().unwrap()), Some(SourceKind::Trusted));
        assert_eq!(t.classify("10.1.9.9".parse().unwrap()), Some(SourceKind::Local));
        assert_eq!(t.classify("10.1.2.3".parse().unwrap()), Some(SourceKind::Local));
        assert_eq!(t.classify("198.18.0.2".parse().unwrap()), None);
    }

    #[test]
    fn a_table_over_the_bound_keeps_networks_first_and_counts_what_it_leaves_out() {
        let mut t = PrefixTable::default();
        t.insert(p("127.0.0.0/8"), SourceKind::Local);
        t.insert(p("198.18.9.0/24"), SourceKind::Trusted);
        for i in 0..10u32 {
            t.insert(Prefix::host(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))), SourceKind::HostAddress);
        }
        t.insert(p("fd42::/64"), SourceKind::Local);
        t.insert(p("fe80::1"), SourceKind::HostAddress);
        t.insert(p("fd42::1"), SourceKind::HostAddress);
        // The bound is per family (one trie each).
        let (kept, left_out) = t.fit(4);
        assert_eq!(left_out, 8, "12 IPv4 entries for 4 places; IPv6 fits");
        assert_eq!(kept.classify("127.0.0.1".parse().unwrap()), Some(SourceKind::Local), "networks stay");
        assert_eq!(kept.classify("198.18.9.1".parse().unwrap()), Some(SourceKind::Trusted));
        assert_eq!(kept.classify("10.0.0.0".parse().unwrap()), Some(SourceKind::HostAddress));
        assert_eq!(kept.classify("10.0.0.9".parse().unwrap()), None, "the last host addresses are left out");
        assert_eq!(kept.classify("fe80::1".parse().unwrap()), Some(SourceKind::HostAddress));
        // Link-local host addresses go before global ones.
        let (kept, left_out) = t.fit(2);
        assert_eq!(left_out, 10 + 1);
        assert_eq!(kept.classify("fd42::1".parse().unwrap()), Some(SourceKind::HostAddress));
        assert_eq!(kept.classify("fe80::1".parse().unwrap()), None);
        assert_eq!(t.fit(100), (t.clone(), 0));
    }

    #[test]
    fn diff_lists_removals_and_changes() {
        let mut a = PrefixTable::default();
        a.insert(p("10.0.0.1"), SourceKind::Local);
        a.insert(p("10.0.0.2"), SourceKind::Local);
        let mut b = PrefixTable::default();
        b.insert(p("10.0.0.2"), SourceKind::Local);
        b.insert(p("10.0.0.3"), SourceKind::Trusted);
        let (removed, added) = a.diff(&b);
        assert_eq!(removed, vec![p("10.0.0.1")]);
        assert_eq!(added, vec![(p("10.0.0.3"), SourceKind::Trusted)]);
        assert_eq!(b.diff(&b), (vec![], vec![]));
    }
}
