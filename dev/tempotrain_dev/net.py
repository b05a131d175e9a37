"""Loopback port helpers."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request


def free_ports(count: int) -> list[int]:
    """Distinct ports free right now (held open together so none is handed out twice)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


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
