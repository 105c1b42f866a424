"""A real PgBouncer in front of a :class:`~pgreservoir.testing.PostgresServer`: :class:`PgBouncer`.

It runs the PgBouncer program of the machine (see :func:`find_pgbouncer`) in a
private temporary directory, on a free loopback port, in ``session``,
``transaction`` or ``statement`` mode, and drives its admin console::

    with PgBouncer(server, pool_mode="transaction") as bouncer:
        conn = psycopg2.connect(bouncer.make_dsn(dsn))   # any DSN of the server
        bouncer.pause()          # PAUSE: queries wait until ...
        bouncer.resume()         # ... RESUME
        bouncer.reconnect()      # RECONNECT: server connections renewed when released
        bouncer.kill("mydb")     # KILL: drop the database's connections (then resume)
        bouncer.pools()          # SHOW POOLS, as dicts
        bouncer.restart()        # the process stops and starts again, same port
        bouncer.crash()          # SIGKILL

Every database name maps to the same database on the server (``* =`` in
``[databases]``), so a DSN of a test database goes through unchanged but for
host and port. Authentication is the server's: ``trust`` when it has no
password, else ``scram-sha-256`` with the superuser's password in the
``auth_file`` (which PgBouncer also uses to log in to the server). The
superuser is PgBouncer's admin and stats user.

As root, PgBouncer runs as the same unprivileged account as the server. A
watchdog stops it if the test process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import psycopg2
import psycopg2.extensions

from . import _cleanup
from ._account import _Account, _permitted, _server_account, _traversable
from ._binaries import _temp_root
from ._ports import _loopback_addresses, _pick_port, _release_port
from ._process import _server_env, _write_file
from ._watchdog import _Watchdog

if TYPE_CHECKING:
    from .server import PostgresServer

__all__ = ["POOL_MODES", "PgBouncer", "find_pgbouncer"]

#: PgBouncer's pooling modes.
POOL_MODES = ("session", "transaction", "statement")

_DEFAULT_LOCATIONS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer")
_INSTALL_LOCK = "pgreservoir-apt.lock"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

logger = logging.getLogger("pgreservoir.testing")


# ---------------------------------------------------------------------------
# Finding (and installing) the program
# ---------------------------------------------------------------------------


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _locate() -> Optional[str]:
    env = os.environ.get("PGBOUNCER")
    if env:
        if not _executable(env):
            raise RuntimeError(f"PGBOUNCER={env!r} is not an executable file")
        return env
    on_path = shutil.which("pgbouncer")
    if on_path:
        return on_path
    for candidate in _DEFAULT_LOCATIONS:
        if _executable(candidate):
            return candidate
    return None


def find_pgbouncer(*, install: bool = True) -> str:
    """Return the path of the ``pgbouncer`` program.

    Looked up in this order: ``$PGBOUNCER``; ``pgbouncer`` on ``$PATH``;
    ``/usr/sbin/pgbouncer`` (the Debian/Ubuntu package's place, not on a normal
    user's ``$PATH``), ``/usr/bin``, ``/usr/local/bin``. When none is found, we
    are root and ``apt-get`` exists, and ``install`` is true, the ``pgbouncer``
    OS package is installed (logged at WARNING; its system service is kept
    from starting and disabled, so nothing listens on port 6432 unasked).
    Otherwise :class:`RuntimeError` says how to install it.
    """
    found = _locate()
    if found is not None:
        return found
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        _apt_install_pgbouncer()
        found = _locate()
        if found is not None:
            return found
    raise RuntimeError(
        "no pgbouncer program found: install PgBouncer (Debian/Ubuntu: "
        "`sudo apt-get install pgbouncer`; macOS: `brew install pgbouncer`) or set "
        "PGBOUNCER to the path of the program"
    )


def _apt_install_pgbouncer() -> None:
    """Install the Debian package, once per machine even with concurrent test runs."""
    lock_path = os.path.join(tempfile.gettempdir(), _INSTALL_LOCK)
    with open(lock_path, "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _locate() is not None:
            return  # another process installed it while we waited
        logger.warning(
            "PgBouncer is missing: installing the 'pgbouncer' OS package with apt-get "
            "(it stays; its system service is kept from starting and disabled)"
        )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        policy = Path("/usr/sbin/policy-rc.d")
        created_policy = False
        if not policy.exists():
            # invoke-rc.d asks this script whether a package may start its
            # service; 101 means "no". Removed again below.
            policy.write_text("#!/bin/sh\n# pgreservoir.testing: installing pgbouncer\nexit 101\n")
            policy.chmod(0o755)
            created_policy = True
        try:
            command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "pgbouncer"]
            result = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                check=False,
                stdin=subprocess.DEVNULL,
                timeout=600,
            )
            if result.returncode != 0:  # stale or missing package lists: refresh, retry
                subprocess.run(
                    ["apt-get", "update", "-q"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                    stdin=subprocess.DEVNULL,
                    timeout=600,
                )
                result = subprocess.run(
                    command,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                    stdin=subprocess.DEVNULL,
                    timeout=600,
                )
            if result.returncode != 0:
                raise RuntimeError(
                    f"apt-get install pgbouncer failed (exit {result.returncode}):\n"
                    + (result.stdout + result.stderr).strip()[-4000:]
                )
        finally:
            if created_policy:
                with contextlib.suppress(OSError):
                    policy.unlink()
        _disable_system_service(env)


def _disable_system_service(env: Dict[str, str]) -> None:
    """Stop and disable the package's own PgBouncer service (port 6432), best effort."""
    commands: List[List[str]] = []
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        commands.append(["systemctl", "disable", "--now", "pgbouncer.service"])
    if shutil.which("update-rc.d") and os.path.exists("/etc/init.d/pgbouncer"):
        commands.append(["update-rc.d", "pgbouncer", "disable"])
    for command in commands:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                command,
                env=env,
                capture_output=True,
                check=False,
                stdin=subprocess.DEVNULL,
                timeout=60,
            )


def _version(program: str) -> str:
    output = subprocess.run(
        [program, "--version"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=30,
    ).stdout
    match = re.search(r"PgBouncer\s+(\d+(?:\.\d+)*)", output, re.IGNORECASE)
    if match is None:
        raise RuntimeError(f"cannot read PgBouncer's version from {program} --version: {output!r}")
    return match.group(1)


# ---------------------------------------------------------------------------
# The PgBouncer
# ---------------------------------------------------------------------------


class PgBouncer:
    """A PgBouncer process in front of ``server`` (a running :class:`PostgresServer`).

    Nothing happens until :meth:`start` (or ``with PgBouncer(server) as b:``).
    Keyword options:

    ``pool_mode``
        ``"session"`` (default), ``"transaction"`` or ``"statement"``.
    ``default_pool_size``, ``max_client_conn``
        PgBouncer's settings of those names (server connections per
        database/user pair, client connections in all).
    ``port``, ``host``
        where it listens; default a free port in 20000-32000 on the server's host.
    ``settings``
        more ``[pgbouncer]`` settings (``max_prepared_statements`` on 1.21+,
        ``server_reset_query``, ``query_wait_timeout`` ...), applied last.
    ``program``
        the ``pgbouncer`` program; default :func:`find_pgbouncer`.
    """

    def __init__(
        self,
        server: PostgresServer,
        *,
        pool_mode: str = "session",
        default_pool_size: int = 20,
        max_client_conn: int = 500,
        port: Optional[int] = None,
        host: Optional[str] = None,
        settings: Optional[Dict[str, str]] = None,
        program: Optional[str] = None,
    ) -> None:
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, not {pool_mode!r}")
        if default_pool_size < 1 or max_client_conn < 1:
            raise ValueError("default_pool_size and max_client_conn must be at least 1")
        for name in settings or {}:
            if not _SETTING_NAME.match(name):
                raise ValueError(f"invalid PgBouncer setting name {name!r}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"invalid port {port!r}")
        self._server = server
        self._host = host or server.host
        _loopback_addresses(self._host)  # validates
        self._pool_mode = pool_mode
        self._default_pool_size = default_pool_size
        self._max_client_conn = max_client_conn
        self._requested_port = port
        self._port: Optional[int] = port
        self._settings = dict(settings or {})
        self._requested_program = program

        self._lock = threading.RLock()
        self._owner_pid = os.getpid()
        self._program: Optional[str] = None
        self._account: Optional[_Account] = None
        self._basedir: Optional[str] = None
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._watchdog: Optional[_Watchdog] = None
        self._version: Optional[str] = None
        self._cleaned_up = False
        self._pending_pauses: List[Tuple[threading.Thread, Any]] = []

    # -- properties ---------------------------------------------------------

    @property
    def server(self) -> PostgresServer:
        """The server PgBouncer connects to."""
        return self._server

    @property
    def host(self) -> str:
        """The loopback address PgBouncer listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port; fixed once PgBouncer has started for the first time."""
        if self._port is None:
            raise RuntimeError("PgBouncer has not been started yet, so it has no port")
        return self._port

    @property
    def pool_mode(self) -> str:
        """``"session"``, ``"transaction"`` or ``"statement"``."""
        return self._pool_mode

    @property
    def program(self) -> str:
        """The ``pgbouncer`` program run."""
        if self._program is None:
            self._program = self._requested_program or find_pgbouncer()
        return self._program

    @property
    def version(self) -> str:
        """PgBouncer's version, e.g. ``"1.18.0"``."""
        if self._version is None:
            self._version = _version(self.program)
        return self._version

    @property
    def version_info(self) -> Tuple[int, ...]:
        """PgBouncer's version as a tuple of ints, e.g. ``(1, 18, 0)``."""
        return tuple(int(part) for part in self.version.split("."))

    @property
    def basedir(self) -> str:
        """The private temporary directory (configuration, log, pid and socket)."""
        if self._basedir is None:
            raise RuntimeError("PgBouncer has not been started yet")
        return self._basedir

    @property
    def logfile(self) -> str:
        """PgBouncer's log file."""
        return os.path.join(self.basedir, "pgbouncer.log")

    @property
    def config_file(self) -> str:
        """The ``pgbouncer.ini`` written for it."""
        return os.path.join(self.basedir, "pgbouncer.ini")

    @property
    def pid(self) -> Optional[int]:
        """The process id, or None when PgBouncer is not running."""
        process = self._process
        if process is None or process.poll() is not None:
            return None
        return process.pid

    @property
    def running(self) -> bool:
        """Whether the PgBouncer process is alive."""
        return self.pid is not None

    @property
    def dsn(self) -> str:
        """A DSN for the ``postgres`` database through PgBouncer."""
        return self.make_dsn()

    def make_dsn(self, dsn: str = "", **params: Any) -> str:
        """A libpq DSN through PgBouncer: ``dsn`` (default: the server's ``postgres``
        database) with host and port replaced, and ``params`` added or overriding
        (``None`` removes one)."""
        from psycopg2.extensions import make_dsn, parse_dsn

        values: Dict[str, Any] = dict(parse_dsn(dsn or self._server.dsn))
        values.update(params)
        values.update(host=self._host, port=self.port)
        result: str = make_dsn(**{k: v for k, v in values.items() if v is not None})
        return result

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> PgBouncer:
        """Start PgBouncer (writing its configuration on the first start) and wait until
        its admin console answers. Does nothing if it is already running. Returns
        ``self``."""
        with self._lock:
            if self._cleaned_up:
                raise RuntimeError("this PgBouncer has been cleaned up; create a new one")
            if self.running:
                return self
            if self._basedir is None:
                self._setup()
            attempts = 6 if self._requested_port is None else 1
            for attempt in range(attempts):
                if attempt > 0 or self._port is None:
                    if self._port is not None and self._requested_port is None:
                        _release_port(self._port)
                    self._port = _pick_port(self._host)
                self._write_config()
                error = self._launch()
                if error is None:
                    return self
                if attempt + 1 < attempts and "bind" in error.lower():
                    continue
                raise RuntimeError(
                    f"PgBouncer did not start ({self.program}); log {self.logfile}:\n{error}"
                )
            return self  # pragma: no cover - the loop returns or raises

    def stop(self) -> None:
        """Shut PgBouncer down at once (SIGTERM; SIGKILL if it lingers): its clients'
        connections close. :meth:`start` starts it again on the same port."""
        with self._lock:
            self._end_process(signal.SIGTERM)

    def restart(self) -> None:
        """:meth:`stop` then :meth:`start`, on the same port."""
        with self._lock:
            self.stop()
            self.start()

    def crash(self) -> None:
        """SIGKILL the PgBouncer process: every client connection breaks."""
        with self._lock:
            self._end_process(signal.SIGKILL)

    def cleanup(self) -> None:
        """Stop PgBouncer if it runs and remove its temporary directory. Safe to call more
        than once; afterwards the object cannot be started again."""
        with self._lock:
            if self._cleaned_up or os.getpid() != self._owner_pid:
                return
            try:
                self._end_pending_pauses()
                self._end_process(signal.SIGKILL)
            finally:
                self._cleaned_up = True
                if self._basedir is not None:
                    shutil.rmtree(self._basedir, ignore_errors=True)
                watchdog, self._watchdog = self._watchdog, None
                if watchdog is not None:
                    watchdog.stop()
                _cleanup._unregister(self)
                if self._requested_port is None and self._port is not None:
                    _release_port(self._port)

    def __enter__(self) -> PgBouncer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "cleaned up" if self._cleaned_up else ("running" if self.running else "stopped")
        where = f"{self._host}:{self._port}" if self._port is not None else "unstarted"
        return f"<PgBouncer {where} {self._pool_mode} {state}>"

    # -- the admin console --------------------------------------------------

    def connect_admin(self) -> psycopg2.extensions.connection:
        """A new connection to the admin console (database ``pgbouncer``), autocommit."""
        conn: psycopg2.extensions.connection = psycopg2.connect(
            self.make_dsn(dbname="pgbouncer", application_name=None, options=None)
        )
        conn.autocommit = True
        return conn

    def admin(self, command: str) -> List[Dict[str, Any]]:
        """Run one admin console command (``SHOW CLIENTS``, ``RELOAD`` ...); the rows it
        returned, as dicts (empty for commands that return none)."""
        with contextlib.closing(self.connect_admin()) as conn, conn.cursor() as cur:
            cur.execute(command)
            if cur.description is None:
                return []
            names = [column[0] for column in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def show(self, what: str) -> List[Dict[str, Any]]:
        """``SHOW <what>`` (``POOLS``, ``CLIENTS``, ``SERVERS``, ``STATS``, ``DATABASES``...)."""
        if not re.match(r"^[A-Za-z_]+$", what):
            raise ValueError(f"not a SHOW subject: {what!r}")
        return self.admin(f"SHOW {what.upper()}")

    def pools(self) -> List[Dict[str, Any]]:
        """``SHOW POOLS``: one dict per database/user pair (``cl_active``, ``cl_waiting``,
        ``sv_active``, ``sv_idle`` ...)."""
        return self.show("POOLS")

    def pause(self, database: Optional[str] = None, *, wait: bool = True) -> None:
        """``PAUSE [db]``: PgBouncer lets running work finish, then closes its server
        connections; new queries wait until :meth:`resume`. It returns once every server
        connection is released, which in session mode means once every client has
        disconnected: pass ``wait=False`` to send it and return at once."""
        command = "PAUSE" + (f" {_identifier(database)}" if database else "")
        if wait:
            self.admin(command)
            return
        conn = self.connect_admin()

        def send() -> None:
            with contextlib.suppress(psycopg2.Error), contextlib.closing(conn):
                conn.cursor().execute(command)

        thread = threading.Thread(target=send, name="pgbouncer-pause", daemon=True)
        thread.start()
        self._pending_pauses.append((thread, conn))

    def resume(self, database: Optional[str] = None) -> None:
        """``RESUME [db]``: undo :meth:`pause` (or :meth:`kill`). A ``PAUSE`` sent with
        ``wait=False`` that is still waiting is abandoned (its admin connection shut)."""
        self.admin("RESUME" + (f" {_identifier(database)}" if database else ""))
        self._end_pending_pauses()

    def _end_pending_pauses(self) -> None:
        pending, self._pending_pauses = self._pending_pauses, []
        for thread, conn in pending:
            thread.join(timeout=0.5)
            if thread.is_alive():  # PgBouncer never answers a PAUSE that was resumed
                with contextlib.suppress(OSError, psycopg2.Error):
                    socket.socket(fileno=os.dup(conn.fileno())).shutdown(socket.SHUT_RDWR)
                thread.join(timeout=10)

    def reconnect(self, database: Optional[str] = None) -> None:
        """``RECONNECT [db]``: close each server connection once it is released, so the
        next use opens a new one (PgBouncer 1.15+)."""
        self.admin("RECONNECT" + (f" {_identifier(database)}" if database else ""))

    def kill(self, database: str) -> None:
        """``KILL db``: drop every client and server connection of ``database`` at once.
        New clients of it then wait until :meth:`resume` (``RESUME db``)."""
        self.admin(f"KILL {_identifier(database)}")

    def reload(self) -> None:
        """``RELOAD``: re-read the configuration (after changing ``settings``)."""
        self._write_config()
        self.admin("RELOAD")

    def set(self, **settings: Any) -> None:
        """Change ``[pgbouncer]`` settings and apply them with :meth:`reload` (they are
        kept for later restarts)."""
        for name in settings:
            if not _SETTING_NAME.match(name):
                raise ValueError(f"invalid PgBouncer setting name {name!r}")
        self._settings.update({key: str(value) for key, value in settings.items()})
        self.reload()

    # -- internals ----------------------------------------------------------

    def _setup(self) -> None:
        program = self.program
        account = _server_account()
        if account is not None and not (
            _traversable(program, account) and _permitted(program, account, 5)
        ):
            raise RuntimeError(
                f"the account {account.name!r} PgBouncer runs as cannot execute {program}; "
                "install PgBouncer system-wide or set PGBOUNCER to a program it can reach"
            )
        self._account = account
        basedir = tempfile.mkdtemp(prefix="pgreservoir-bouncer-", dir=_temp_root(account))
        self._basedir = basedir
        _cleanup._register(self)
        os.chmod(basedir, 0o700)
        if account is not None:
            os.chown(basedir, account.uid, account.gid)
        self._watchdog = _Watchdog(
            {
                "basedir": basedir,
                "pidfile": os.path.join(basedir, "pgbouncer.pid"),
                "marker": self.config_file,
                "uid": None,
                "gid": None,
            }
        )
        server = self._server
        password = server.password
        users = f'"{server.user}" "{password or ""}"\n'
        _write_file(Path(basedir) / "userlist.txt", users, account)

    def _write_config(self) -> None:
        server = self._server
        basedir = self.basedir
        socket_dir = basedir if len(basedir) + 24 < 107 else ""
        settings: Dict[str, str] = {
            "listen_addr": self._host if self._host != "localhost" else "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": socket_dir,
            "auth_type": "scram-sha-256" if server.password is not None else "trust",
            "auth_file": os.path.join(basedir, "userlist.txt"),
            "admin_users": server.user,
            "stats_users": server.user,
            "pool_mode": self._pool_mode,
            "default_pool_size": str(self._default_pool_size),
            "max_client_conn": str(self._max_client_conn),
            "logfile": self.logfile,
            "pidfile": os.path.join(basedir, "pgbouncer.pid"),
            # JDBC, psycopg's and libpq's connect-time parameters PgBouncer would refuse.
            "ignore_startup_parameters": "extra_float_digits,options",
            "server_login_retry": "1",
        }
        settings.update(self._settings)
        server_host = server.host if server.host != "localhost" else "127.0.0.1"
        text = (
            "; written by pgreservoir.testing\n[databases]\n"
            f"* = host={server_host} port={server.port}\n\n[pgbouncer]\n"
            + "".join(f"{name} = {_ini_value(value)}\n" for name, value in settings.items())
        )
        _write_file(Path(self.config_file), text, self._account)

    def _launch(self) -> Optional[str]:
        """Start the process; None once it serves, else the log text explaining why not."""
        offset = _size(self.logfile)
        kwargs: Dict[str, Any] = self._account.popen_kwargs() if self._account else {}
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.basedir, "pgbouncer.pid"))
        self._process = subprocess.Popen(
            [self.program, self.config_file],
            cwd=self.basedir,
            env=_server_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            **kwargs,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return _read_from(self.logfile, offset) or "PgBouncer exited at once"
            with contextlib.suppress(psycopg2.Error):
                self.admin("SHOW VERSION")
                return None
            time.sleep(0.02)
        self._end_process(signal.SIGKILL)
        return f"PgBouncer did not answer within {_START_TIMEOUT} s\n" + _read_from(
            self.logfile, offset
        )

    def _end_process(self, signum: int) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGCONT)
                os.kill(process.pid, signum)
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait()
        # PgBouncer removes its pid file only when it shuts down cleanly.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.basedir, "pgbouncer.pid"))

    def _forget_after_fork(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.forget()
        self._process = None


def _identifier(name: str) -> str:
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_$-]*$", name):
        raise ValueError(f"not a database name the admin console accepts: {name!r}")
    return name


def _ini_value(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"a PgBouncer setting cannot span lines: {value!r}")
    return value


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")[-4000:]
    except OSError:
        return ""
