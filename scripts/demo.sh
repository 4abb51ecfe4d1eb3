#!/usr/bin/env bash
# The demo: installs what it needs, makes two network namespaces joined by a
# veth, attaches the pyxdp filter on the receiving side, sends traffic that
# is allowed and traffic that is blocked, shows the trace and the counters,
# replays a capture, and removes everything it made.
# Runs under pipefail: what it shows is never piped into a reader that may
# stop early (head), which would end the demo with SIGPIPE (exit 141).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then echo "scripts/demo.sh: run as root (sudo): XDP needs CAP_BPF and CAP_NET_ADMIN" >&2; exit 2; fi
bash scripts/setup.sh

A=pxdemo-a B=pxdemo-b PIN=/sys/fs/bpf/pyxdp-demo
X=".venv/bin/pyxdp-load --pin-dir $PIN"
PY=.venv/bin/python
NETIO=tests/helpers/netio.py
TRACE_OUT=$(mktemp)

cleanup() {
  [[ -n "${TRACE_PID:-}" ]] && kill "$TRACE_PID" 2>/dev/null || true
  [[ -n "${HTTP_PID:-}" ]] && kill "$HTTP_PID" 2>/dev/null || true
  $X detach vb --netns $B >/dev/null 2>&1 || true
  ip netns del $A 2>/dev/null || true
  ip netns del $B 2>/dev/null || true
  rm -rf "$PIN" "$TRACE_OUT" "$TRACE_OUT".*
}
trap cleanup EXIT
cleanup

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# each command is printed as you would type it: 'sudo pyxdp-load ...' once setup has linked
# /usr/local/sbin/pyxdp-load to this tree's .venv (it says so), else with the full path
if [[ $(readlink "${PYXDP_SBIN:-/usr/local/sbin}/pyxdp-load" 2>/dev/null) == "$(pwd -P)/.venv/bin/pyxdp-load" ]]; then
  AS_TYPED="sudo pyxdp-load"
else
  AS_TYPED="sudo $(pwd -P)/.venv/bin/pyxdp-load"
fi
show() { local cmd="$*"; printf '$ %s\n' "${cmd/#.venv\/bin\/pyxdp-load/$AS_TYPED}"; "$@"; }

# send COUNT datagrams a -> b to each PORT; print what arrived
traffic() {
  local dst=$1; shift
  ip netns exec $B $PY $NETIO recv "$@" --family "$([[ $dst == *:* ]] && echo 6 || echo 4)" --seconds 1.2 \
    > "$TRACE_OUT.rx" &
  local rx=$!
  sleep 0.3
  for port in "$@"; do ip netns exec $A $PY $NETIO send "$dst" "$port" 5; done
  wait $rx
  awk -v dst="$dst" 'NR > 1 { print "   sent 5 to " dst " port " $1 "/udp -> " $2 " arrived" }' "$TRACE_OUT.rx"
}

step "two namespaces joined by a veth: $A (10.88.0.1, fd88::1) -> $B (10.88.0.2, fd88::2)"
ip netns add $A; ip netns add $B
ip link add va netns $A type veth peer name vb netns $B
ip -n $A addr add 10.88.0.1/24 dev va; ip -n $A addr add fd88::1/64 dev va nodad
ip -n $B addr add 10.88.0.2/24 dev vb; ip -n $B addr add fd88::2/64 dev vb nodad
for ns in $A $B; do ip -n $ns link set lo up; done
ip -n $A link set va up; ip -n $B link set vb up

step "attach the precompiled filter to vb (nothing is compiled: the .bpf.o ships in the package)"
show $X attach vb --netns $B
show $X status

step "trace every packet in the background"
$X trace > "$TRACE_OUT" 2>/dev/null &
TRACE_PID=$!
sleep 0.5

step "nothing denied yet: everything arrives"
traffic 10.88.0.2 5000

step "a ufw-style ordered rule list: the office (10.88.0.0/24, where the sender is) may reach port 5001, nobody else"
show $X allow proto udp from 10.88.0.0/24 to any port 5001
show $X deny 5001/udp
traffic 10.88.0.2 5000 5001
show $X list

step "a fail2ban-style ban with a TTL: the first ban inserts 'deny from @banned' as rule 1"
show $X ban 10.88.0.1 --ttl 3
traffic 10.88.0.2 5000 5001
show $X set list banned
echo "   ... waiting for the ban to run out (the kernel removes the element by itself)"
sleep 3.5
traffic 10.88.0.2 5000 5001
show $X set list banned

step "an allowlist: drop by default; the office's IPv6 network gets port 5001 too (insert puts it before the deny); ARP and IPv6 neighbour discovery keep working"
show $X insert 3 allow proto udp from fd88::/64 to any port 5001
show $X policy drop
ip -n $A neigh flush all
traffic 10.88.0.2 5000 5001
traffic fd88::2 5000 5001

step "the whole firewall from a file (rules, sets with their elements, policy), replaced in one step"
cat > "$TRACE_OUT.toml" <<'TOML'
policy = "drop"
rules = [
    "deny from @banned",
    "allow proto udp from @office to 10.88.0.2 port 5001",
    "allow proto udp from @office to fd88::2 port 5001",
    "deny proto udp to any port 5000:5999",
]

[sets]
office = ["10.88.0.0/24", "fd88::/64"]
banned = ["203.0.113.7 ttl 600"]
TOML
show cat "$TRACE_OUT.toml"
show $X apply "$TRACE_OUT.toml"
traffic 10.88.0.2 5000 5001
traffic fd88::2 5000 5001
show $X save

step "behind the drop policy the host still talks: replies to connections it opens pass (connection state)"
ip netns exec $A $PY -m http.server 8080 --bind 10.88.0.1 >/dev/null 2>&1 &
HTTP_PID=$!
# the filtered host ($B) fetches a page from its peer; no rule allows TCP in
fetch() {
  ip netns exec $B $PY -c "
import urllib.request
try:
    r = urllib.request.urlopen('http://10.88.0.1:8080/', timeout=2)
    print('   $B fetched http://10.88.0.1:8080/:', r.status, len(r.read()), 'bytes')
except OSError as exc:
    print('   $B fetched http://10.88.0.1:8080/: no answer (%s)' % (getattr(exc, 'reason', None) or exc))"
}
for _ in 1 2 3 4 5 6 7 8 9 10; do ip netns exec $B $PY -c "import socket; socket.create_connection(('10.88.0.1', 8080), 1).close()" 2>/dev/null && break; sleep 0.2; done
fetch
show $X flows
show $X state off
fetch
show $X state on
fetch
kill $HTTP_PID 2>/dev/null || true; wait $HTTP_PID 2>/dev/null || true; HTTP_PID=

step "what the filter did, packet by packet (pyxdp-load trace)"
sleep 0.3; kill $TRACE_PID 2>/dev/null || true; wait $TRACE_PID 2>/dev/null || true; TRACE_PID=
# the first 6 UDP events and those a rule decided, 14 at most: one awk that reads the whole file
# (no display pipe: under pipefail a 'head' that exits first would kill the writer with SIGPIPE)
awk '/udp/ { n++; if ((n <= 6 || /rule/) && shown++ < 14) print } END { print "   ... " NR " events in all" }' "$TRACE_OUT"

step "rules with their hit counts, and the counters per interface, verdict and reason"
show $X list
show $X stats

step "replay a capture through the loaded rules (BPF_PROG_TEST_RUN, no interface involved)"
$PY - "$TRACE_OUT.pcap" <<'PY'
import sys
sys.path.insert(0, "tests")
from helpers import packets as P
from pyxdp.model.pcap import write_pcap
with open(sys.argv[1], "wb") as fh:
    write_pcap(fh, [P.udp4("198.51.100.7", 5001), P.udp4("198.51.100.7", 53), P.tcp6("2001:db8::1", 22),
                    P.eth(P.ETH_ARP, P.arp())])
PY
show $X replay "$TRACE_OUT.pcap"
rm -f "$TRACE_OUT.pcap" "$TRACE_OUT.rx" "$TRACE_OUT.toml"

step "detach: the last interface removes the pinned state"
show $X detach vb --netns $B
echo
echo "demo done; cleaning up namespaces"
