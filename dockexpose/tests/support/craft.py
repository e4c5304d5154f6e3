#!/usr/bin/env python3
"""Sends ONE crafted first packet of a connection and reports whether the target
answered. Run inside the sending network namespace (`ip netns exec NS python3
craft.py ...`); used by the fidelity tests (tests/crafted.rs through support/craft.rs).

    python3 craft.py SHAPE --src IP --dst IP --dport N --sport N [--timeout S]

Prints one JSON line:
    {"shape": ..., "sport": N, "answered": bool, "answer": "SA"|"R"|"udp"|"INIT-ACK"|"ABORT"|null,
     "icmp": "type/code"|null, "sent": [frame lengths]}
`answered` is a transport answer from the target (dst:dport -> src:sport); an ICMP
error quoting our packet is reported in "icmp" only (for SCTP on a kernel without
SCTP sockets it is the proof the INIT arrived somewhere).

Each shape hides the first packet from a naive parser in another way; each is one
the Linux kernel accepts and forwards through DNAT:
  tcp4-plain        IPv4 + TCP SYN
  tcp4-options      IPv4 header of 60 bytes (ihl=15): NOPs + an empty record-route
  tcp4-tiny-frags   the SYN's IPv4 payload in 8-byte fragments (flags in fragment 2)
  tcp6-plain        IPv6 + TCP SYN
  tcp6-hbh          Hop-by-Hop options header (PadN) before TCP
  tcp6-dstopts      Destination Options header (PadN) before TCP
  tcp6-routing      routing header type 0 with segments left 0 (--rh-type picks
                    another: on Linux 6.18 types 0, 2 and unknown ones (253) with
                    segments left 0 are ignored by the receiver and the SYN is
                    answered; types 3 (RPL) and 4 (SRH) are forwarded but dropped
                    by the container's stack unless rpl_seg_enabled/seg6_enabled)
  tcp6-frag         SYN in two IPv6 fragments: the 20-byte TCP header and MSS in the
                    first (RFC 7112: Linux drops a first fragment without the whole
                    upper-layer header), the other TCP options in the second
  tcp6-chain        Hop-by-Hop + Destination Options + Fragment header, two fragments
  udp4-plain        IPv4 + UDP with a payload
  udp6-dstopts      IPv6 + Destination Options + UDP with a payload
  udp4-frags        a 72-byte UDP datagram in three IPv4 fragments
  sctp4-init        IPv4 + SCTP INIT chunk
  sctp6-init        IPv6 + SCTP INIT chunk

The source may be any address (spoofed): frames are built whole and sent on the
interface that routes to --dst, to the next hop's MAC. An answer to a source this
namespace does not hold can only be seen if the host can resolve it (ARP/ND).
"""

import argparse
import json
import os
import random
import sys
import threading

try:
    import logging

    logging.getLogger("scapy").setLevel(logging.ERROR)
    from scapy.all import (  # noqa: E402
        ICMP,
        IP,
        UDP,
        AsyncSniffer,
        Ether,
        ICMPv6DestUnreach,
        ICMPv6ParamProblem,
        ICMPv6PacketTooBig,
        ICMPv6TimeExceeded,
        IPerror,
        IPerror6,
        IPOption_NOP,
        IPOption_RR,
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
        IPv6ExtHdrSegmentRouting,
        PadN,
        Raw,
        SCTP,
        SCTPChunkAbort,
        SCTPChunkInit,
        SCTPChunkInitAck,
        TCP,
        conf,
        get_if_hwaddr,
        getmacbyip,
        getmacbyip6,
        sendp,
    )
except ImportError as e:  # pragma: no cover
    sys.stderr.write(
        f"craft.py: scapy is not installed ({e}); install it with `python3 -m pip install scapy`\n"
    )
    sys.exit(3)

SHAPES = [
    "tcp4-plain",
    "tcp4-options",
    "tcp4-tiny-frags",
    "tcp6-plain",
    "tcp6-hbh",
    "tcp6-dstopts",
    "tcp6-routing",
    "tcp6-frag",
    "tcp6-chain",
    "udp4-plain",
    "udp6-dstopts",
    "udp4-frags",
    "sctp4-init",
    "sctp6-init",
]

# TCP options of a Linux SYN: 20 bytes, so the header is 40 bytes.
SYN_OPTIONS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (12345, 0)), ("NOP", None), ("WScale", 7)]


def syn(sport, dport):
    return TCP(sport=sport, dport=dport, flags="S", seq=random.getrandbits(32), window=64240, options=SYN_OPTIONS)


def pad(n):
    """A PadN option filling an extension header to 8 bytes (2 + n = 6 -> n = 4)."""
    return PadN(optdata=b"\x00" * n)


def v4_fragments(src, dst, proto, payload, size):
    """IPv4 fragments of `payload` (bytes of a transport header + data), `size` bytes
    each (a multiple of 8), all with one id."""
    ident = random.randint(1, 0xFFFF)
    frags = []
    for off in range(0, len(payload), size):
        chunk = payload[off : off + size]
        more = off + size < len(payload)
        frags.append(IP(src=src, dst=dst, id=ident, proto=proto, flags="MF" if more else 0, frag=off // 8) / Raw(chunk))
    return frags


def v6_fragments(src, dst, unfrag, nh, payload, cuts):
    """IPv6 fragments: `unfrag` (extension headers repeated in each fragment), then a
    Fragment header (next header `nh`), then the slices of `payload` between `cuts`
    (offsets, multiples of 8)."""
    ident = random.getrandbits(32)
    bounds = [0] + cuts + [len(payload)]
    frags = []
    for i in range(len(bounds) - 1):
        a, b = bounds[i], bounds[i + 1]
        pkt = IPv6(src=src, dst=dst)
        for h in unfrag:
            pkt = pkt / h.copy()
        more = 1 if b < len(payload) else 0
        frags.append(pkt / IPv6ExtHdrFragment(nh=nh, id=ident, offset=a // 8, m=more) / Raw(payload[a:b]))
    return frags


def transport_bytes(full, layer):
    """The bytes of `layer` and everything after it, checksums computed over `full`."""
    built = full.__class__(bytes(full))
    return bytes(built[layer])


def build(shape, src, dst, sport, dport, rh_type):
    """The packets (IP layer and up) of one shape."""
    udp_data = f"dockexpose craft {shape} {sport}".encode().ljust(64, b".")
    if shape == "tcp4-plain":
        return [IP(src=src, dst=dst) / syn(sport, dport)]
    if shape == "tcp4-options":
        # 5 NOPs + record route with 8 empty slots (3 + 32 bytes) = 40 bytes: ihl 15.
        rr = IPOption_RR(length=35, pointer=4, routers=["0.0.0.0"] * 8)
        opts = [IPOption_NOP()] * 5 + [rr]
        return [IP(src=src, dst=dst, options=opts) / syn(sport, dport)]
    if shape == "tcp4-tiny-frags":
        seg = transport_bytes(IP(src=src, dst=dst) / syn(sport, dport), TCP)
        return v4_fragments(src, dst, 6, seg, 8)
    if shape == "tcp6-plain":
        return [IPv6(src=src, dst=dst) / syn(sport, dport)]
    if shape == "tcp6-hbh":
        return [IPv6(src=src, dst=dst) / IPv6ExtHdrHopByHop(options=[pad(4)]) / syn(sport, dport)]
    if shape == "tcp6-dstopts":
        return [IPv6(src=src, dst=dst) / IPv6ExtHdrDestOpt(options=[pad(4)]) / syn(sport, dport)]
    if shape == "tcp6-routing":
        if rh_type == 4:
            rh = IPv6ExtHdrSegmentRouting(addresses=[dst], segleft=0, lastentry=0)
        else:
            rh = IPv6ExtHdrRouting(type=rh_type, segleft=0, addresses=[] if rh_type != 2 else [dst])
        return [IPv6(src=src, dst=dst) / rh / syn(sport, dport)]
    if shape == "tcp6-frag":
        seg = transport_bytes(IPv6(src=src, dst=dst) / syn(sport, dport), TCP)
        # 40 bytes: the 20-byte header + MSS (24) in fragment 1, the rest in fragment 2.
        return v6_fragments(src, dst, [], 6, seg, [24])
    if shape == "tcp6-chain":
        # Hop-by-Hop and Destination Options in the unfragmentable part, then the
        # Fragment header; TCP header + MSS in fragment 1.
        hbh = IPv6ExtHdrHopByHop(options=[pad(4)])
        dopt = IPv6ExtHdrDestOpt(options=[pad(4)])
        seg = transport_bytes(IPv6(src=src, dst=dst) / syn(sport, dport), TCP)
        return v6_fragments(src, dst, [hbh, dopt], 6, seg, [24])
    if shape == "udp4-plain":
        return [IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(udp_data)]
    if shape == "udp6-dstopts":
        return [IPv6(src=src, dst=dst) / IPv6ExtHdrDestOpt(options=[pad(4)]) / UDP(sport=sport, dport=dport) / Raw(udp_data)]
    if shape == "udp4-frags":
        dgram = transport_bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(udp_data), UDP)
        return v4_fragments(src, dst, 17, dgram, 24)
    if shape in ("sctp4-init", "sctp6-init"):
        init = SCTPChunkInit(
            init_tag=random.getrandbits(32) or 1, a_rwnd=106496, n_out_streams=10, n_in_streams=10, init_tsn=random.getrandbits(32)
        )
        l3 = IP(src=src, dst=dst) if shape == "sctp4-init" else IPv6(src=src, dst=dst)
        return [l3 / SCTP(sport=sport, dport=dport, tag=0) / init]
    raise SystemExit(f"craft.py: unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def route(dst, v6):
    """(interface, next hop) toward dst, from the namespace's routing table."""
    if v6:
        iface, _, gw = conf.route6.route(dst)
        return iface, (gw if gw and gw != "::" else dst)
    iface, _, gw = conf.route.route(dst)
    return iface, (gw if gw and gw != "0.0.0.0" else dst)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shape", choices=SHAPES)
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--dport", type=int, required=True)
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--rh-type", type=int, default=0, help="routing header type for tcp6-routing (0, 2, 3, 4, 253...)")
    a = p.parse_args()

    v6 = ":" in a.dst
    if v6 != (":" in a.src):
        raise SystemExit("craft.py: --src and --dst must be of one family")
    if ("6" in a.shape.split("-")[0]) != v6:
        raise SystemExit(f"craft.py: shape {a.shape} needs {'IPv6' if not v6 else 'IPv4'} addresses")
    conf.verb = 0
    pkts = build(a.shape, a.src, a.dst, a.sport, a.dport, a.rh_type)

    iface, hop = route(a.dst, v6)
    if not iface or iface == "lo":
        raise SystemExit(f"craft.py: no route to {a.dst} in this namespace")
    mac = getmacbyip6(hop) if v6 else getmacbyip(hop)
    if not mac:
        raise SystemExit(f"craft.py: no neighbour entry for next hop {hop} on {iface}")
    frames = [Ether(src=get_if_hwaddr(iface), dst=mac) / pk for pk in pkts]

    proto = a.shape.split("-")[0][:-1]

    def transport_answer(pkt):
        l3 = pkt.getlayer(IPv6 if v6 else IP)
        if l3 is None or l3.src != a.dst or l3.dst != a.src:
            return None
        if proto == "tcp" and pkt.haslayer(TCP):
            t = pkt[TCP]
            if t.sport == a.dport and t.dport == a.sport:
                f = str(t.flags)
                if "S" in f and "A" in f:
                    return "SA"
                return "R" if "R" in f else f
        if proto == "udp" and pkt.haslayer(UDP):
            u = pkt[UDP]
            if u.sport == a.dport and u.dport == a.sport:
                return "udp"
        if proto == "sctp" and pkt.haslayer(SCTP):
            s = pkt[SCTP]
            if s.sport == a.dport and s.dport == a.sport:
                if pkt.haslayer(SCTPChunkInitAck):
                    return "INIT-ACK"
                if pkt.haslayer(SCTPChunkAbort):
                    return "ABORT"
                return "sctp"
        return None

    def icmp_error(pkt):
        """type/code of an ICMP error to us that quotes our packet."""
        if v6:
            for cls in (ICMPv6DestUnreach, ICMPv6ParamProblem, ICMPv6TimeExceeded, ICMPv6PacketTooBig):
                if pkt.haslayer(cls) and pkt.haslayer(IPerror6):
                    q = pkt[IPerror6]
                    if pkt[IPv6].dst == a.src and q.src == a.src:
                        return f"{pkt[cls].type}/{pkt[cls].code}"
            return None
        if pkt.haslayer(ICMP) and pkt.haslayer(IPerror):
            q = pkt[IPerror]
            if pkt[IP].dst == a.src and q.src == a.src and q.dst == a.dst:
                return f"{pkt[ICMP].type}/{pkt[ICMP].code}"
        return None

    def final(pkt):
        return transport_answer(pkt) is not None or icmp_error(pkt) is not None

    ready = threading.Event()
    sniffer = AsyncSniffer(iface=iface, store=True, lfilter=final, stop_filter=final, started_callback=ready.set)
    sniffer.start()
    if not ready.wait(5):
        raise SystemExit("craft.py: the capture did not start")
    sendp(frames, iface=iface, verbose=False)
    sniffer.join(a.timeout)
    if sniffer.running:
        sniffer.stop()
    results = sniffer.results or []

    answer = next((x for x in map(transport_answer, results) if x), None)
    icmp = next((x for x in map(icmp_error, results) if x), None)
    print(
        json.dumps(
            {
                "shape": a.shape,
                "sport": a.sport,
                "answered": answer is not None,
                "answer": answer,
                "icmp": icmp,
                "sent": [len(f) for f in frames],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.stderr.write("craft.py: needs root (raw packets)\n")
        sys.exit(2)
    main()
