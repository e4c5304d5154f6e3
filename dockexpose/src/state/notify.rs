//! sd_notify, without libsystemd: one datagram to `$NOTIFY_SOCKET` (a unix socket
//! path, or an abstract name when it starts with `@`). `Type=notify` units wait for
//! `READY=1` before they count as started.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. "READY=1") to the service manager. Ok(false) when not run
/// under one (no NOTIFY_SOCKET).
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let target = target.to_string_lossy().into_owned();
    let addr = socket_addr(&target)?;
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

fn socket_addr(target: &str) -> std::io::Result<SocketAddr> {
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    if !target.starts_with('/') {
        return Err(std::io::Error::other(format!("NOTIFY_SOCKET {target:?} is neither a path nor an abstract name")));
    }
    SocketAddr::from_pathname(target)
}

/// Tells the service manager, or warns (never fatal: detection goes on).
pub fn tell(state: &str) {
    if let Err(e) = notify(state) {
        crate::say!("warning: telling the service manager {state:?} failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert!(socket_addr("/run/systemd/notify").unwrap().as_pathname().is_some());
        assert!(socket_addr("@abstract/notify").is_ok());
        assert!(socket_addr("relative").is_err());
    }

    #[test]
    fn a_datagram_reaches_the_listener() {
        let path = std::env::temp_dir().join(format!("dockexpose-notify-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let sock = UnixDatagram::unbound().unwrap();
        sock.send_to_addr(b"READY=1", &socket_addr(path.to_str().unwrap()).unwrap()).unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&path);
    }
}
