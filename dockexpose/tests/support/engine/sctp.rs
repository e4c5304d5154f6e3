//! SCTP on a kernel without SCTP sockets: the stand-in userland proxy that lets
//! dockerd publish an SCTP port, and the check for SCTP sockets.

/// The stand-in userland proxy (see [`Proxy::SctpStub`]). dockerd passes
/// `-proto P -host-ip … -host-port … -container-ip … -container-port …` and waits
/// for "0\n" (started) or "1\n<error>" on fd 3; it stops the proxy with SIGINT.
pub(super) const SCTP_PROXY_STUB: &str = r#"#!/bin/sh
# Test stand-in for docker-proxy: this kernel has no SCTP sockets, so neither the
# real proxy nor dockerd can listen on a published SCTP port. Tell dockerd the SCTP
# proxy started and idle; TCP and UDP get the real docker-proxy.
case " $* " in
*" -proto sctp "*)
    printf '0\n' >&3
    exec 3>&-
    exec sleep 2147483647
    ;;
esac
exec docker-proxy "$@"
"#;

/// True when this kernel can open SCTP sockets (it cannot on the test machines).
pub fn kernel_has_sctp_sockets() -> bool {
    // SAFETY: a plain socket(2), closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP) };
    if fd >= 0 {
        unsafe { libc::close(fd) };
        return true;
    }
    false
}
