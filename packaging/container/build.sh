#!/bin/sh
# Builds the dockexpose container image here, without a registry and without a base
# image: a root file system holding the binary, the ip, conntrack and nft programs that
# verify runs, and exactly the shared libraries that ldd names for them, imported with
# `docker import`.
#
#   packaging/container/build.sh target/release/dockexpose [dockexpose:TAG]
#
# Run it (see README, "Run it as a service"):
#   docker run -d --name dockexpose --restart on-failure --network host \
#     --cap-drop ALL --cap-add BPF --cap-add PERFMON --cap-add NET_ADMIN \
#     -v /sys/fs/bpf:/sys/fs/bpf -v /var/run/docker.sock:/var/run/docker.sock:ro \
#     -v /var/log/dockexpose:/var/log/dockexpose dockexpose:TAG
# An engine that does not know CAP_BPF by name (Docker 20.10 as Debian 12 ships it:
# "unknown capability") needs --cap-add SYS_ADMIN --cap-add NET_ADMIN instead.
# `watch --verify-every` also needs --cap-add NET_RAW: verify's probes leave through a
# packet socket.
set -eu
BIN=${1:?usage: build.sh PATH/TO/dockexpose [IMAGE]}
IMAGE=${2:-dockexpose:latest}
command -v docker >/dev/null || { echo "build.sh: no docker client; install Docker" >&2; exit 1; }
command -v ldd >/dev/null || { echo "build.sh: no ldd (libc-bin)" >&2; exit 1; }
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/usr/local/bin" "$ROOT/tmp" "$ROOT/run/dockexpose" "$ROOT/var/log/dockexpose" \
    "$ROOT/var/run" "$ROOT/sys/fs/bpf" "$ROOT/proc" "$ROOT/dev" "$ROOT/etc"
chmod 1777 "$ROOT/tmp"
cp "$BIN" "$ROOT/usr/local/bin/dockexpose"
# `verify` (and `watch --verify-every`) runs ip (route guard, neighbours, its private
# veth), conntrack (its probes' entries) and nft (the trace naming the dropping rule):
# without them it has no guard, no cleanup and no HELD reason. Taken from this host
# (iproute2, conntrack, nftables) with their libraries, until verify speaks netlink.
HELPERS=""
for prog in ip conntrack nft; do
    path=$(command -v "$prog" || true)
    [ -n "$path" ] || { echo "build.sh: $prog not found (Debian: iproute2, conntrack, nftables); verify in the image will lack it" >&2; continue; }
    mkdir -p "$ROOT/usr/sbin"
    cp -L "$path" "$ROOT/usr/sbin/$prog"
    HELPERS="$HELPERS $path"
done
# "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
LIBS=$(ldd "$BIN" $HELPERS | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
[ -n "$LIBS" ] || { echo "build.sh: ldd found no libraries for $BIN (a static binary needs none: fine)" >&2; }
for lib in $LIBS; do
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
done
echo "root:x:0:0:root:/:/usr/local/bin/dockexpose" > "$ROOT/etc/passwd"
echo "root:x:0:" > "$ROOT/etc/group"
tar -C "$ROOT" -c . | docker import \
    --change 'ENTRYPOINT ["/usr/local/bin/dockexpose"]' \
    --change 'CMD ["watch", "--json", "/var/log/dockexpose/audit.jsonl"]' \
    --change 'LABEL org.opencontainers.image.title=dockexpose' \
    - "$IMAGE" >/dev/null
echo "$IMAGE: /usr/local/bin/dockexpose,$HELPERS and $(echo $LIBS | wc -w) libraries: $(echo $LIBS)"
