"""Send or count UDP datagrams; run inside a namespace with `ip netns exec`.

    netio.py recv PORT [PORT...] --family 4|6 --seconds S   prints "port count" lines
    netio.py send ADDR PORT COUNT
"""

from __future__ import annotations

import select
import socket
import sys
import time


def recv(ports: list[int], family: int, seconds: float) -> None:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    socks = {}
    for port in ports:
        s = socket.socket(af, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0" if family == 4 else "::", port))
        socks[s] = port
    counts = dict.fromkeys(ports, 0)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select(list(socks), [], [], left)
        for s in ready:
            s.recv(2048)
            counts[socks[s]] += 1
    for port, n in counts.items():
        print(port, n)


def send(addr: str, port: int, count: int) -> None:
    af = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(af, socket.SOCK_DGRAM)
    for _ in range(count):
        s.sendto(b"pyxdp-test", (addr, port))
        time.sleep(0.001)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        args = sys.argv[2:]
        fam = int(args[args.index("--family") + 1])
        secs = float(args[args.index("--seconds") + 1])
        recv([int(a) for a in args[: args.index("--family")]], fam, secs)
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
