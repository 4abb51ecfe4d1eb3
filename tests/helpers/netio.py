"""Traffic in network namespaces, for the tests, the demo and the kernel
matrix's checks (stdlib only).

As a script, run inside a namespace with `ip netns exec`, it sends or counts
UDP datagrams:

    netio.py recv PORT [PORT...] --family 4|6 --seconds S   prints "port count" lines
    netio.py send ADDR PORT COUNT

As a module: :func:`netns` (this thread in a namespace while sockets are
made) and :class:`Echo` (a TCP or UDP echo server in a namespace).
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def netns(name: str) -> Iterator[None]:
    """This thread in network namespace ``name`` (sockets made meanwhile stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


class Echo:
    """A TCP or UDP echo server on ``addr``:``port`` in namespace ``ns`` (a
    thread); ``accepted`` counts the TCP connections it took."""

    def __init__(self, ns: str, addr: str, port: int, kind: int = socket.SOCK_STREAM) -> None:
        with netns(ns):
            self.s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, kind)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.bind((addr, port))
        if kind == socket.SOCK_STREAM:
            self.s.listen(4)
        self.s.settimeout(0.2)
        self.kind = kind
        self.stop = False
        self.accepted = 0
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                if self.kind == socket.SOCK_DGRAM:
                    data, peer = self.s.recvfrom(65535)
                    self.s.sendto(data, peer)
                    continue
                conn, _peer = self.s.accept()
            except OSError:  # the accept/recv timeout included
                continue
            self.accepted += 1
            with conn:
                conn.settimeout(10)  # a client under TCG (the kernel matrix) may pause that long
                try:
                    while data := conn.recv(65536):
                        conn.sendall(data)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop = True
        self.t.join(2)
        self.s.close()


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
