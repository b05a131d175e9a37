"""Loopback port helpers."""

from __future__ import annotations

import random
import socket
import urllib.error
import urllib.request
from pathlib import Path

# Ports are handed out from here up to the kernel's ephemeral range, never from inside it: a
# port from that range, free when checked, may be taken before the server binds it as the
# source port of any outgoing connection (the Temporal dev server once failed to start here
# with "bind: address already in use" on its HTTP port). Kubernetes' NodePorts (30000-32767)
# stay clear too.
PORT_FLOOR = 20_000
NODE_PORTS_START = 30_000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_ports(count: int) -> list[int]:
    """Distinct ports free right now (held open together so none is handed out twice), below
    the ephemeral range where it leaves room; else from the kernel, as a last resort."""
    sockets: list[socket.socket] = []
    try:
        ceiling = min(ephemeral_low(), NODE_PORTS_START)
        if ceiling - PORT_FLOOR >= 100 * count:
            for port in random.sample(range(PORT_FLOOR, ceiling), min(50 * count, 1000)):
                if len(sockets) == count:
                    break
                held = _bound(port)
                if held is not None:
                    sockets.append(held)
        while len(sockets) < count:
            held = _bound(0)
            assert held is not None  # the kernel always has a port for 0
            sockets.append(held)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default where unreadable)."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bound(port: int) -> socket.socket | None:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


def ports_free(ports: list[int], host: str = "127.0.0.1") -> bool:
    """Whether every one of these ports can be bound on `host` right now."""
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
