"""Socket-level helpers shared by the drivers: the liveness probe, shutting a
connection's socket from another thread, and fork hygiene.

Everything here works for any descriptor number: ``select.select()`` rejects
descriptors >= 1024 (a busy server process easily has that many files open),
so it is never used.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
from typing import Any, Callable, FrozenSet, Iterable, List, Optional, Set

__all__ = ["Probe", "make_probe", "open_fds", "shutdown_fd", "stray_sockets"]

#: ``probe(0)`` returns a non-empty list when the socket has something to
#: read, which on an idle connection means the server sent a message (a
#: FATAL before it hung up, a notification) or hung up (EOF, reset).
Probe = Callable[[int], List[Any]]

_READ_EVENTS = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)


def make_probe(fd: int) -> Probe:
    """A zero-round-trip readability probe of ``fd``: one system call per use.

    An epoll instance per connection where available (about 0.3 us a probe,
    measured, half the cost of a poll object and a quarter of select()), else
    a poll object. Either holds a descriptor until it is closed or collected:
    see :func:`close_probe`.
    """
    if hasattr(select, "epoll"):
        ep = select.epoll(1)
        ep.register(fd, select.EPOLLIN | select.EPOLLPRI | select.EPOLLRDHUP)
        return ep.poll
    poller = select.poll()
    poller.register(fd, _READ_EVENTS)
    return poller.poll


def close_probe(probe: Optional[Probe]) -> None:
    """Release the probe's own descriptor (epoll), if it has one."""
    owner = getattr(probe, "__self__", None)
    close = getattr(owner, "close", None)
    if close is not None:
        with contextlib.suppress(OSError):
            close()


def shutdown_fd(fd: int) -> None:
    """Shut a connection's socket down in both directions, from any thread.

    A query blocked on it (in libpq, or in psycopg's wait loop) fails at once
    with "server closed the connection", so the connection can then be closed
    without waiting. The connection's own descriptor stays open: its owner
    closes it.
    """
    with contextlib.suppress(OSError, ValueError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def open_fds() -> Optional[FrozenSet[int]]:
    """The descriptors open in this process now (Linux), else None."""
    try:
        listed = {int(name) for name in os.listdir("/proc/self/fd")}
        # The listing includes the descriptor listdir() itself used, closed
        # since: the lowest free number now. Left in, a socket opened next
        # would get that number and pass for one that was already there.
        free = os.open(os.devnull, os.O_RDONLY)
        os.close(free)
    except (OSError, ValueError):
        return None
    listed.discard(free)
    return frozenset(listed)


def stray_sockets(before: FrozenSet[int], ports: Iterable[int]) -> List[int]:
    """Sockets opened since ``before`` that lead to one of ``ports`` (TCP, or a
    PostgreSQL unix socket of that port) or are still connecting: the
    half-made connection of a connect that was in flight when the process
    forked. Call it in the child.

    Only descriptors that appeared while that connect ran are candidates. In
    the child the threads that made them are gone, so such a socket has no
    owner; a socket of the forking thread itself is left alone unless it
    leads to the server's port.
    """
    now = open_fds()
    if now is None:
        return []
    wanted = set(ports)
    found: List[int] = []
    for fd in sorted(now - before):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.type != socket.SOCK_STREAM or sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN
            ):
                continue
            try:
                peer = sock.getpeername()
            except OSError as exc:
                if exc.errno == errno.ENOTCONN:  # still in the TCP handshake
                    found.append(fd)
                continue
        except OSError:
            continue
        finally:
            sock.close()
        if _leads_to(peer, wanted):
            found.append(fd)
    return found


def _leads_to(peer: Any, ports: Set[int]) -> bool:
    """Whether a socket's peer address is one of ``ports`` (TCP) or their unix socket."""
    if isinstance(peer, tuple):
        return len(peer) >= 2 and peer[1] in ports
    if isinstance(peer, str):
        return any(peer.endswith(f".s.PGSQL.{port}") for port in ports)
    return False
