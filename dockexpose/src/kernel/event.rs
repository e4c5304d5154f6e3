//! Decoding of the kernel's `ConnEvent` into userspace types.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use dockexpose_common::{
    ConnEvent, FAMILY_IPV4, FLAG_BY_CONNTRACK, FLAG_FRAGMENT, FLAG_HAS_ORIG_DST, FLAG_IP_OPTIONS, FLAG_SPOOFED_LOCAL,
    FLAG_VLAN, PROTO_SCTP, PROTO_TCP, PROTO_UDP, STAGE_ANSWERED, STAGE_ATTEMPTED, STAGE_REACHED,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    pub fn from_kernel(v: u8) -> Option<Self> {
        match v {
            PROTO_TCP => Some(Proto::Tcp),
            PROTO_UDP => Some(Proto::Udp),
            PROTO_SCTP => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn to_kernel(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
            Proto::Sctp => PROTO_SCTP,
        }
    }

    /// From Docker's spelling ("tcp", "udp", "sctp").
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Attempted,
    Reached,
    Blocked,
    /// The host answered an attempt (internal: it decides the verdict, no record).
    Answered,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Attempted => "attempted",
            Stage::Reached => "reached",
            Stage::Blocked => "blocked",
            Stage::Answered => "answered",
        }
    }
}

/// One connection seen by a kernel program, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub ktime_ns: u64,
    pub stage: Stage,
    pub proto: Proto,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    /// The pre-DNAT destination, from the connection's conntrack entry.
    pub orig_dst: Option<(IpAddr, u16)>,
    pub ifindex: u32,
    /// TCP initial sequence number / SCTP initiate tag (0 for UDP).
    pub seq: u32,
    /// FLAG_SPOOFED_LOCAL, FLAG_FRAGMENT, ... as the kernel set them.
    pub flags: u8,
    /// The CPU that wrote the record and its sequence number there: with the boot id,
    /// the record's unique name (a duplicate after a crash repeats it).
    pub cpu: u32,
    pub rec_seq: u64,
}

/// Why a record from the kernel could not be decoded (a version mismatch, in practice).
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

fn addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

impl Observation {
    /// Decodes the bytes of one ring-buffer record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < size_of::<ConnEvent>() {
            return Err(DecodeError(format!("record of {} bytes, expected {}", bytes.len(), size_of::<ConnEvent>())));
        }
        // SAFETY: ConnEvent is repr(C) plain data, any bit pattern is valid; length checked.
        let ev = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ConnEvent>()) };
        Self::from_event(&ev)
    }

    pub fn from_event(ev: &ConnEvent) -> Result<Self, DecodeError> {
        let proto =
            Proto::from_kernel(ev.proto).ok_or_else(|| DecodeError(format!("unknown protocol {}", ev.proto)))?;
        let stage = match ev.stage {
            STAGE_ATTEMPTED => Stage::Attempted,
            STAGE_REACHED => Stage::Reached,
            STAGE_ANSWERED => Stage::Answered,
            s => return Err(DecodeError(format!("unknown stage {s}"))),
        };
        if ev.family != FAMILY_IPV4 && ev.family != dockexpose_common::FAMILY_IPV6 {
            return Err(DecodeError(format!("unknown address family {}", ev.family)));
        }
        let orig_dst =
            (ev.flags & FLAG_HAS_ORIG_DST != 0).then(|| (addr(ev.family, &ev.orig_dst_addr), ev.orig_dst_port));
        Ok(Self {
            ktime_ns: ev.ktime_ns,
            stage,
            proto,
            src: addr(ev.family, &ev.src_addr),
            src_port: ev.src_port,
            dst: addr(ev.family, &ev.dst_addr),
            dst_port: ev.dst_port,
            orig_dst,
            ifindex: ev.ifindex,
            seq: ev.seq,
            flags: ev.flags,
            cpu: ev.cpu,
            rec_seq: ev.rec_seq,
        })
    }

    /// A source in a local range that arrived from outside.
    pub fn spoofed_local(&self) -> bool {
        self.flags & FLAG_SPOOFED_LOCAL != 0
    }

    /// A source in a `--trusted` network that arrived where the route back to it
    /// does not go.
    pub fn spoofed_trusted(&self) -> bool {
        self.flags & dockexpose_common::FLAG_SPOOFED_TRUSTED != 0
    }

    /// Conntrack saw no DNAT: routed straight to the container's address, not
    /// through a published port.
    pub fn direct(&self) -> bool {
        self.stage == Stage::Reached && self.flags & dockexpose_common::FLAG_DIRECT != 0
    }

    /// How the first packet was shaped, for the record: "fragment", "ip_options"
    /// (IPv4 options or IPv6 extension headers), "vlan", "flags_hidden".
    pub fn shape(&self) -> Vec<&'static str> {
        [
            (FLAG_FRAGMENT, "fragment"),
            (FLAG_IP_OPTIONS, "ip_options"),
            (FLAG_VLAN, "vlan"),
            (FLAG_BY_CONNTRACK, "flags_hidden"),
        ]
        .into_iter()
        .filter(|(f, _)| self.flags & f != 0)
        .map(|(_, name)| name)
        .collect()
    }
}

#[cfg(test)]
impl Observation {
    /// A record for unit tests: `stage` from `src:sport` to `dst:dport`, nothing else set.
    pub(crate) fn sample(stage: Stage, proto: Proto, src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self {
            ktime_ns: 0,
            stage,
            proto,
            src: src.parse().unwrap(),
            src_port: sport,
            dst: dst.parse().unwrap(),
            dst_port: dport,
            orig_dst: None,
            ifindex: 0,
            seq: 0,
            flags: 0,
            cpu: 0,
            rec_seq: 0,
        }
    }
}

/// An interface's name as records carry it: shared, so that a record costs a
/// reference count, not a copy.
pub type IfName = std::sync::Arc<str>;

/// Turns kernel timestamps (CLOCK_MONOTONIC, as bpf_ktime_get_ns) into wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct KernelClock {
    /// Wall-clock time at monotonic zero.
    boot_wall: SystemTime,
}

impl KernelClock {
    pub fn now() -> Self {
        Self::from_pair(SystemTime::now(), monotonic())
    }

    pub fn from_pair(wall: SystemTime, monotonic: Duration) -> Self {
        Self { boot_wall: wall - monotonic }
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        self.boot_wall + Duration::from_nanos(ktime_ns)
    }

    /// The kernel's clock now, in nanoseconds (read directly: a wall-clock step must
    /// not move verdict deadlines).
    pub fn ktime_now(&self) -> u64 {
        monotonic().as_nanos() as u64
    }
}

/// CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
fn monotonic() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use dockexpose_common::{FAMILY_IPV6, STAGE_REACHED};

    use super::*;

    fn sample() -> ConnEvent {
        let mut ev = ConnEvent::zeroed();
        ev.ktime_ns = 5_000_000_000;
        ev.family = FAMILY_IPV4;
        ev.proto = PROTO_TCP;
        ev.stage = STAGE_REACHED;
        ev.src_addr[..4].copy_from_slice(&[198, 18, 3, 2]);
        ev.dst_addr[..4].copy_from_slice(&[10, 251, 0, 2]);
        ev.src_port = 40_000;
        ev.dst_port = 80;
        ev.ifindex = 7;
        ev
    }

    fn as_bytes(ev: &ConnEvent) -> Vec<u8> {
        // SAFETY: ConnEvent is repr(C) plain data without implicit padding.
        unsafe { std::slice::from_raw_parts((ev as *const ConnEvent).cast::<u8>(), size_of::<ConnEvent>()) }.to_vec()
    }

    #[test]
    fn shared_record_has_the_size_the_kernel_writes() {
        assert_eq!(size_of::<ConnEvent>(), 88);
        assert_eq!(std::mem::align_of::<ConnEvent>(), 8);
        assert_eq!(std::mem::offset_of!(ConnEvent, ifindex), 56);
        assert_eq!(std::mem::offset_of!(ConnEvent, flags), 69);
    }

    #[test]
    fn ipv4_record_round_trips_through_bytes() {
        let obs = Observation::from_bytes(&as_bytes(&sample())).unwrap();
        assert_eq!(obs.src, "198.18.3.2".parse::<IpAddr>().unwrap());
        assert_eq!(obs.dst, "10.251.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((obs.src_port, obs.dst_port, obs.ifindex), (40_000, 80, 7));
        assert_eq!((obs.proto, obs.stage), (Proto::Tcp, Stage::Reached));
        assert_eq!(obs.orig_dst, None);
    }

    #[test]
    fn ipv6_record_with_join_round_trips() {
        let mut ev = sample();
        ev.family = FAMILY_IPV6;
        ev.proto = PROTO_UDP;
        ev.src_addr = "fd42::2".parse::<Ipv6Addr>().unwrap().octets();
        ev.dst_addr = "fd42:1::2".parse::<Ipv6Addr>().unwrap().octets();
        ev.orig_dst_addr = "fd42::1".parse::<Ipv6Addr>().unwrap().octets();
        ev.orig_dst_port = 8080;
        ev.flags = FLAG_HAS_ORIG_DST;
        let obs = Observation::from_bytes(&as_bytes(&ev)).unwrap();
        assert_eq!(obs.src.to_string(), "fd42::2");
        assert_eq!(obs.proto, Proto::Udp);
        assert_eq!(obs.orig_dst, Some(("fd42::1".parse().unwrap(), 8080)));
    }

    #[test]
    fn short_or_unknown_records_are_refused() {
        assert!(Observation::from_bytes(&[0u8; 10]).is_err());
        let mut ev = sample();
        ev.proto = 1;
        assert!(Observation::from_event(&ev).is_err());
        ev.proto = PROTO_SCTP;
        assert_eq!(Observation::from_event(&ev).unwrap().proto, Proto::Sctp);
        ev.proto = 1;
        assert!(Observation::from_event(&ev).unwrap_err().0.contains("protocol"));
        let mut ev = sample();
        ev.stage = 9;
        assert!(Observation::from_event(&ev).is_err());
        let mut ev = sample();
        ev.family = 5;
        assert!(Observation::from_event(&ev).is_err());
    }

    #[test]
    fn kernel_time_maps_to_wall_time() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = KernelClock::from_pair(wall, Duration::from_secs(100));
        assert_eq!(clock.wall(100_000_000_000), wall);
        assert_eq!(clock.wall(101_500_000_000), wall + Duration::from_millis(1500));
    }
}
