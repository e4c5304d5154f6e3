//! The load of the saturation benchmark: ApacheBench runs from the outside namespace
//! (new connections, no keep-alive) and single HTTP requests for the idle latency.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use crate::support::in_netns;

/// What one ab run said.
pub(crate) struct Ab {
    pub complete: u64,
    pub failed: u64,
    pub seconds: f64,
}

pub(crate) fn ab_args(clients: u32, seconds: u32, src: IpAddr, url: &str) -> Vec<String> {
    // -t sets -n to 50 000: a -n after it raises the cap so that time alone ends the run.
    // No -k: every request is a new connection. -r: a receive error does not end the run.
    [
        "ab",
        "-q",
        "-r",
        "-s",
        "5",
        "-c",
        &clients.to_string(),
        "-t",
        &seconds.to_string(),
        "-n",
        "10000000",
        "-B",
        &src.to_string(),
        url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub(crate) fn run_ab(ns: &str, args: &[String]) -> Ab {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("run ab (apache2-utils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name:?} in ab's output:\n{text}"));
        line[name.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    Ab {
        complete: field("Complete requests:") as u64,
        failed: field("Failed requests:") as u64,
        seconds: field("Time taken for tests:"),
    }
}

/// One HTTP GET over a new connection from `ns`, bound to `src`; returns the local port.
pub(crate) fn http_get(ns: &str, src: IpAddr, dst: SocketAddr) -> u16 {
    in_netns(ns, move || {
        let sock = socket2_connect(src, dst);
        let port = sock.local_addr().unwrap().port();
        let mut s = sock;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut body = Vec::new();
        s.read_to_end(&mut body).unwrap();
        assert!(body.starts_with(b"HTTP/1."), "not an HTTP answer: {:?}", String::from_utf8_lossy(&body));
        port
    })
}

/// Bind-before-connect with std and libc only.
fn socket2_connect(src: IpAddr, dst: SocketAddr) -> TcpStream {
    let IpAddr::V4(src) = src else { panic!("IPv4 only") };
    let SocketAddr::V4(dst) = dst else { panic!("IPv4 only") };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: plain socket syscalls on an fd owned by the TcpStream returned.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let a = sin(src, 0);
        assert_eq!(
            libc::bind(fd, (&a as *const libc::sockaddr_in).cast(), len),
            0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        let d = sin(*dst.ip(), dst.port());
        assert_eq!(
            libc::connect(fd, (&d as *const libc::sockaddr_in).cast(), len),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        stream
    }
}

/// One request, for "is the server up yet".
pub(crate) fn run_ab_quietly(ns: &str, url: &str) -> Result<(), ()> {
    let out =
        Command::new("ip").args(["netns", "exec", ns, "ab", "-q", "-s", "2", "-n", "1", url]).output().map_err(drop)?;
    let text = String::from_utf8_lossy(&out.stdout);
    (out.status.success() && text.contains("Complete requests:      1") && text.contains("Failed requests:        0"))
        .then_some(())
        .ok_or(())
}
