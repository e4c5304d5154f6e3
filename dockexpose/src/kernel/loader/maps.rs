//! The maps userspace keeps in step with what it knows (local and trusted prefixes,
//! published ports), the ones it reads (counters, table fill) and hands out (`watch`'s
//! ring and bookkeeping), and a raw-syscall walker that counts a hash map's keys.

use std::collections::BTreeSet;

use aya::{
    maps::{lpm_trie::Key, MapData},
    Ebpf,
};
use dockexpose_common::{map_names, published_port_index, Counter, PortKey, PREFIX_HOST, PREFIX_LOCAL, PREFIX_TRUSTED};

use super::Kernel;
use crate::{
    error::{Error, Result},
    net::prefix::{PrefixTable, SourceKind},
};

/// Kernel counters summed over CPUs, indexed like `Counter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot(pub [u64; Counter::COUNT as usize]);

impl CounterSnapshot {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
}

/// The maps `watch` reads itself, handed out at load.
pub struct WatchMaps {
    /// The ring buffer of records.
    pub events: MapData,
    /// The daemon's bookkeeping (DAEMON_STATE_* slots).
    pub daemon_state: MapData,
    /// The per-CPU record sequence numbers.
    pub record_seq: MapData,
    /// A second handle on the counters (the ring's loss counter), when pinned.
    pub counters: Option<MapData>,
    /// Records held back for identity (`PendingKey` -> `ConnEvent`), pinned so that a
    /// crash loses none although their ring space is released.
    pub pending: MapData,
}

/// An address as the kernel maps hold it: 16 bytes, IPv4 in the first four.
pub fn addr16(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(a) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&a.octets());
            out
        }
        std::net::IpAddr::V6(a) => a.octets(),
    }
}

pub(super) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or(Error::MissingMap(name))
}

pub(super) fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { map, source: Box::new(source) }
}

impl Kernel {
    /// Makes the kernel's local/trusted tries equal to `next` (fitted to their bound by
    /// the caller). An entry the kernel refuses is left out and counted, never an error
    /// that ends the daemon; it is tried again at the next sync. Returns that count.
    pub fn sync_prefixes(&mut self, next: &PrefixTable) -> usize {
        let (removed, added) = self.prefixes.diff(next);
        let mut refused = 0;
        for p in removed {
            match p.addr() {
                std::net::IpAddr::V4(a) => {
                    let _ = self.local_v4.remove(&Key::new(u32::from(p.len()), a.octets()));
                }
                std::net::IpAddr::V6(a) => {
                    let _ = self.local_v6.remove(&Key::new(u32::from(p.len()), a.octets()));
                }
            }
            self.prefixes.set(p, None);
        }
        for (p, kind) in added {
            let value = match kind {
                SourceKind::Local => PREFIX_LOCAL,
                SourceKind::HostAddress => PREFIX_HOST,
                SourceKind::Trusted => PREFIX_TRUSTED,
            };
            let inserted = match p.addr() {
                std::net::IpAddr::V4(a) => self.local_v4.insert(&Key::new(u32::from(p.len()), a.octets()), value, 0),
                std::net::IpAddr::V6(a) => self.local_v6.insert(&Key::new(u32::from(p.len()), a.octets()), value, 0),
            };
            match inserted {
                Ok(()) => self.prefixes.set(p, Some(kind)),
                Err(_) => {
                    // Whatever was there before for this prefix is gone or stale.
                    self.prefixes.set(p, None);
                    refused += 1;
                }
            }
        }
        refused
    }

    /// Makes the kernel's published-port set equal to `next`.
    pub fn sync_published_ports(&mut self, next: &BTreeSet<PortKey>) -> Result<()> {
        for (key, value) in
            self.ports.difference(next).map(|k| (k, 0)).chain(next.difference(&self.ports).map(|k| (k, 1)))
        {
            self.published
                .set(published_port_index(key.port, key.proto), value, 0)
                .map_err(map_err(map_names::PUBLISHED_PORTS))?;
        }
        self.ports = next.clone();
        Ok(())
    }

    /// How full the tables that outsiders fill are: (map, entries, capacity). Counted
    /// by walking the keys (a few ms for a full table): for a scrape, not per packet.
    pub fn map_fill(&self) -> Vec<(&'static str, u64, u64)> {
        [(map_names::FLOWS, dockexpose_common::FLOWS_MAX), (map_names::ATTEMPTS, dockexpose_common::ATTEMPTS_MAX)]
            .into_iter()
            .filter_map(|(name, cap)| {
                let map = self.ebpf.map(name)?;
                let data = match map {
                    aya::maps::Map::LruHashMap(d) | aya::maps::Map::HashMap(d) => d,
                    _ => return None,
                };
                let key_size = data.info().ok()?.key_size() as usize;
                let entries = count_keys(data, key_size);
                Some((name, entries, u64::from(cap)))
            })
            .collect()
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<CounterSnapshot> {
        let mut snap = CounterSnapshot::default();
        for c in Counter::ALL {
            let per_cpu = self.counters.get(&(c as u32), 0).map_err(map_err(map_names::COUNTERS))?;
            snap.0[c as usize] = per_cpu.iter().sum();
        }
        Ok(snap)
    }
}

/// Keys in a hash map, by BPF_MAP_GET_NEXT_KEY (whatever the key type).
fn count_keys(map: &MapData, key_size: usize) -> u64 {
    let fd = {
        use std::os::fd::{AsFd, AsRawFd};
        map.fd().as_fd().as_raw_fd()
    };
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut n = 0u64;
    let mut first = true;
    loop {
        // SAFETY: union bpf_attr's map_elem part: map_fd, key, next_key (zeroed rest).
        let mut attr = [0u64; 16];
        let words = attr.as_mut_ptr().cast::<u8>();
        unsafe {
            std::ptr::write_unaligned(words.cast::<u32>(), fd as u32);
            std::ptr::write_unaligned(words.add(8).cast::<u64>(), if first { 0 } else { key.as_ptr() as u64 });
            std::ptr::write_unaligned(words.add(16).cast::<u64>(), next.as_mut_ptr() as u64);
        }
        const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
        // SAFETY: attr lives through the call and holds valid pointers of key_size bytes.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, attr.as_mut_ptr(), std::mem::size_of_val(&attr))
        };
        if rc != 0 || n > 10_000_000 {
            return n;
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}
