//! Kernels without TCX (before 6.6): the classifiers as netlink cls_bpf filters that
//! dockexpose owns and can find again.
//!
//! aya's `SchedClassifier::attach` falls back to cls_bpf by itself, at a priority and
//! handle the kernel picks, as a link no fd holds: a killed daemon left its filters
//! behind and each restart added a set. Here every filter of ours sits at PRIORITY and
//! HANDLE under the clsact qdisc and carries its program's name, so that:
//! - a restart replaces the program of the filter in place (the hook is never empty),
//!   as BPF_LINK_UPDATE does for TCX links;
//! - `dockexpose cleanup` (and a start that finds no filter at our handle) removes
//!   every filter named like ours on every interface;
//! - the clsact qdisc is removed when dockexpose made it: a marker directory under the
//!   pin directory (`clsact/<iface>`) remembers that across a kill -9, and another
//!   (`filters/<iface>`) where the filters are, so that the next daemon removes those
//!   on interfaces it no longer watches (not another daemon's, with its own pins).

use std::{io, path::Path};

use aya::programs::{
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    SchedClassifier, TcAttachType,
};

use super::loader::{ProgramKind, WATCH_PROGRAMS};

/// Ahead of filters added without a priority (the kernel starts those at 49152):
/// an observer should see a packet before another filter drops it.
pub const PRIORITY: u16 = 0x0dec;
pub const HANDLE: TcHandle = TcHandle::new(0xdec5, 1);

/// Attaches `prog` to `iface`'s hook as our filter: replaces the program of the one a
/// previous daemon left (returns true), or removes filters of ours at other places
/// (an older dockexpose let the kernel pick) and adds a new one.
pub fn attach(
    prog: &mut SchedClassifier,
    iface: &str,
    direction: TcAttachType,
) -> Result<(tc::SchedClassifierLinkId, bool), aya::programs::ProgramError> {
    if let Ok(existing) = SchedClassifierLink::attached(iface, direction, PRIORITY, HANDLE, None) {
        // Without NLM_F_CREATE the kernel changes the filter at our handle, or says ENOENT.
        if let Ok(id) = prog.attach_to_link(existing) {
            return Ok((id, true));
        }
    }
    remove_ours(iface, direction);
    let options = NlOptions { priority: PRIORITY, handle: HANDLE, ..Default::default() };
    let id = prog.attach_with_options(iface, direction, TcAttachOptions::Netlink(options))?;
    Ok((id, false))
}

/// Removes every filter named like one of ours on `iface`'s hook; returns how many
/// program names had filters there.
pub fn remove_ours(iface: &str, direction: TcAttachType) -> usize {
    WATCH_PROGRAMS
        .iter()
        .filter(|(_, kind)| *kind == ProgramKind::Classifier)
        .filter(|(name, _)| tc::qdisc_detach_program(iface, direction, name).is_ok())
        .count()
}

/// `dockexpose cleanup`: removes our filters from every interface; returns
/// "iface direction" for each hook that had some.
pub fn remove_everywhere() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return removed;
    };
    for iface in entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()) {
        for (direction, name) in [(TcAttachType::Ingress, "ingress"), (TcAttachType::Egress, "egress")] {
            if remove_ours(&iface, direction) > 0 {
                removed.push(format!("{iface} {name}"));
            }
        }
    }
    removed
}

/// Adds the clsact qdisc to `iface`; true when this call made it (it was not there).
pub fn add_clsact(iface: &str) -> bool {
    tc::qdisc_add_clsact(iface).is_ok()
}

/// What a marker under the pin directory remembers about an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// dockexpose made its clsact qdisc.
    Clsact,
    /// Filters of ours are attached there.
    Filters,
}

impl Mark {
    fn dir(self, pins: &Path) -> std::path::PathBuf {
        pins.join(match self {
            Self::Clsact => "clsact",
            Self::Filters => "filters",
        })
    }
}

/// Remembers `mark` for `iface` under the pin directory `dir` (bpffs takes
/// directories, not files).
pub fn mark(dir: &Path, mark: Mark, iface: &str) {
    let _ = std::fs::create_dir_all(mark.dir(dir).join(iface));
}

pub fn unmark(dir: &Path, mark: Mark, iface: &str) {
    let _ = std::fs::remove_dir(mark.dir(dir).join(iface));
}

/// The interfaces marked with `mark` under `dir`.
pub fn marked(dir: &Path, mark: Mark) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(mark.dir(dir)) else {
        return Vec::new();
    };
    entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// Removes what the marks under `dir` name: our filters on each marked interface,
/// then the clsact qdiscs dockexpose made; returns the interfaces whose qdisc went.
/// For a pin directory about to be removed (cleanup, a layout reset).
pub fn release_marked(dir: &Path) -> Vec<String> {
    for iface in marked(dir, Mark::Filters) {
        for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
            remove_ours(&iface, direction);
        }
    }
    marked(dir, Mark::Clsact).into_iter().filter(|iface| delete_clsact(iface).is_ok()).collect()
}

/// Deletes `iface`'s clsact qdisc (and whatever filters are still under it).
/// `tc qdisc del dev IFACE clsact`, as aya has no call for it.
pub fn delete_clsact(iface: &str) -> io::Result<()> {
    let ifindex = nix::net::if_::if_nametoindex(iface).map_err(io::Error::from)?;
    let request = delete_qdisc_request(ifindex, 1);
    // SAFETY: plain socket calls on an fd we own, with buffers that outlive them.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let result = (|| {
            if libc::send(fd, request.as_ptr().cast(), request.len(), 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut reply = [0u8; 1024];
            let n = libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            ack_error(&reply[..n as usize])
        })();
        libc::close(fd);
        result
    }
}

// ---------------------------------------------------------------------------------
// Pure helpers (unit-tested)

const RTM_DELQDISC: u16 = 37;
const NLMSG_ERROR: u16 = 2;
const TC_H_CLSACT: u32 = 0xffff_fff1;
const TCA_KIND: u16 = 1;

/// nlmsghdr + tcmsg + TCA_KIND "clsact": deletes the clsact qdisc of `ifindex`.
fn delete_qdisc_request(ifindex: u32, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(48);
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, filled below
    m.extend_from_slice(&RTM_DELQDISC.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
                                              // struct tcmsg: family, 3 pad bytes, ifindex, handle, parent, info.
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    m.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    m.extend_from_slice(&0xffff_0000u32.to_ne_bytes());
    m.extend_from_slice(&TC_H_CLSACT.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    let kind = b"clsact\0";
    m.extend_from_slice(&((4 + kind.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&TCA_KIND.to_ne_bytes());
    m.extend_from_slice(kind);
    m.resize(m.len().next_multiple_of(4), 0);
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// The kernel's answer: an NLMSG_ERROR whose error is 0 is the ack.
fn ack_error(reply: &[u8]) -> io::Result<()> {
    let u16_at = |at: usize| reply.get(at..at + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let i32_at = |at: usize| reply.get(at..at + 4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (u16_at(4), i32_at(16)) {
        (Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (Some(NLMSG_ERROR), Some(e)) => Err(io::Error::from_raw_os_error(-e)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "no netlink ack")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delete_request_is_what_tc_sends() {
        let m = delete_qdisc_request(7, 1);
        assert_eq!(m.len(), 16 + 20 + 12, "header, tcmsg, TCA_KIND padded to 4");
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_DELQDISC);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 7, "ifindex");
        assert_eq!(u32::from_ne_bytes(m[28..32].try_into().unwrap()), TC_H_CLSACT, "parent");
        assert_eq!(&m[40..47], b"clsact\0");
    }

    #[test]
    fn acks_and_errors() {
        let reply = |err: i32| {
            let mut r = vec![0u8; 36];
            r[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
            r[16..20].copy_from_slice(&err.to_ne_bytes());
            r
        };
        assert!(ack_error(&reply(0)).is_ok());
        assert_eq!(ack_error(&reply(-libc::ENOENT)).unwrap_err().raw_os_error(), Some(libc::ENOENT));
        assert!(ack_error(&[0u8; 4]).is_err());
    }

    #[test]
    fn markers_round_trip() {
        let dir = std::env::temp_dir().join(format!("dockexpose-clsact-{}", std::process::id()));
        mark(&dir, Mark::Clsact, "br-x");
        mark(&dir, Mark::Clsact, "eth9");
        mark(&dir, Mark::Filters, "br-y");
        let mut got = marked(&dir, Mark::Clsact);
        got.sort();
        assert_eq!(got, ["br-x", "eth9"]);
        unmark(&dir, Mark::Clsact, "br-x");
        assert_eq!(marked(&dir, Mark::Clsact), ["eth9"]);
        assert_eq!(marked(&dir, Mark::Filters), ["br-y"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
