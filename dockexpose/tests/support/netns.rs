//! Inside network namespaces: running code on a thread that entered one, the echo
//! services there, and TCP and UDP clients from a namespace (or from the host).

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Runs `f` on a thread that has entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().expect("netns thread panicked")
}

pub fn spawn_in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// A small TCP and UDP echo service inside a namespace, stopped on drop.
pub struct Services {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Services {
    /// Listens on [::]:tcp_port and [::]:udp_port (dual stack) in `ns`.
    pub fn start(ns: &str, tcp_port: u16, udp_port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let r = ready_tx.clone();
        let tcp = spawn_in_netns(ns, move || {
            let l = TcpListener::bind(("::", tcp_port)).expect("bind tcp");
            l.set_nonblocking(true).unwrap();
            r.send(()).unwrap();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(b"ok");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let s = stop.clone();
        let udp = spawn_in_netns(ns, move || {
            let u = UdpSocket::bind(("::", udp_port)).expect("bind udp");
            u.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                }
            }
        });
        for _ in 0..2 {
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("service did not start");
        }
        Self { stop, threads: vec![tcp, udp] }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects over TCP from `ns` (optionally from a given source address), reads the
/// greeting. Returns the local port used, or the error.
pub fn tcp_connect(ns: &str, bind: Option<IpAddr>, dst: SocketAddr) -> std::io::Result<u16> {
    in_netns(ns, move || {
        let stream = match bind {
            None => TcpStream::connect_timeout(&dst, Duration::from_secs(2))?,
            Some(src) => {
                // std has no bind-before-connect: go through a raw socket.
                let domain = if src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
                // SAFETY: plain socket syscalls on an fd we own.
                let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
                assert!(fd >= 0);
                let (sa, len) = sockaddr(SocketAddr::new(src, 0));
                let rc = unsafe { libc::bind(fd, sa.as_ptr().cast(), len) };
                assert_eq!(rc, 0, "bind {src}: {}", std::io::Error::last_os_error());
                let (da, dlen) = sockaddr(dst);
                let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_SNDTIMEO,
                        (&tv as *const libc::timeval).cast(),
                        size_of::<libc::timeval>() as u32,
                    );
                }
                let rc = unsafe { libc::connect(fd, da.as_ptr().cast(), dlen) };
                // SAFETY: fd is a socket we own from here on.
                let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                stream
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let port = stream.local_addr()?.port();
        let mut buf = [0u8; 2];
        (&stream).read_exact(&mut buf)?;
        Ok(port)
    })
}

pub(super) fn sockaddr(addr: SocketAddr) -> (Vec<u8>, libc::socklen_t) {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&sin as *const libc::sockaddr_in).cast::<u8>(),
                    size_of::<libc::sockaddr_in>(),
                )
            };
            (bytes.to_vec(), size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&sin6 as *const libc::sockaddr_in6).cast::<u8>(),
                    size_of::<libc::sockaddr_in6>(),
                )
            };
            (bytes.to_vec(), size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// Sends `count` datagrams from one socket in `ns` and waits for each echo.
/// Returns the local port and how many echoes came back.
/// `bind` picks the source address (IPv6 source selection may otherwise pick
/// another of the host's addresses).
pub fn udp_exchange(ns: &str, bind: Option<IpAddr>, dst: SocketAddr, count: usize) -> (u16, usize) {
    in_netns(ns, move || {
        let any: IpAddr = if dst.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() };
        let u = UdpSocket::bind(SocketAddr::new(bind.unwrap_or(any), 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut echoed = 0;
        for i in 0..count {
            u.send_to(format!("ping {i}").as_bytes(), dst).unwrap();
            let mut buf = [0u8; 64];
            if u.recv_from(&mut buf).is_ok() {
                echoed += 1;
            }
        }
        (u.local_addr().unwrap().port(), echoed)
    })
}

/// Connects from the host itself (root namespace) and reads the greeting.
pub fn tcp_connect_root(dst: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf)
}
