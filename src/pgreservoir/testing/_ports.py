"""TCP ports for the things :mod:`pgreservoir.testing` starts, and loopback addresses.

One process-wide registry of the ports handed out, shared by the servers,
PgBouncers and proxies, so two of them never pick the same port even before
either has bound it.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import threading
from typing import List, Set, Tuple

_PORT_RANGE = (20000, 32000)  # below the Linux ephemeral range (32768-60999)

_rng = random.SystemRandom()


class _Ports:
    """The ports handed out by :func:`_pick_port` and not yet released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken: Set[int] = set()


_ports = _Ports()


def _release_port(port: int) -> None:
    """Give back a port from :func:`_pick_port` (after its owner stopped using it)."""
    with _ports.lock:
        _ports.taken.discard(port)


def _after_fork_in_child() -> None:
    _ports.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _loopback_addresses(host: str) -> List[Tuple[int, str]]:
    """(family, address) pairs a server on ``host`` binds; rejects non-loopback hosts."""
    if host == "localhost":
        pairs: List[Tuple[int, str]] = [(socket.AF_INET, "127.0.0.1")]
        if socket.has_ipv6:
            pairs.append((socket.AF_INET6, "::1"))
        return pairs
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"host must be 'localhost' or a loopback IP address, not {host!r}"
        ) from None
    if not address.is_loopback:
        raise ValueError(f"host must be a loopback address, not {host!r}")
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return [(family, host)]


def _port_is_free(host: str, port: int) -> bool:
    for family, address in _loopback_addresses(host):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((address, port))
        except OSError:
            if family == socket.AF_INET6 and host == "localhost":
                continue  # no IPv6 loopback here: postgres will only use IPv4
            return False
    return True


def _pick_port(host: str) -> int:
    """A free TCP port in 20000-32000 (never in the Linux ephemeral range)."""
    for _ in range(500):
        port = _rng.randint(*_PORT_RANGE)
        with _ports.lock:
            if port in _ports.taken:
                continue
        if _port_is_free(host, port):
            with _ports.lock:
                _ports.taken.add(port)
            return port
    raise RuntimeError(f"no free TCP port found in {_PORT_RANGE[0]}-{_PORT_RANGE[1]}")
