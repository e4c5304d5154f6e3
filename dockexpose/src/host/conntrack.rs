//! The host's conntrack table over ctnetlink: what `conntrack -D` and `conntrack -L`
//! do, without the `conntrack` program (the container image has none). The program
//! speaks this same protocol, so where it would work this works too.

use std::{io, net::IpAddr};

use netlink_packet_core::{DefaultNla, NLM_F_DUMP};
use netlink_packet_netfilter::{
    conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple},
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::netlink::Netlink;

/// CTA_ID: the entry's id, which the kernel checks on delete (not named by the crate).
const CTA_ID: u16 = 12;
/// nfgenmsg.version.
const NFNETLINK_V0: u8 = 0;

/// One direction of a connection, as conntrack keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowTuple {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// An entry of the table, by its original direction (what the first packet carried).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The original source address.
    pub src: IpAddr,
    /// The whole original tuple; None for a protocol without ports (ICMP).
    pub original: Option<FlowTuple>,
    /// The kernel's id of the entry.
    pub id: Option<u32>,
}

fn nf_family(addr: IpAddr) -> NetfilterProtoFamily {
    if addr.is_ipv4() {
        NetfilterProtoFamily::IPv4
    } else {
        NetfilterProtoFamily::IPv6
    }
}

fn message(family: NetfilterProtoFamily, msg: ConntrackMessage) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(family, NFNETLINK_V0, 0), msg)
}

/// CTA_TUPLE_ORIG for `t`.
fn original(t: &FlowTuple) -> ConntrackAttribute {
    ConntrackAttribute::CtaTupleOrig(vec![
        Tuple::Ip(vec![IPTuple::SourceAddress(t.src), IPTuple::DestinationAddress(t.dst)]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(t.proto)),
            ProtoTuple::SourcePort(t.sport),
            ProtoTuple::DestinationPort(t.dport),
        ]),
    ])
}

/// The original direction and id of an entry the kernel sent.
fn entry_of(msg: NetfilterMessage) -> Option<Entry> {
    let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = msg.inner else {
        return None;
    };
    let (mut src, mut tuple) = (None, None);
    let mut id = None;
    for attr in attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(parts) => (src, tuple) = flow_tuple(&parts),
            ConntrackAttribute::Other(nla) if netlink_packet_core::Nla::kind(&nla) == CTA_ID => {
                let mut v = [0u8; 4];
                netlink_packet_core::Nla::emit_value(&nla, &mut v);
                id = Some(u32::from_be_bytes(v));
            }
            _ => {}
        }
    }
    Some(Entry { src: src?, original: tuple, id })
}

/// The source address, and the whole tuple if it has every part.
fn flow_tuple(parts: &[Tuple]) -> (Option<IpAddr>, Option<FlowTuple>) {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for part in parts {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => sport = Some(*n),
                        ProtoTuple::DestinationPort(n) => dport = Some(*n),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let whole = || Some(FlowTuple { proto: proto?, src: src?, dst: dst?, sport: sport?, dport: dport? });
    (src, whole())
}

/// The entry whose tuple (either direction, as the kernel looks it up) is `t`, or
/// None.
pub fn get(t: &FlowTuple) -> io::Result<Option<Entry>> {
    let msg = message(nf_family(t.src), ConntrackMessage::Get(vec![original(t)]));
    match Netlink::open(NETLINK_NETFILTER)?.request(msg, 0) {
        Ok(answer) => Ok(answer.into_iter().find_map(entry_of)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes the entry whose original tuple is exactly `t` (`conntrack -D -p -s -d
/// --sport --dport`). Returns how many were deleted: 0 or 1. The kernel finds an
/// entry by a tuple of either direction, so the entry is read first and deleted only
/// if its original direction is `t`, by its id (an entry that replaced it meanwhile
/// is left alone).
pub fn delete(t: &FlowTuple) -> io::Result<usize> {
    let Some(entry) = get(t)? else { return Ok(0) };
    if entry.original != Some(*t) {
        return Ok(0);
    }
    let mut attrs = vec![original(t)];
    if let Some(id) = entry.id {
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(CTA_ID, id.to_be_bytes().to_vec())));
    }
    let msg = message(nf_family(t.src), ConntrackMessage::Delete(attrs));
    match Netlink::open(NETLINK_NETFILTER)?.request(msg, 0) {
        Ok(_) => Ok(1),
        // Gone in between (timed out, or another delete): nothing deleted here.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Every entry of the table (both families), as `conntrack -L` lists them.
pub fn list() -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut socket = Netlink::open(NETLINK_NETFILTER)?;
    for family in [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6] {
        let answer = socket.request(message(family, ConntrackMessage::Get(Vec::new())), NLM_F_DUMP)?;
        entries.extend(answer.into_iter().filter_map(entry_of));
    }
    Ok(entries)
}

/// How many entries have an original source among `sources` (`conntrack -L -s`).
pub fn count_from(sources: &[IpAddr]) -> io::Result<usize> {
    Ok(list()?.iter().filter(|e| sources.contains(&e.src)).count())
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};

    use super::*;

    fn tcp(src: &str, dst: &str) -> FlowTuple {
        FlowTuple { proto: 6, src: src.parse().unwrap(), dst: dst.parse().unwrap(), sport: 40000, dport: 8080 }
    }

    /// An entry as the kernel sends it (IPCTNL_MSG_CT_NEW), through the wire format.
    fn from_wire(family: NetfilterProtoFamily, attrs: Vec<ConntrackAttribute>) -> Option<Entry> {
        let mut msg = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(message(family, ConntrackMessage::New(attrs))),
        );
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        let back = NetlinkMessage::<NetfilterMessage>::deserialize(&buf).unwrap();
        let NetlinkPayload::InnerMessage(m) = back.payload else { panic!("not an inner message: {back:?}") };
        entry_of(m)
    }

    #[test]
    fn an_entry_is_read_back_with_its_original_tuple_and_id() {
        for t in [tcp("198.18.7.2", "198.18.7.1"), tcp("fd42:198:7::2", "fd42:198:7::1")] {
            let reply =
                FlowTuple { src: "10.251.7.2".parse().unwrap(), dst: t.src, sport: t.dport, dport: t.sport, ..t };
            let id = ConntrackAttribute::Other(DefaultNla::new(CTA_ID, 0xdead_beef_u32.to_be_bytes().to_vec()));
            let reply_attr = match original(&reply) {
                ConntrackAttribute::CtaTupleOrig(parts) => ConntrackAttribute::CtaTupleReply(parts),
                other => panic!("{other:?}"),
            };
            let e = from_wire(nf_family(t.src), vec![original(&t), reply_attr, id]).expect("an entry");
            assert_eq!(e, Entry { src: t.src, original: Some(t), id: Some(0xdead_beef) });
        }
    }

    #[test]
    fn an_entry_without_ports_still_counts_by_its_source() {
        // ICMP: the tuple has addresses and a protocol, no ports.
        let src: IpAddr = "198.18.7.2".parse().unwrap();
        let attrs = vec![ConntrackAttribute::CtaTupleOrig(vec![
            Tuple::Ip(vec![IPTuple::SourceAddress(src), IPTuple::DestinationAddress("198.18.7.1".parse().unwrap())]),
            Tuple::Proto(vec![ProtoTuple::Protocol(Protocol::Icmp)]),
        ])];
        let e = from_wire(NetfilterProtoFamily::IPv4, attrs).expect("an entry");
        assert_eq!((e.src, e.original, e.id), (src, None, None));
        // A message with no original tuple is no entry.
        assert_eq!(from_wire(NetfilterProtoFamily::IPv4, vec![ConntrackAttribute::CtaMark(1)]), None);
    }
}
