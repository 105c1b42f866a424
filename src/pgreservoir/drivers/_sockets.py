"""Socket-level helpers shared by the drivers: the liveness probe, shutting a
connection's socket from another thread, and fork hygiene.

Everything here works for any descriptor number: ``select()`` rejects
descriptors >= 1024 (a busy server process easily has that many files open),
so it is never used.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import select
import socket
import stat
from typing import Any, Callable, FrozenSet, Iterable, List, Optional, Set

__all__ = ["Probe", "make_probe", "open_fds", "shutdown_fd", "stray_sockets"]

#: ``probe(0)`` returns something true when the socket has something to read,
#: which on an idle connection means the server sent a message (a FATAL
#: before it hung up, a notification) or hung up (EOF, reset). Only ever
#: called with a zero timeout: it must not block.
Probe = Callable[[int], Any]

_READ_EVENTS = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)


def _epoll_wait_keeping_the_gil() -> Optional[Callable[..., int]]:
    """libc's ``epoll_wait`` called through ctypes without releasing the GIL.

    ``select.epoll.poll()`` releases the GIL around the system call, even
    with a zero timeout. Under contention the thread then queues to take it
    back behind every runnable thread (up to the 5 ms switch interval each
    time), on the hot path of every hand-out. The probe never blocks, so it
    has no reason to let go of the GIL. None where ctypes or the symbol is
    missing: the probe falls back to ``select.epoll``.
    """
    try:
        import ctypes

        wait: Callable[..., int] = ctypes.PyDLL(None).epoll_wait
    except (ImportError, OSError, AttributeError):
        return None
    wait.restype = ctypes.c_int  # type: ignore[attr-defined]
    return wait


_EPOLL_WAIT = _epoll_wait_keeping_the_gil() if hasattr(select, "epoll") else None

#: Room for one ``struct epoll_event`` (12 bytes on x86-64, 16 elsewhere).
_EVENT_SIZE = 16


def make_probe(fd: int) -> Probe:
    """A zero-round-trip readability probe of ``fd``: one system call per use.

    An epoll instance per connection where available (about 0.3 us a probe,
    measured, half the cost of a poll object and a quarter of select()),
    waited on without releasing the GIL when ctypes allows; else a poll
    object. Either holds a descriptor until it is closed or collected: see
    :func:`close_probe`.
    """
    if hasattr(select, "epoll"):
        ep = select.epoll(1)
        ep.register(fd, select.EPOLLIN | select.EPOLLPRI | select.EPOLLRDHUP)
        if _EPOLL_WAIT is None:
            return ep.poll
        import ctypes

        # probe(0) -> epoll_wait(epfd, events, 1, 0): the number of ready
        # events (0: nothing to read; -1 only if the epoll was closed, which
        # reads as "look closer", never as "fine").
        probe = functools.partial(
            _EPOLL_WAIT, ep.fileno(), ctypes.create_string_buffer(_EVENT_SIZE), 1
        )
        probe.epoll = ep  # type: ignore[attr-defined]  # owns the descriptor
        return probe
    poller = select.poll()
    poller.register(fd, _READ_EVENTS)
    return poller.poll


def close_probe(probe: Optional[Probe]) -> None:
    """Release the probe's own descriptor (epoll), if it has one."""
    owner = getattr(probe, "epoll", None) or getattr(probe, "__self__", None)
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
