//! Pins and adoption: what a previous daemon left pinned (map contents, links, cls_bpf
//! filters) becomes this daemon's, what it no longer watches is released, and
//! `--detach-on-exit` removes the whole pinned kernel side.

use std::{collections::BTreeSet, net::IpAddr};

use aya::programs::TcAttachType;
use dockexpose_common::{PortKey, PREFIX_HOST, PREFIX_LOCAL, PREFIX_TRUSTED};

use super::{
    cls_bpf, ifindex_of,
    pins::{self, LinkPool, PinDir},
    Kernel, WATCH_PROGRAMS,
};
use crate::{
    error::{Error, Result},
    net::prefix::{Prefix, PrefixTable, SourceKind},
};

impl Kernel {
    /// `watch` with a pin directory: pins the programs, opens the links and marks a
    /// previous daemon left, and takes over what its maps hold.
    pub(super) fn adopt_pinned(&mut self, dir: &PinDir) -> Result<()> {
        for (name, _) in WATCH_PROGRAMS {
            let path = dir.progs().join(name);
            let _ = std::fs::remove_file(&path);
            let prog = self.ebpf.program_mut(name).ok_or(Error::MissingMap(name))?;
            prog.pin(&path).map_err(|e| Error::Pins { path: path.clone(), reason: e.to_string() })?;
        }
        self.pool = LinkPool::open(dir);
        self.made_clsact = cls_bpf::marked(&dir.dir, cls_bpf::Mark::Clsact).into_iter().collect();
        self.adopt_map_contents()
    }

    /// What the previous daemon left in the adopted maps becomes what this one knows,
    /// so that the first sync removes what is stale and keeps the rest (the programs
    /// keep judging with it meanwhile).
    fn adopt_map_contents(&mut self) -> Result<()> {
        let mut table = PrefixTable::default();
        let kind = |v: u8| match v {
            PREFIX_HOST => Some(SourceKind::HostAddress),
            PREFIX_TRUSTED => Some(SourceKind::Trusted),
            PREFIX_LOCAL => Some(SourceKind::Local),
            _ => None,
        };
        // Both families' tries, as (address, prefix length, value).
        let v4 = self.local_v4.iter().filter_map(|r| r.ok()).map(|(k, v)| (IpAddr::from(k.data()), k.prefix_len(), v));
        let v6 = self.local_v6.iter().filter_map(|r| r.ok()).map(|(k, v)| (IpAddr::from(k.data()), k.prefix_len(), v));
        for (addr, len, value) in v4.chain(v6) {
            if let (Some(p), Some(k)) = (Prefix::new(addr, len as u8), kind(value)) {
                table.insert(p, k);
            }
        }
        self.prefixes = table;
        for (proto, base) in [
            (dockexpose_common::PROTO_TCP, 0u32),
            (dockexpose_common::PROTO_UDP, 65_536),
            (dockexpose_common::PROTO_SCTP, 2 * 65_536),
        ] {
            for port in 0..=u16::MAX {
                if self.published.get(&(base + u32::from(port)), 0).unwrap_or(0) != 0 {
                    self.ports.insert(PortKey { port, proto, _pad: 0 });
                }
            }
        }
        Ok(())
    }

    /// Links a previous daemon pinned that no attachment of this one claimed (the
    /// interfaces it no longer watches): detached.
    pub fn release_unclaimed_links(&mut self) -> Vec<(String, u32)> {
        let mut unclaimed = self.pool.unclaimed();
        self.pool.release_all();
        // cls_bpf: the filters the previous daemon marked on interfaces this one does
        // not watch (a TCX link would have been in the pool).
        let marked = self.pins.as_ref().map(|d| cls_bpf::marked(&d.dir, cls_bpf::Mark::Filters)).unwrap_or_default();
        for iface in marked {
            if !self.bridges.contains_key(&iface) && !self.uplinks.contains_key(&iface) {
                for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
                    cls_bpf::remove_ours(&iface, direction);
                }
                unclaimed.push((format!("cls_bpf filters on {iface}"), ifindex_of(&iface)));
                self.release_clsact(&iface);
            }
        }
        // The adopted LOCAL_IFACES may still name bridges the previous daemon watched
        // and this one does not: their traffic is no longer the host's own.
        let watched: BTreeSet<u32> = self.bridges.values().map(|b| b.ifindex).chain([ifindex_of("lo")]).collect();
        let stale: Vec<u32> =
            self.local_ifaces.keys().filter_map(|k| k.ok()).filter(|i| !watched.contains(i)).collect();
        for i in stale {
            let _ = self.local_ifaces.remove(&i);
        }
        unclaimed
    }

    /// `--detach-on-exit`: detaches everything and removes the pins (maps included:
    /// what the ring still holds is gone with them).
    pub fn unpin_all(&mut self) -> Result<()> {
        self.detach_interfaces();
        self.pool.release_all();
        if let Some(dir) = self.pins.take() {
            pins::remove_tree(&dir.dir)?;
            // The root too, when nothing else is pinned there.
            let _ = std::fs::remove_dir(&dir.root);
        }
        Ok(())
    }
}
