//! Load for the flood tests and the benchmarks: spoofed SYN floods, connection
//! loops, and the figures read back (peak memory, transmit drops, the hook measured).

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use super::{in_netns, netns::sockaddr, sh};

/// Internet checksum (RFC 1071).
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends TCP SYNs from `ns` with spoofed sources (random hosts of `src_net`.0/24 and
/// random ports) to `dst`, through a raw socket, at about `per_second` (faster, the
/// veth's small ring drops part of it before any hook runs). Stops after `count` or
/// `limit`; returns how many were sent.
pub fn syn_flood(
    ns: &str,
    src_net: [u8; 3],
    dst: std::net::SocketAddrV4,
    count: usize,
    per_second: u32,
    limit: Duration,
) -> usize {
    in_netns(ns, move || {
        // SAFETY: plain socket syscalls on an fd owned here and closed at the end.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let (da, dlen) = sockaddr(SocketAddr::V4(dst));
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let start = Instant::now();
        let mut sent = 0;
        while sent < count && start.elapsed() < limit {
            if sent % 256 == 0 {
                let due = start + Duration::from_secs_f64(sent as f64 / f64::from(per_second));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let r = next();
            let src = [src_net[0], src_net[1], src_net[2], (r % 254 + 1) as u8];
            let sport = (1024 + (r >> 8) % 60000) as u16;
            let mut packet = [0u8; 40];
            spoofed_syn(src, sport, dst, (r >> 24) as u32, 0, &mut packet);
            let rc = unsafe { libc::sendto(fd, packet.as_ptr().cast(), packet.len(), 0, da.as_ptr().cast(), dlen) };
            if rc == packet.len() as isize {
                sent += 1;
            } else {
                // ENOBUFS under load: let the queue drain.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        unsafe { libc::close(fd) };
        sent
    })
}

/// An IPv4 TCP SYN from `src`:`sport` to `dst` with sequence number `seq` and IP id
/// `id`, checksums included: a raw socket (IP_HDRINCL) sends it as it is.
pub fn spoofed_syn(src: [u8; 4], sport: u16, dst: std::net::SocketAddrV4, seq: u32, id: u16, out: &mut [u8; 40]) {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let pseudo = [&src[..], &dst.ip().octets()[..], &[0, 6, 0, 20][..]].concat();
    let sum = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    out[..20].copy_from_slice(&ip);
    out[20..].copy_from_slice(&tcp);
}

/// Peak resident memory of a process, in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Opens and closes TCP connections from `ns` (source `src`) to `dst` for `length`,
/// one after another; returns how many completed (greeting read). Closed with RST
/// (SO_LINGER 0) so that TIME_WAIT does not exhaust the source ports.
pub fn connect_loop(ns: &str, src: IpAddr, dst: SocketAddr, length: Duration) -> usize {
    in_netns(ns, move || {
        let start = Instant::now();
        let mut done = 0;
        while start.elapsed() < length {
            let domain = if src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
            // SAFETY: plain socket syscalls on an fd owned by the TcpStream below.
            let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
            let (sa, len) = sockaddr(SocketAddr::new(src, 0));
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            unsafe {
                libc::bind(fd, sa.as_ptr().cast(), len);
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    size_of::<libc::linger>() as u32,
                );
            }
            let (da, dlen) = sockaddr(dst);
            let rc = unsafe { libc::connect(fd, da.as_ptr().cast(), dlen) };
            let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            if rc == 0 {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 2];
                if (&stream).read_exact(&mut buf).is_ok() {
                    done += 1;
                }
            }
        }
        done
    })
}

/// Packets an interface dropped on transmit (`ip -s link`), e.g. a veth whose peer's
/// XDP ring was full: lost before any hook of ours could see them.
pub fn tx_dropped(ns: &str, dev: &str) -> u64 {
    let out = sh(&["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
}

/// The uplink hook the benchmarks measure (`DOCKEXPOSE_BENCH_UPLINK_HOOK`: xdp or tc;
/// default: dockexpose's own default, tc), printed with their figures.
pub fn bench_uplink_hook() -> String {
    let hook = std::env::var("DOCKEXPOSE_BENCH_UPLINK_HOOK").unwrap_or_else(|_| "tc".into());
    assert!(hook == "xdp" || hook == "tc", "DOCKEXPOSE_BENCH_UPLINK_HOOK must be xdp or tc, not {hook:?}");
    eprintln!("uplink hook measured: {hook} (DOCKEXPOSE_BENCH_UPLINK_HOOK)");
    hook
}
