#!/bin/bash
# The kernel-pipeline scenario run inside a VM (see xtask/src/vm.rs): a bridge, a
# "container" and an "outside host" in namespaces, DNAT, real TCP and UDP connections,
# a kill -9 and a restart, then `dockexpose cleanup`, and what is left on the hooks.
# The guest's exit code is not ours: every check prints a "VMCHECK ok|FAIL name: detail"
# line and the last line is "VMRESULT pass=N fail=M", which xtask parses.
# Usage: scenario.sh /path/to/dockexpose
set -u
BIN=$1
W=/tmp/dxvm
PY=/usr/bin/python3
pass=0
fail=0
check() { # check NAME CONDITION-EXIT-CODE DETAIL
    if [ "$2" = 0 ]; then pass=$((pass + 1)); echo "VMCHECK ok $1: $3"; else fail=$((fail + 1)); echo "VMCHECK FAIL $1: $3"; fi
}
finish() { echo "VMRESULT pass=$pass fail=$fail kernel=$(uname -r)"; exit 0; }
rm -rf $W && mkdir -p $W

mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ip link set lo up
for m in veth bridge sch_ingress cls_bpf nf_conntrack nf_nat nf_tables nft_chain_nat nft_compat \
         xt_nat xt_addrtype xt_conntrack xt_MASQUERADE iptable_nat iptable_filter; do
    modprobe -q $m 2>/dev/null
done

# The tier this kernel should land in: TCX from 6.6.
read -r maj min _ <<<"$(uname -r | tr '.-' '  ')"
if [ "$maj" -gt 6 ] || { [ "$maj" -eq 6 ] && [ "$min" -ge 6 ]; }; then want_hook=tcx; else want_hook=cls_bpf; fi
# The conntrack read needs the casts of 6.2/6.3: without them host_port stays unknown
# (null) with --no-docker; with them it is the published 8080, read from conntrack.
if [ "$maj" -gt 6 ] || { [ "$maj" -eq 6 ] && [ "$min" -ge 3 ]; }; then want_host_port=8080; else want_host_port=null; fi
echo "VMINFO kernel $(uname -r): expecting the $want_hook hook"

# (With --no-docker the daemon attaches no uplink programs: nothing names a published
# port to call an attempt; vo is the outsider's route in, and is checked to stay clean.)
# Topology: br0 10.251.7.1/24 with the container c1 (10.251.7.2); the outside host out1
# (198.18.7.2) on the uplink vo (198.18.7.1); ports 8080/tcp and 5353/udp DNAT'd to it.
ip netns add c1 && ip netns add out1
ip link add br0 type bridge && ip addr add 10.251.7.1/24 dev br0 && ip link set br0 up
# br1: watched by the first daemon only; the second must take our filters off it.
ip link add br1 type bridge && ip addr add 10.251.8.1/24 dev br1 && ip link set br1 up
ip link add vc type veth peer name eth0 netns c1 && ip link set vc master br0 up
ip -n c1 addr add 10.251.7.2/24 dev eth0 && ip -n c1 link set eth0 up && ip -n c1 link set lo up
ip -n c1 route add default via 10.251.7.1
ip link add vo type veth peer name eth0 netns out1 && ip addr add 198.18.7.1/24 dev vo && ip link set vo up
ip -n out1 addr add 198.18.7.2/24 dev eth0 && ip -n out1 link set eth0 up && ip -n out1 link set lo up
ip -n out1 route add default via 198.18.7.1
sysctl -qw net.ipv4.ip_forward=1
iptables -t nat -A PREROUTING -d 198.18.7.1 -p tcp --dport 8080 -j DNAT --to-destination 10.251.7.2:80
iptables -t nat -A PREROUTING -d 198.18.7.1 -p udp --dport 5353 -j DNAT --to-destination 10.251.7.2:53
check topology $? "bridge, namespaces and DNAT rules in place"

# Echo servers in the container.
ip netns exec c1 $PY - <<'PY' >$W/server.log 2>&1 &
import socket, threading
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 80)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(c.recv(64)); c.close()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 53))
    while True:
        d, a = u.recvfrom(64); u.sendto(d, a)
threading.Thread(target=udp, daemon=True).start(); tcp()
PY
sleep 1

# A connection from outside: prints the source port used, or "failed".
connect() { # connect tcp|udp PORT
    ip netns exec out1 $PY - "$1" "$2" <<'PY'
import socket, sys
kind, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
s.settimeout(5)
try:
    s.connect(("198.18.7.1", port)); s.send(b"ping")
    print(s.getsockname()[1] if s.recv(64) == b"ping" else "failed")
except OSError as e:
    print("failed", e)
PY
}

# Records in FILE from out1's SOURCE port to the container's PORT/PROTO.
records() { # records FILE PROTO PORT SPORT
    grep -c "\"proto\":\"$2\".*\"src_ip\":\"198.18.7.2\",\"src_port\":$4,\"dst_ip\":\"10.251.7.2\",\"dst_port\":$3[,}]" "$1" 2>/dev/null
}

# Our filters on an interface's hook (cls_bpf tier), by name.
filters() { # filters IFACE ingress|egress
    tc filter show dev "$1" "$2" 2>/dev/null | grep -cE 'bridge_(egress|ingress)|uplink_(egress|ingress)(_l3)?'
}
clsact() { tc qdisc show dev "$1" 2>/dev/null | grep -c clsact; }

start_daemon() { # start_daemon LOG JSON [--bridge IFACE]...
    log=$1 json=$2
    shift 2
    $BIN watch --no-docker "$@" --json "$json" --stats-interval 0 >"$log" 2>&1 &
    DPID=$!
    for _ in $(seq 1 240); do
        grep -q "watching" "$log" && return 0
        kill -0 $DPID 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

t0=$(date +%s)
start_daemon $W/d1.log $W/a.json --bridge br0 --bridge br1
check start1 $? "the daemon started and said it is watching ($(( $(date +%s) - t0 )) s)"
sed 's/^/VMLOG d1: /' $W/d1.log | head -20
grep -qi "tier" $W/d1.log
check tier_line $? "one line at start names the kernel tier: $(grep -i -m1 tier $W/d1.log)"
$BIN status >$W/status.txt 2>&1
sed 's/^/VMLOG status: /' $W/status.txt | head -30
grep -q "$want_hook" $W/status.txt
check status_hook $? "status names the $want_hook hook"

sp_tcp=$(connect tcp 8080); sp_udp=$(connect udp 5353)
echo "VMINFO tcp source port $sp_tcp, udp source port $sp_udp"
sleep 3
n=$(records $W/a.json tcp 80 "$sp_tcp"); [ "$n" = 1 ]; check record_tcp4 $? "one tcp4 record of the DNAT'd connection (found ${n:-0})"
n=$(records $W/a.json udp 53 "$sp_udp"); [ "$n" = 1 ]; check record_udp4 $? "one udp4 record of the DNAT'd flow (found ${n:-0})"
rec=$(grep "\"src_port\":$sp_tcp," $W/a.json | head -1)
echo "$rec" | grep -q "\"host_port\":$want_host_port[,}]"
check host_port $? "host_port is $want_host_port on this kernel: $(echo "$rec" | grep -o '"host_port":[^,]*')"
start=$(grep '"event":"daemon_start"' $W/a.json | head -1)
if [ $want_hook = cls_bpf ]; then want_tier='"kernel_tier":"(basic|no-tcx)"'; else want_tier='"kernel_tier":"(full|no-conntrack)"'; fi
echo "$start" | grep -qE "$want_tier"
check daemon_start_tier $? "daemon_start names the tier: $(echo "$start" | grep -oE '"kernel_tier":"[^"]*"')"
if [ $want_host_port = null ]; then
    echo "$rec" | grep -q '"shape":\[[^]]*"uninspected"'
    check shape_uninspected $? "the record says its shape went uninspected: $(echo "$rec" | grep -o '"shape":[^]]*]')"
    grep -q "this kernel: no conntrack kfuncs" $W/d1.log
    check kernel_limits_alert $? "the missing conntrack defence is said at start (a kernel_limits health alert)"
fi
$BIN status --json 2>/dev/null | grep -q '"tier"\|"tcx":'
check status_json_kernel $? "status --json carries the kernel's features"

if [ $want_hook = cls_bpf ]; then
    for h in "br0 egress" "br0 ingress" "br1 egress" "br1 ingress"; do
        n=$(filters $h); [ "$n" = 1 ]; check "filters_start ${h// /_}" $? "one filter of ours on $h (found $n)"
    done
fi

# kill -9: what stays attached keeps recording into the pinned ring.
prog_ids() { tc filter show dev br0 egress 2>/dev/null | grep -o ' id [0-9]*' | tr -d ' id' | tr '\n' ' '; }
ids_before=$(prog_ids)
kill -9 $DPID; wait $DPID 2>/dev/null
sp_gap=$(connect tcp 8080)
echo "VMINFO tcp source port while no daemon runs: $sp_gap"
t0=$(date +%s)
start_daemon $W/d2.log $W/b.json --bridge br0
check restart $? "the daemon started again after kill -9 ($(( $(date +%s) - t0 )) s)"
sed 's/^/VMLOG d2: /' $W/d2.log | head -20
sp_tcp2=$(connect tcp 8080)
sleep 3
n=$(records $W/b.json tcp 80 "$sp_tcp2"); [ "$n" = 1 ]; check record_after_restart $? "one tcp4 record after the restart (found ${n:-0})"
n=$(records $W/b.json tcp 80 "$sp_gap"); [ "$n" = 1 ]; check record_while_down $? "the connection made while no daemon ran is recorded after the restart (found ${n:-0})"
if [ $want_hook = cls_bpf ]; then
    for h in "br0 egress" "br0 ingress"; do
        n=$(filters $h); [ "$n" = 1 ]; check "filters_restart ${h// /_}" $? "still one filter of ours on $h after kill -9 and restart (found $n)"
    done
    # Links not claimed within 15 s are released: here, the filters on br1.
    for _ in $(seq 1 80); do grep -q "br1" $W/d2.log && break; sleep 0.5; done
    grep "br1" $W/d2.log | sed 's/^/VMLOG d2: /'
    n=$(( $(filters br1 ingress) + $(filters br1 egress) )); [ "$n" = 0 ]
    check filters_unwatched $? "no filter of ours on br1, which the restarted daemon does not watch (found $n)"
    n=$(clsact br1); [ "$n" = 0 ]; check qdisc_unwatched $? "no clsact qdisc on br1 either (found $n)"
    ids_after=$(prog_ids)
    [ -n "$ids_after" ] && [ "$ids_after" != "$ids_before" ]
    check filter_replaced $? "the filter on br0 egress runs the new daemon's program (program id $ids_before-> $ids_after)"
fi

# A clean stop keeps the kernel side attached for the next daemon (pinned), on cls_bpf
# as on TCX; then cleanup: nothing of ours may stay.
kill -TERM $DPID; wait $DPID 2>/dev/null
grep -q '"event":"daemon_stop".*"kernel_side":"kept"' $W/b.json
check clean_stop $? "SIGTERM: daemon_stop says the kernel side is kept"
if [ $want_hook = cls_bpf ]; then
    for h in "br0 egress" "br0 ingress"; do
        n=$(filters $h); [ "$n" = 1 ]; check "filters_after_stop ${h// /_}" $? "the filter of ours on $h stays attached after a clean stop (found $n)"
    done
fi
$BIN cleanup >$W/cleanup.log 2>&1
check cleanup_exit $? "dockexpose cleanup: $(tr '\n' ' ' <$W/cleanup.log)"
for h in "br0 egress" "br0 ingress" "vo egress" "vo ingress"; do
    n=$(filters $h); [ "$n" = 0 ]; check "filters_cleanup ${h// /_}" $? "no filter of ours on $h after cleanup (found $n)"
done
for i in br0 br1 vo; do
    n=$(clsact $i); [ "$n" = 0 ]; check "qdisc_cleanup $i" $? "no clsact qdisc on $i after cleanup (found $n)"
done
[ ! -e /sys/fs/bpf/dockexpose ]; check pins_cleanup $? "no pins left under /sys/fs/bpf/dockexpose ($(ls /sys/fs/bpf 2>/dev/null | tr '\n' ' '))"
links=$(bpftool link show 2>/dev/null | grep -c tcx); [ "${links:-0}" = 0 ]; check tcx_links_cleanup $? "no TCX links left (found ${links:-0})"
finish
