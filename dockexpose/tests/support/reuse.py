#!/usr/bin/env python3
"""TCP opening handshakes that use one tuple and one initial sequence number again and
again, sent whole from the namespace it runs in (`ip netns exec NS python3 reuse.py`);
used by tests/never_blind.rs.

    python3 reuse.py MODE --dst IP --dport N --sport N --seq N --count N

MODE:
  reuse       COUNT times: SYN(seq), the container's SYN-ACK, RST(seq+1). Each SYN after
              the RST opens a new connection (conntrack makes a new entry, the container
              accepts again): COUNT connections.
  retransmit  COUNT times the same SYN(seq), as if each SYN-ACK were lost, then one
              RST: one connection.

Frames go out through AF_PACKET, past the namespace's own netfilter, so a rule there
can drop the RSTs the namespace's kernel sends for SYN-ACKs it knows nothing of.
Prints one JSON line: {"mode": ..., "answers": N} (SYN-ACKs received).
"""
import argparse
import json
import sys
import time

try:
    from scapy.all import IP, TCP, Ether, conf, getmacbyip, sendp, srp1
except ImportError:
    print("scapy is missing: python3 -m pip install scapy", file=sys.stderr)
    sys.exit(3)

conf.verb = 0
p = argparse.ArgumentParser()
p.add_argument("mode", choices=["reuse", "retransmit"])
p.add_argument("--dst", required=True)
p.add_argument("--dport", type=int, required=True)
p.add_argument("--sport", type=int, required=True)
p.add_argument("--seq", type=int, required=True)
p.add_argument("--count", type=int, default=8)
a = p.parse_args()

iface, src, gw = conf.route.route(a.dst)
mac = getmacbyip(gw if gw != "0.0.0.0" else a.dst)
base = Ether(dst=mac) / IP(src=src, dst=a.dst)


def syn():
    r = srp1(base / TCP(sport=a.sport, dport=a.dport, flags="S", seq=a.seq), iface=iface, timeout=2)
    return int(r is not None and TCP in r and (int(r[TCP].flags) & 0x12) == 0x12)


def rst():
    sendp(base / TCP(sport=a.sport, dport=a.dport, flags="R", seq=a.seq + 1), iface=iface)


answers = 0
for _ in range(a.count):
    answers += syn()
    if a.mode == "reuse":
        rst()
    time.sleep(0.3)
if a.mode == "retransmit":
    rst()
print(json.dumps({"mode": a.mode, "answers": answers}))
