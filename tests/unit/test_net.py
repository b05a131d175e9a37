"""Ports the platform hands its servers: free, distinct, and below the kernel's ephemeral
range, from which any outgoing connection may take a port before the server binds it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from tempotrain_dev import net


def test_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    ports = net.free_ports(6)
    assert len(set(ports)) == 6
    ceiling = min(net.ephemeral_low(), net.NODE_PORTS_START)  # and clear of NodePorts
    assert all(net.PORT_FLOOR <= port < ceiling for port in ports), ports
    assert net.ports_free(ports)


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        free = spare.getsockname()[1]  # free again once this block closes it
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        # Every candidate is the taken port but the last: only that one can come back.
        monkeypatch.setattr(net.random, "sample", lambda _range, k: [port] * (k - 1) + [free])
        monkeypatch.setattr(net, "PORT_FLOOR", 1_024)
        assert net.free_ports(1) == [free]


def test_without_room_below_the_range_the_kernel_picks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    crowded = tmp_path / "ip_local_port_range"
    crowded.write_text("20010\t60999\n")  # leaves 10 ports below: too few to pick from
    monkeypatch.setattr(net, "EPHEMERAL_RANGE_FILE", crowded)
    ports = net.free_ports(3)
    assert len(set(ports)) == 3 and net.ports_free(ports)
    crowded.write_text("garbage")
    assert net.ephemeral_low() == 32_768
