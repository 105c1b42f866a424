"""An in-process TCP proxy for fault injection: :class:`TcpProxy`.

Public as ``pgreservoir.testing.TcpProxy``. Put it between a pool and a
PostgreSQL server and switch its mode while the pool runs::

    from pgreservoir.testing import PostgresServer, TcpProxy

    with PostgresServer() as server, TcpProxy.for_server(server) as proxy:
        pool = ConnectionPool(proxy.dsn_for(server), connect_timeout=2)
        proxy.set_mode("blackhole")   # nothing flows; new connects hang
        proxy.set_mode("refuse")      # new connects: "Connection refused"
        proxy.set_mode("reset")       # every connection reset (RST), new ones refused
        proxy.set_mode("pass")        # back to normal, on the same port
        proxy.set_latency(0.05)       # every chunk delayed by 50 ms

Modes:

``pass``
    Forward bytes both ways (after ``latency`` seconds, if set).
``blackhole``
    Accept connections but forward nothing, in either direction: reads stop and
    new connections are held without reaching the server. It models a network
    that silently drops packets for a while: nothing is lost, and when the mode
    goes back to ``pass`` held bytes flow again (as TCP retransmissions would
    deliver them). Note: the proxy's kernel still acknowledges what the client
    sends, so ``tcp_user_timeout`` and keepalives on the client cannot fire; a
    client notices only through its own timeouts (``connect_timeout`` for a
    connect, an application timeout for a query).
``refuse``
    The listening socket is closed: new connects fail with "Connection
    refused"; established connections keep forwarding.
``reset``
    Every established connection is reset (``SO_LINGER`` 0, so both the client
    and the server get a TCP RST) and new connects are refused, until the mode
    changes.

One daemon thread per proxy runs a ``selectors`` loop; mode changes are
applied by that thread and :meth:`TcpProxy.set_mode` returns only once they
took effect. Resources are bounded: at most ``max_connections`` proxied
connections (more are reset at once) and ``buffer_size`` bytes queued per
direction of each (reading pauses beyond it).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import ipaddress
import selectors
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple

from ._ports import _pick_port, _release_port

if TYPE_CHECKING:
    from .server import PostgresServer

__all__ = ["MODES", "TcpProxy"]

#: The proxy's modes (see the module documentation).
MODES = ("pass", "blackhole", "refuse", "reset")

_FORWARDING = ("pass", "refuse")  # modes in which established connections forward
_LISTENING = ("pass", "blackhole")  # modes in which the listening socket is open
_CHUNK = 65536
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
_COMMAND_TIMEOUT = 30.0  # how long a caller waits for the proxy thread to respond
_PORT_ATTEMPTS = 50


def _loopback(host: str, what: str) -> Tuple[int, str]:
    """(family, address) of a loopback host; anything else is refused."""
    if host == "localhost":
        return socket.AF_INET, "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{what} must be 'localhost' or a loopback IP address, not {host!r}"
        ) from None
    if not address.is_loopback:
        raise ValueError(f"{what} must be a loopback address, not {host!r}")
    return (socket.AF_INET6 if address.version == 6 else socket.AF_INET), host


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN, never raising."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):
        sock.close()


class _Flow:
    """Bytes travelling one way through one proxied connection."""

    __slots__ = ("dst", "eof", "queue", "queued", "shut", "src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        # (due time, bytes): forwarded once due (latency), oldest first.
        self.queue: Deque[Tuple[float, bytes]] = collections.deque()
        self.queued = 0  # bytes in queue
        self.eof = False  # src has sent EOF: nothing more to read
        self.shut = False  # EOF passed on to dst (shutdown(SHUT_WR))

    def due(self, now: float) -> bool:
        return bool(self.queue) and self.queue[0][0] <= now


class _Link:
    """One client connection and (once the proxy forwards) its server connection."""

    __slots__ = ("client", "down", "server", "up")

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.server: Optional[socket.socket] = None  # None while held (blackhole)
        self.up: Optional[_Flow] = None  # client -> server
        self.down: Optional[_Flow] = None  # server -> client

    def sockets(self) -> List[socket.socket]:
        return [self.client] if self.server is None else [self.client, self.server]


# Selector key data: what a registered socket is.
_LISTENER = "listener"
_WAKE = "wake"


class TcpProxy:
    """A TCP proxy on a loopback port, forwarding to ``target_host:target_port``,
    whose behaviour (``pass``, ``blackhole``, ``refuse``, ``reset``, ``latency``)
    changes at run time. See :mod:`pgreservoir.testing.proxy` for the modes.

    ``port`` defaults to a free port in 20000-32000 (below the Linux ephemeral
    range, so nothing else takes it while the listener is closed in ``refuse``
    mode). The proxy starts at once; :meth:`close` (or leaving a ``with`` block)
    stops its thread and closes every socket.
    """

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        *,
        host: str = "127.0.0.1",
        port: Optional[int] = None,
        mode: str = "pass",
        latency: float = 0.0,
        max_connections: int = 256,
        buffer_size: int = 256 * 1024,
    ) -> None:
        if not 0 < target_port < 65536:
            raise ValueError(f"target_port must be in 1-65535, got {target_port!r}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1-65535 or None, got {port!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self._family, self._host = _loopback(host, "host")
        self._target_family, self._target_host = _loopback(target_host, "target_host")
        self._target_port = target_port
        self._latency = self._check_latency(latency)
        self._max_connections = max_connections
        self._buffer_size = buffer_size
        self._mode = mode

        self._selector = selectors.DefaultSelector()
        self._listener: Optional[socket.socket] = None
        self._links: Dict[socket.socket, _Link] = {}  # both sockets of every link
        self._interest: Dict[socket.socket, int] = {}  # events registered per socket
        # Counters, written by the proxy thread only.
        self._accepted = 0
        self._rejected = 0
        self._resets = 0
        self._bytes = [0, 0]  # forwarded [client->server, server->client]

        self._lock = threading.Lock()  # guards _commands and _stopped
        self._commands: Deque[Tuple[Callable[[], Any], threading.Event, Dict[str, Any]]]
        self._commands = collections.deque()
        self._stopped = False
        self._stopping = False  # set by the proxy thread itself
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)

        self._registered_port: Optional[int] = None
        try:
            self._port = self._bind_port(port)
            if mode not in _LISTENING:
                self._close_listener()
        except BaseException:
            self._release_resources()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"TcpProxy-{self._port}", daemon=True
        )
        self._thread.start()

    @classmethod
    def for_server(cls, server: PostgresServer, **kwargs: Any) -> TcpProxy:
        """A proxy in front of a running :class:`~pgreservoir.testing.PostgresServer`."""
        return cls(server.port, server.host, **kwargs)

    # -- properties ---------------------------------------------------------

    @property
    def host(self) -> str:
        """The loopback address the proxy listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The port the proxy listens on (kept across ``refuse``/``reset``)."""
        return self._port

    @property
    def target(self) -> Tuple[str, int]:
        """Where connections are forwarded: ``(host, port)``."""
        return self._target_host, self._target_port

    @property
    def mode(self) -> str:
        """The current mode."""
        return self._mode

    @property
    def latency(self) -> float:
        """Seconds each chunk of data is held before it is forwarded."""
        return self._latency

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._stopped

    def stats(self) -> Dict[str, int]:
        """Counters: ``active`` connections, ``accepted``, ``rejected`` (over
        ``max_connections``), ``resets`` (connections reset by the proxy),
        ``bytes_up`` (client to server) and ``bytes_down``."""
        return {
            "active": len({id(link) for link in list(self._links.values())}),
            "accepted": self._accepted,
            "rejected": self._rejected,
            "resets": self._resets,
            "bytes_up": self._bytes[0],
            "bytes_down": self._bytes[1],
        }

    # -- DSNs ---------------------------------------------------------------

    def dsn_for(self, server: PostgresServer, dbname: Optional[str] = None, **params: Any) -> str:
        """``server.make_dsn(dbname, **params)`` with host and port pointing at the proxy."""
        params.update(host=self._host, port=self._port)
        return server.make_dsn(dbname, **params)

    def make_dsn(self, dsn: str = "", **params: Any) -> str:
        """Any libpq DSN (or keywords) rewritten to connect through the proxy."""
        from psycopg2.extensions import make_dsn

        params.update(host=self._host, port=self._port)
        return make_dsn(dsn, **params)

    # -- control ------------------------------------------------------------

    def set_mode(self, mode: str, *, latency: Optional[float] = None) -> None:
        """Switch to ``mode`` (and ``latency``, if given); returns once applied.

        Raises ``RuntimeError`` if the port cannot be listened on again (after
        ``refuse``/``reset``) or the proxy is closed.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        seconds = None if latency is None else self._check_latency(latency)
        self._call(lambda: self._apply_mode(mode, seconds))

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk read from now on by ``seconds`` (0 turns it off)."""
        value = self._check_latency(seconds)
        self._call(lambda: self._apply_mode(self._mode, value))

    def reset_all(self) -> int:
        """Reset (RST) every established connection, both ends; the mode does not
        change, so new connections are served as before. Returns how many."""
        result: int = self._call(self._reset_links)
        return result

    def close(self) -> None:
        """Stop the proxy: close every socket and end its thread. Idempotent."""
        with self._lock:
            if self._stopped:
                return
        with contextlib.suppress(RuntimeError):
            self._call(self._request_stop)
        self._thread.join(_COMMAND_TIMEOUT)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._stopped else self._mode
        return (
            f"<TcpProxy {self._host}:{self._port} -> {self._target_host}:{self._target_port}"
            f" {state} latency={self._latency:g}s>"
        )

    # -- internals: calls into the proxy thread ------------------------------

    @staticmethod
    def _check_latency(seconds: Any) -> float:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"latency must be a number of seconds, got {seconds!r}")
        if not 0 <= seconds < 3600:
            raise ValueError(f"latency must be >= 0 and < 3600 seconds, got {seconds!r}")
        return float(seconds)

    def _call(self, func: Callable[[], Any]) -> Any:
        """Run ``func`` in the proxy thread and return its result (or raise its error)."""
        done = threading.Event()
        box: Dict[str, Any] = {}
        with self._lock:
            if self._stopped:
                raise RuntimeError(f"{self!r} is closed")
            self._commands.append((func, done, box))
        with contextlib.suppress(OSError):  # full pipe: a wake-up is pending anyway
            self._wake_w.send(b"\0")
        if not done.wait(_COMMAND_TIMEOUT):
            raise RuntimeError(f"{self!r}: the proxy thread did not respond")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                func, done, box = self._commands.popleft()
            try:
                box["result"] = func()
            except BaseException as exc:  # handed to the caller
                box["error"] = exc
            done.set()

    def _request_stop(self) -> None:
        self._stopping = True

    # -- internals: the proxy thread ------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, events in self._selector.select(self._next_timeout()):
                    self._on_ready(key.fileobj, key.data, events)  # type: ignore[arg-type]
                self._run_commands()
                if self._stopping:
                    break
                self._pump()
                self._update_interest()
        finally:
            with self._lock:
                self._stopped = True
                pending = list(self._commands)
                self._commands.clear()
            for _func, done, box in pending:
                box["error"] = RuntimeError(f"{self!r} is closed")
                done.set()
            for link in self._all_links():
                self._drop(link, reset=False)
            self._release_resources()

    def _release_resources(self) -> None:
        self._close_listener()
        for sock in (self._wake_r, self._wake_w):
            with contextlib.suppress(Exception):
                self._selector.unregister(sock)
            sock.close()
        self._selector.close()
        self._release_port()

    def _all_links(self) -> List[_Link]:
        """Every link once (the map holds each under both of its sockets)."""
        return list({id(link): link for link in self._links.values()}.values())

    def _next_timeout(self) -> Optional[float]:
        """Until the next delayed chunk falls due (None: wait for events only).

        Chunks already due are written when their socket is writable, so only
        future ones set a timeout (a due chunk on a full socket must not spin).
        """
        if self._mode not in _FORWARDING:
            return None
        now = time.monotonic()
        soonest: Optional[float] = None
        for link in self._all_links():
            for flow in (link.up, link.down):
                if flow is not None and flow.queue:
                    due = flow.queue[0][0]
                    if due > now and (soonest is None or due < soonest):
                        soonest = due
        return None if soonest is None else soonest - now

    def _on_ready(self, sock: socket.socket, data: Any, events: int) -> None:
        if data == _WAKE:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass
            return
        if data == _LISTENER:
            self._accept()
            return
        link = self._links.get(sock)
        if link is None:
            return
        if sock is link.server and link.up is None:
            self._finish_connect(link)
            return
        if events & selectors.EVENT_READ:
            self._read(link, sock)

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                client, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._all_links()) >= self._max_connections:
                self._rejected += 1
                _reset(client)
                continue
            self._accepted += 1
            client.setblocking(False)
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client)
            self._links[client] = link
            if self._mode in _FORWARDING:
                self._connect_upstream(link)
            # else: blackhole -- held, connected upstream when forwarding resumes

    def _connect_upstream(self, link: _Link) -> None:
        server = socket.socket(self._target_family, socket.SOCK_STREAM)
        server.setblocking(False)
        with contextlib.suppress(OSError):
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = server.connect_ex((self._target_host, self._target_port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            server.close()
            self._drop(link, reset=False)  # like a server that hangs up at once
            return
        link.server = server
        self._links[server] = link
        if err == 0:
            self._connected(link)

    def _finish_connect(self, link: _Link) -> None:
        assert link.server is not None
        err = link.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err not in (0, errno.EINPROGRESS, errno.EALREADY):
            self._drop(link, reset=False)
            return
        try:
            link.server.getpeername()
        except OSError:
            return  # still connecting
        self._connected(link)

    def _connected(self, link: _Link) -> None:
        assert link.server is not None
        link.up = _Flow(link.client, link.server)
        link.down = _Flow(link.server, link.client)

    def _read(self, link: _Link, sock: socket.socket) -> None:
        flow = link.up if sock is link.client else link.down
        if flow is None:
            return
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(link, reset=True)  # reset by the peer: pass it on
            return
        if not data:
            flow.eof = True
            return
        flow.queue.append((time.monotonic() + self._latency, data))
        flow.queued += len(data)

    def _pump(self) -> None:
        """Forward what is due; pass EOFs on; close links finished both ways."""
        if self._mode not in _FORWARDING:
            return
        now = time.monotonic()
        for link in self._all_links():
            if link.up is None or link.down is None:
                continue
            for index, flow in enumerate((link.up, link.down)):
                while flow.due(now):
                    _due, chunk = flow.queue[0]
                    try:
                        sent = flow.dst.send(chunk)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        self._drop(link, reset=True)
                        break
                    self._bytes[index] += sent
                    flow.queued -= sent
                    if sent < len(chunk):
                        flow.queue[0] = (_due, chunk[sent:])
                        break
                    flow.queue.popleft()
                if link.client not in self._links:
                    break  # dropped above
                if flow.eof and not flow.queue and not flow.shut:
                    flow.shut = True
                    with contextlib.suppress(OSError):
                        flow.dst.shutdown(socket.SHUT_WR)
            if link.client in self._links and link.up.shut and link.down.shut:
                self._drop(link, reset=False)

    def _update_interest(self) -> None:
        forwarding = self._mode in _FORWARDING
        now = time.monotonic()
        for sock, link in list(self._links.items()):
            events = 0
            up, down = link.up, link.down
            if up is None or down is None:
                if forwarding and sock is link.server:
                    events = selectors.EVENT_WRITE  # connect in progress
            elif forwarding:
                reading, writing = (up, down) if sock is link.client else (down, up)
                if not reading.eof and reading.queued < self._buffer_size:
                    events |= selectors.EVENT_READ
                if writing.due(now):
                    events |= selectors.EVENT_WRITE
            self._set_interest(sock, events)

    def _set_interest(self, sock: socket.socket, events: int) -> None:
        current = self._interest.get(sock, 0)
        if events == current:
            return
        if events == 0:
            self._selector.unregister(sock)
            del self._interest[sock]
        elif current == 0:
            self._selector.register(sock, events)
            self._interest[sock] = events
        else:
            self._selector.modify(sock, events)
            self._interest[sock] = events

    def _drop(self, link: _Link, *, reset: bool) -> None:
        """Close both ends of a link (with RST if ``reset``)."""
        for sock in link.sockets():
            self._links.pop(sock, None)
            if self._interest.pop(sock, 0):
                with contextlib.suppress(Exception):
                    self._selector.unregister(sock)
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()
        if reset:
            self._resets += 1

    def _reset_links(self) -> int:
        links = self._all_links()
        for link in links:
            self._drop(link, reset=True)
        return len(links)

    def _apply_mode(self, mode: str, latency: Optional[float]) -> None:
        if latency is not None:
            self._latency = latency
        if mode in _LISTENING:
            if self._listener is None:
                self._open_listener(self._port)
        else:
            self._close_listener()
        if mode == "reset":
            self._reset_links()
        self._mode = mode
        if mode in _FORWARDING:
            for link in self._all_links():
                if link.server is None:  # held while black-holed
                    self._connect_upstream(link)

    # -- internals: the listening socket ------------------------------------

    def _open_listener(self, port: int) -> None:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise RuntimeError(f"TcpProxy cannot listen on {self._host}:{port}: {exc}") from exc
        self._selector.register(sock, selectors.EVENT_READ, _LISTENER)
        self._listener = sock

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(Exception):
                self._selector.unregister(sock)
            sock.close()

    def _bind_port(self, port: Optional[int]) -> int:
        if port is not None:
            self._open_listener(port)
            return port
        error: Optional[BaseException] = None
        for _ in range(_PORT_ATTEMPTS):
            candidate = _pick_port(self._host)
            self._registered_port = candidate
            try:
                self._open_listener(candidate)
            except RuntimeError as exc:
                error = exc
                self._release_port()
                continue
            return candidate
        raise RuntimeError(f"TcpProxy found no free port: {error}")

    def _release_port(self) -> None:
        port, self._registered_port = self._registered_port, None
        if port is not None:
            _release_port(port)
