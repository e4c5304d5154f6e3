//! Every way a port gets published (issue 11), each end to end: traffic from an
//! outside namespace through the publish path, and what dockexpose writes for it
//! (stage, exact host port, identity where the runtime offers one).
//! - compose: a real docker-compose (v1) project, two services on two networks;
//! - `docker run -P` with several EXPOSEd ports, and a second container sharing the
//!   first one's network namespace (`--network container:X`);
//! - the nftables backend: Docker 28's `ip docker-bridges` layout, no iptables rule;
//! - Podman's netavark bridges watched with `--bridge`, identity from its socket.
//!
//! Needs root and Docker (podman, docker-compose and nft: `cargo xtask setup`); a
//! missing tool is a failure when the run demands the privileged tests (CI).
//! Names start with `dx11`; addresses: 198.18.N.0/24 and fd42:198:N::/64 outside,
//! 10.251.N.0/24 and fd42:251:N::/64 for bridges, N in 80..=99.
//! One at a time: `flock /tmp/dockexpose-root-tests.lock cargo test --release -p dockexpose --test publish_paths -- --test-threads=1`

#[path = "../support/mod.rs"]
mod support;

mod cni;
mod compose;
mod nftables;
mod podman;
mod second_engine;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{docker, *};

/// This file's run number: 80..=99 (the ranges given to these tests).
fn n11() -> u32 {
    80 + std::process::id() % 20
}

/// True when `tool` runs (`tool --version`); otherwise prints why the test is
/// skipped, or panics when the run demands the privileged tests.
fn have(test: &str, tool: &str) -> bool {
    match Command::new(tool).arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            let why =
                format!("`{tool} --version` failed ({:?}); `cargo xtask setup` installs it", other.map(|o| o.status));
            if std::env::var_os("DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS").is_some() {
                panic!("{test}: SKIPPED: {why}, and DOCKEXPOSE_REQUIRE_PRIVILEGED_TESTS is set");
            }
            skip(test, &why)
        }
    }
}

/// Polls `f` until it returns true or `limit` passes.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The one record of `stage` with this source port (panics with all records if
/// there is not exactly one).
fn one<'a>(records: &'a [Value], stage: &str, proto: &str, src_port: u16) -> &'a Value {
    let found: Vec<&Value> =
        records.iter().filter(|r| r["stage"] == stage && r["proto"] == proto && r["src_port"] == src_port).collect();
    assert_eq!(found.len(), 1, "exactly one {stage} {proto} record from source port {src_port}:\n{records:#?}");
    found[0]
}

/// Opens a TCP connection from `ns` (source address `src`) to `dst` and returns its
/// local port: the handshake completed (for servers that do not speak first).
fn tcp_open(ns: &str, src: Option<IpAddr>, dst: SocketAddr) -> std::io::Result<u16> {
    let any: IpAddr = if dst.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() };
    let bind = SocketAddr::new(src.unwrap_or(any), 0);
    in_netns(ns, move || {
        let domain = if dst.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        // SAFETY: a socket owned by the TcpStream made from it right away.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let (sa, len) = raw_sockaddr(bind);
        // SAFETY: binding and connecting our own fd with valid sockaddrs.
        if unsafe { libc::bind(fd, sa.as_ptr().cast(), len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        let (da, dlen) = raw_sockaddr(dst);
        if unsafe { libc::connect(fd, da.as_ptr().cast(), dlen) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream.local_addr()?.port())
    })
}

fn raw_sockaddr(addr: SocketAddr) -> (Vec<u8>, libc::socklen_t) {
    // SAFETY: plain-old-data socket address structures, viewed as bytes.
    unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let mut sin: libc::sockaddr_in = std::mem::zeroed();
                sin.sin_family = libc::AF_INET as u16;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                let b = std::slice::from_raw_parts(
                    (&sin as *const libc::sockaddr_in).cast::<u8>(),
                    size_of::<libc::sockaddr_in>(),
                );
                (b.to_vec(), b.len() as u32)
            }
            SocketAddr::V6(a) => {
                let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
                sin6.sin6_family = libc::AF_INET6 as u16;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                let b = std::slice::from_raw_parts(
                    (&sin6 as *const libc::sockaddr_in6).cast::<u8>(),
                    size_of::<libc::sockaddr_in6>(),
                );
                (b.to_vec(), b.len() as u32)
            }
        }
    }
}

/// `docker inspect -f FORMAT ID`, trimmed.
fn inspect(id: &str, format: &str) -> String {
    sh(&["docker", "inspect", "-f", format, id]).trim().to_string()
}

/// Runs a command inside network namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full)
}
