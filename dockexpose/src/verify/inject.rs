//! How a probe enters an uplink's receive path, as if it had arrived there.
//!
//! - Live frames (Linux 5.18+): BPF_PROG_TEST_RUN of `probe_inject` with
//!   BPF_F_TEST_XDP_LIVE_FRAMES hands the frame to the uplink's receive path.
//! - Redirect, where the kernel refuses live frames (older kernels, hardened ones
//!   that answer EPERM): the frame is sent, marked, into a private veth pair; on the
//!   far end `probe_redirect` (TC ingress) hands it to the uplink with
//!   bpf_redirect(BPF_F_INGRESS). The uplink's firewall, DNAT and routing see it as
//!   they see a packet from outside; the veth carries nothing else.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context, Result};
use dockexpose_common::PROBE_FRAME_MARK;

use super::owner::Owner;
use crate::{cli::InjectionArg, kernel::loader::Kernel};

/// Names of the private veth pairs: `dxinj<pid>a` (sent into) and `dxinj<pid>b`.
pub const VETH_PREFIX: &str = "dxinj";

/// The sending end's alias names the run that made the pair.
const ALIAS_PREFIX: &str = "dockexpose-verify owner=";

/// The way probes go in, chosen once a run.
pub enum Injector {
    LiveFrames,
    Redirect(RedirectPath),
}

/// The private veth pair and the packet socket that sends into it; the pair is
/// deleted on drop (which also detaches `probe_redirect`).
pub struct RedirectPath {
    socket: OwnedFd,
    sender_ifindex: u32,
    sender: String,
    target: u32,
}

impl Injector {
    /// Live frames where the kernel takes them (or as `choice` says), the redirect
    /// path otherwise. The second value says which, and why, for the run's notes.
    pub fn choose(kernel: &mut Kernel, choice: InjectionArg) -> Result<(Injector, String)> {
        if choice == InjectionArg::Redirect {
            let path = RedirectPath::create(kernel)?;
            return Ok((
                Injector::Redirect(path),
                "probes enter through a private veth and bpf_redirect (--injection redirect)".into(),
            ));
        }
        match kernel.live_frames_work() {
            Ok(()) => Ok((Injector::LiveFrames, "probes enter through XDP live frames".into())),
            Err(why) if choice == InjectionArg::LiveFrames => {
                bail!("this kernel refuses XDP live frames ({why}).\n  Fix: --injection redirect (or auto), which needs only TC BPF")
            }
            Err(why) => {
                let path = RedirectPath::create(kernel)?;
                let note = format!(
                    "probes enter through a private veth and bpf_redirect (this kernel refuses XDP live frames: {why})"
                );
                Ok((Injector::Redirect(path), note))
            }
        }
    }

    /// Puts `frame` (Ethernet) into the receive path of interface `ifindex`.
    pub fn inject(&mut self, kernel: &mut Kernel, frame: &[u8], ifindex: u32) -> Result<()> {
        match self {
            Injector::LiveFrames => {
                kernel.inject(frame, ifindex).map_err(|e| anyhow!("BPF_PROG_TEST_RUN with live frames: {e}"))
            }
            Injector::Redirect(path) => {
                if path.target != ifindex {
                    kernel.set_redirect_target(ifindex).map_err(|e| anyhow!("{e}"))?;
                    path.target = ifindex;
                }
                path.send(frame)
            }
        }
    }
}

impl RedirectPath {
    fn create(kernel: &mut Kernel) -> Result<Self> {
        remove_stale();
        // A random name: pids repeat across pid namespaces (a daemon in a container is
        // pid 1); the owner goes in the alias, for `remove_stale`.
        let token = format!("{:08x}", super::random_u32());
        let (a, b) = (format!("{VETH_PREFIX}{token}a"), format!("{VETH_PREFIX}{token}b"));
        // The socket first: failing after `ip link add`, before the guard exists, left
        // the pair behind (under a unit without AF_PACKET, one pair per run).
        let socket = packet_socket()?;
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        let mut path = RedirectPath { socket, sender_ifindex: 0, sender: a.clone(), target: 0 };
        ip(&["link", "set", &a, "alias", &format!("{ALIAS_PREFIX}{}", Owner::me().tag())])?;
        for dev in [&a, &b] {
            // No addresses, no IPv6 chatter: the pair carries probes alone.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
            ip(&["link", "set", dev, "up"])?;
        }
        path.sender_ifindex = nix::net::if_::if_nametoindex(a.as_str()).with_context(|| format!("ifindex of {a}"))?;
        kernel.prepare_redirect(&b).map_err(|e| anyhow!("{e}"))?;
        Ok(path)
    }

    fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: sockaddr_ll is plain data; zeroed then filled.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.sender_ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and the address outlive the call; lengths are theirs.
        let n = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            bail!("sending a probe into {}: {}", self.sender, std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for RedirectPath {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.sender]);
    }
}

/// A raw packet socket whose frames carry the probe mark.
fn packet_socket() -> Result<OwnedFd> {
    // SAFETY: plain syscalls; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("opening a packet socket: {}", std::io::Error::last_os_error());
    }
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mark = PROBE_FRAME_MARK;
    let ok = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as u32,
        )
    };
    if ok != 0 {
        bail!("marking probe frames (SO_MARK): {}", std::io::Error::last_os_error());
    }
    Ok(socket)
}

/// Veth pairs a killed run left: their process is gone.
pub fn remove_stale() -> usize {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return 0;
    };
    let mut removed = 0;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(VETH_PREFIX) || !name.ends_with('a') {
            continue;
        }
        let alias = std::fs::read_to_string(entry.path().join("ifalias")).unwrap_or_default();
        if owner_of(&alias).is_some_and(|o| o.is_gone()) && ip(&["link", "del", &name]).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The owner in a veth's alias (`dockexpose-verify owner=PIDNS_PID`).
fn owner_of(alias: &str) -> Option<Owner> {
    Owner::parse(alias.trim().strip_prefix(ALIAS_PREFIX)?)
}

fn ip(args: &[&str]) -> Result<()> {
    let out =
        Command::new("ip").args(args).stdout(Stdio::null()).output().context("running ip (Debian package iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alias_names_the_owner() {
        let me = Owner::me();
        assert_eq!(owner_of(&format!("{ALIAS_PREFIX}{}\n", me.tag())), Some(me));
        assert_eq!(owner_of("uplink to the office"), None);
        assert_eq!(owner_of(""), None);
    }
}
