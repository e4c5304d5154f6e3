//! One request to the kernel over netlink, answered in full: the small synchronous
//! client under `routes` (rtnetlink) and `conntrack` (ctnetlink). Packets are built
//! and parsed by the rust-netlink crates; this only sends, reads until the kernel's
//! acknowledgement or the end of a dump, and turns a kernel error into its errno.
//!
//! Synchronous on purpose: verify runs on a plain thread (also inside the daemon), and
//! a few requests per run need no runtime. Every read has a timeout, so a kernel that
//! never answers cannot hang a run.

use std::{io, os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// How long one read waits for the kernel.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// SO_RCVTIMEO on a netlink socket: a read waits at most `timeout`.
pub(crate) fn set_read_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt on a socket we own, with a timeval that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a failed read of a subscription only means "nothing yet": the read timed
/// out, or a signal interrupted it. Anything else ends the subscription.
pub(crate) fn read_was_idle(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

/// A netlink socket of one protocol (`netlink_sys::protocols::NETLINK_*`).
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens and binds a socket of `protocol` in this thread's network namespace.
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        set_read_timeout(&socket, READ_TIMEOUT)?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends `payload` with `flags` (plus NLM_F_REQUEST and NLM_F_ACK) and returns the
    /// messages of the answer. A kernel error (a negative errno in the acknowledgement)
    /// is returned as that errno.
    pub fn request<T>(&mut self, payload: T, flags: u16) -> io::Result<Vec<T>>
    where
        T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut answer = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            if data.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "netlink socket closed"));
            }
            let mut at = 0;
            while at < data.len() {
                let reply = NetlinkMessage::<T>::deserialize(&data[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("netlink answer: {e}")))?;
                let len = reply.header.length as usize;
                // Messages of another request (a late answer) are not ours.
                let ours = reply.header.sequence_number == self.seq;
                match reply.payload {
                    NetlinkPayload::Error(e) if ours => {
                        return match e.code {
                            None => Ok(answer),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) if ours => return Ok(answer),
                    NetlinkPayload::InnerMessage(m) if ours => answer.push(m),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                // Netlink messages are 4-byte aligned in a datagram.
                at += (len + 3) & !3;
            }
        }
    }
}
