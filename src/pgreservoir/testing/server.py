"""A throwaway PostgreSQL server: :class:`PostgresServer`.

Each server gets its own temporary directory, listens only on a loopback
address on a free port below the Linux ephemeral range, and is removed again
when you are done -- even if the test process is killed (a watchdog process,
:mod:`._watchdog`, notices the death of its owner and stops the server).

To make creating many servers cheap, a freshly initdb'ed data directory is
cached under the system temporary directory (``pgreservoir-tmpl-*``) and
copied for every new password-less server.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from . import _cleanup
from ._account import _Account, _server_account
from ._binaries import (
    _has_server_programs,
    _parse_version,
    _relocate_install,
    _temp_root,
    _trusted_cache_dir,
    _usable_bindir,
    find_bindir,
)
from ._ports import _loopback_addresses, _pick_port, _release_port
from ._process import _check, _conf_quote, _copy_tree, _dsn_quote, _run, _wait_for, _write_file
from ._watchdog import _Watchdog

__all__ = ["PostgresServer", "start_server"]

_STOP_MODES = ("smart", "fast", "immediate")
_PG_CTL_TIMEOUT = 60  # seconds pg_ctl waits for start/stop
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the NUL
_TEMPLATE_FORMAT = "1"  # bump when the template layout changes
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_S = TypeVar("_S", bound="PostgresServer")
_BIND_FAILURE = re.compile(
    r"could not bind|could not create any TCP/IP sockets|Address already in use",
)


def _read_postmaster_pid(datadir: str) -> Optional[int]:
    try:
        with open(os.path.join(datadir, "postmaster.pid"), encoding="utf-8") as handle:
            return int(handle.readline().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def _children(pid: int) -> List[int]:
    """Process ids whose parent is ``pid`` (read from /proc; empty where there is none)."""
    found: List[int] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _is_postmaster(pid: int, datadir: str) -> bool:
    """Whether ``pid`` is alive and (where /proc exists) a postgres serving ``datadir``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True
    try:
        if (proc / "stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
        return datadir.encode() in (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False


class PostgresServer:
    """A disposable PostgreSQL server in a private temporary directory.

    Nothing happens until :meth:`start` (or ``with PostgresServer() as server:``).
    All keyword options:

    ``bindir``
        directory of ``postgres``/``initdb``/``pg_ctl``; default :func:`find_bindir`.
    ``port``
        TCP port; default: a free port in 20000-32000 chosen at the first start
        (and kept across restarts).
    ``host``
        loopback address to listen on (``127.0.0.1``, ``::1`` or ``localhost``).
    ``user``
        name of the superuser role created by initdb.
    ``password``
        if given, TCP connections use ``scram-sha-256`` and the superuser gets this
        password; otherwise authentication is ``trust``.
    ``settings``
        extra ``postgresql.conf`` settings, applied last.
    ``max_connections``
        the server's ``max_connections``.
    ``use_template``
        copy a cached initdb'ed data directory instead of running initdb
        (only for password-less servers).
    """

    def __init__(
        self,
        *,
        bindir: Optional[str] = None,
        port: Optional[int] = None,
        host: str = "127.0.0.1",
        user: str = "postgres",
        password: Optional[str] = None,
        settings: Optional[Dict[str, str]] = None,
        max_connections: int = 200,
        use_template: bool = True,
    ) -> None:
        _loopback_addresses(host)  # validates
        for name in settings or {}:
            if not _SETTING_NAME.match(name):
                raise ValueError(f"invalid setting name {name!r}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"invalid port {port!r}")
        self._requested_bindir = bindir
        self._requested_port = port
        self._host = host
        self._user = user
        self._password = password
        self._settings = dict(settings or {})
        self._max_connections = max_connections
        self._use_template = use_template and password is None

        self._lock = threading.RLock()
        self._owner_pid = os.getpid()
        self._account: Optional[_Account] = None
        self._bindir: Optional[str] = None
        self._basedir: Optional[str] = None
        self._port: Optional[int] = port
        self._version: Optional[int] = None
        self._paused = False
        self._cleaned_up = False
        self._watchdog: Optional[_Watchdog] = None
        self._synchronous_standbys: List[str] = []

    # -- properties ---------------------------------------------------------

    @property
    def host(self) -> str:
        """The loopback address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port; fixed once the server has started for the first time."""
        if self._port is None:
            raise RuntimeError("the server has not been started yet, so it has no port")
        return self._port

    @property
    def user(self) -> str:
        """Name of the superuser role."""
        return self._user

    @property
    def password(self) -> Optional[str]:
        """The superuser's password, or None when authentication is ``trust``."""
        return self._password

    @property
    def bindir(self) -> str:
        """The directory the server programs are run from (maybe a relocated copy)."""
        if self._bindir is None:
            return self._requested_bindir or find_bindir()
        return self._bindir

    @property
    def basedir(self) -> str:
        """The private temporary directory (data dir, log file, Unix socket)."""
        if self._basedir is None:
            raise RuntimeError("the server has not been started yet")
        return self._basedir

    @property
    def datadir(self) -> str:
        """The data directory (``PGDATA``)."""
        return os.path.join(self.basedir, "data")

    @property
    def logfile(self) -> str:
        """The server log file."""
        return os.path.join(self.basedir, "server.log")

    @property
    def version(self) -> int:
        """The server version as ``server_version_num`` (e.g. ``150018`` for 15.18)."""
        if self._version is None:
            output = subprocess.run(
                [os.path.join(self.bindir, "postgres"), "--version"],
                capture_output=True,
                text=True,
                check=True,
                stdin=subprocess.DEVNULL,
                timeout=30,
            ).stdout
            self._version = _parse_version(output)
        return self._version

    @property
    def running(self) -> bool:
        """Whether the postmaster is alive (a paused server counts as running)."""
        return self.pid is not None

    @property
    def paused(self) -> bool:
        """Whether the postmaster is currently stopped by :meth:`pause`."""
        return self._paused

    @property
    def pid(self) -> Optional[int]:
        """The postmaster's process id, or None when the server is not running."""
        if self._basedir is None or self._cleaned_up:
            return None
        pid = _read_postmaster_pid(self.datadir)
        if pid is None or not _is_postmaster(pid, self.datadir):
            return None
        return pid

    @property
    def dsn(self) -> str:
        """libpq ``key=value`` connection string for the ``postgres`` database."""
        return self.make_dsn()

    def make_dsn(self, dbname: Optional[str] = None, **params: Any) -> str:
        """Return a libpq DSN for ``dbname`` (default ``postgres``); ``params`` are added
        or override the defaults (``None`` removes one)."""
        values: Dict[str, Any] = {
            "host": self._host,
            "port": self.port,
            "user": self._user,
            "dbname": dbname or "postgres",
            "password": self._password,
            "connect_timeout": 10,
        }
        values.update(params)
        return " ".join(
            f"{key}={_dsn_quote(str(value))}" for key, value in values.items() if value is not None
        )

    # -- lifecycle ----------------------------------------------------------

    def start(self: _S) -> _S:
        """Start the server (initdb'ing it on the first start) and wait until it accepts
        connections. Does nothing if it is already running. Returns ``self``."""
        with self._lock:
            if self._cleaned_up:
                raise RuntimeError("this PostgresServer has been cleaned up; create a new one")
            if self.running:
                return self
            first_start = self._basedir is None
            if first_start:
                self._setup()
            attempts = 6 if first_start and self._requested_port is None else 1
            for attempt in range(attempts):
                if self._port is None or (attempt > 0):
                    self._port = _pick_port(self._host)
                self._write_runtime_conf()
                log_offset = self._log_size()
                result = _run(
                    [
                        os.path.join(self.bindir, "pg_ctl"),
                        "start",
                        "-w",
                        "-t",
                        str(_PG_CTL_TIMEOUT),
                        "-D",
                        self.datadir,
                        "-l",
                        self.logfile,
                    ],
                    self._account,
                    cwd=self.basedir,
                    timeout=_PG_CTL_TIMEOUT + 30,
                )
                if result.returncode == 0:
                    break
                log = self._log_since(log_offset)
                if attempt + 1 < attempts and _BIND_FAILURE.search(log):
                    continue
                _check(result, "pg_ctl start", f"server log {self.logfile}:\n{log[-4000:]}")
            self._paused = False
            with contextlib.closing(self.connect()) as conn:
                self._version = conn.server_version
            return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode`` is ``"smart"`` (wait for clients to disconnect),
        ``"fast"`` (disconnect them) or ``"immediate"`` (crash stop). The data is kept
        and :meth:`start` may be called again. Does nothing if it is not running."""
        if mode not in _STOP_MODES:
            raise ValueError(f"mode must be one of {_STOP_MODES}, not {mode!r}")
        with self._lock:
            if not self.running:
                self._paused = False
                return
            if self._paused:
                self.resume()
            result = _run(
                [
                    os.path.join(self.bindir, "pg_ctl"),
                    "stop",
                    "-w",
                    "-t",
                    str(_PG_CTL_TIMEOUT),
                    "-D",
                    self.datadir,
                    "-m",
                    mode,
                ],
                self._account,
                cwd=self.basedir,
                timeout=_PG_CTL_TIMEOUT + 30,
            )
            _check(result, "pg_ctl stop")

    def restart(self, mode: str = "fast") -> None:
        """Stop the server with ``mode`` (see :meth:`stop`) and start it again on the same port."""
        with self._lock:
            self.stop(mode)
            self.start()

    def pause(self) -> None:
        """Freeze the postmaster with SIGSTOP: new connections hang (connected
        backends keep working) until :meth:`resume`. The helpers that open an admin
        connection (:meth:`connect`, :meth:`terminate_backends`, ...) therefore time
        out while paused; :meth:`stop`, :meth:`restart` and :meth:`cleanup` resume first."""
        with self._lock:
            pid = self._require_pid()
            os.kill(pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Let a postmaster frozen by :meth:`pause` continue (SIGCONT)."""
        with self._lock:
            pid = self._require_pid()
            os.kill(pid, signal.SIGCONT)
            self._paused = False

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and every process it started, as a
        machine dying would, and wait until they are gone. Its connections break
        without a goodbye; :meth:`start` brings it back (with crash recovery)."""
        with self._lock:
            pid = self.pid
            if pid is None:
                self._paused = False
                return
            family = [pid, *_children(pid)]
            for member in family:
                with contextlib.suppress(OSError):
                    os.kill(member, signal.SIGKILL)
            self._paused = False
            if not _wait_for(lambda: not any(_alive(member) for member in family), 30):
                raise RuntimeError(f"the server's processes {family} survived SIGKILL")
            # Where nobody reaps orphans (some containers' init), the dead postmaster
            # stays a zombie that kill(pid, 0) still finds, and a new postmaster
            # would refuse to start next to its lock file: the family is dead, so
            # the lock file is stale.
            socket_file = os.path.join(self.basedir, f".s.PGSQL.{self.port}")
            for stale in (os.path.join(self.datadir, "postmaster.pid"), socket_file + ".lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)

    # -- settings -----------------------------------------------------------

    def alter_system(self, **settings: Optional[str]) -> None:
        """``ALTER SYSTEM SET name = value`` for each keyword (``None``: ``RESET``), then
        reload the configuration. Settings that need a restart take effect at the next
        :meth:`restart`."""
        with self._admin() as cur:
            for name, value in settings.items():
                if not _SETTING_NAME.match(name):
                    raise ValueError(f"invalid setting name {name!r}")
                if value is None:
                    cur.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
                else:
                    cur.execute(
                        sql.SQL("ALTER SYSTEM SET {} = %s").format(sql.Identifier(name)),
                        (value,),
                    )
            cur.execute("SELECT pg_reload_conf()")

    def fence(self) -> None:
        """Make the server refuse writes, as a switchover fences the old primary:
        ``default_transaction_read_only = on`` through ALTER SYSTEM and a reload.
        Returns once the server has reloaded (new sessions get it); sessions already
        connected see it from their next command on (PostgreSQL 14+ also reports it
        to them as a parameter status). Undo with :meth:`unfence`."""
        self.alter_system(default_transaction_read_only="on")
        self._wait_setting("default_transaction_read_only", "on")

    def unfence(self) -> None:
        """Undo :meth:`fence` (and wait until the server has reloaded)."""
        self.alter_system(default_transaction_read_only=None)
        self._wait_setting("default_transaction_read_only", "off")

    def _wait_setting(self, name: str, value: str, timeout: float = 30) -> None:
        """Wait until a new session sees ``name = value``: the postmaster reloaded its
        configuration, and has signalled the running sessions to do the same."""

        def reloaded() -> bool:
            with self._admin() as cur:
                cur.execute("SELECT current_setting(%s)", (name,))
                row = cur.fetchone()
                return row is not None and row[0] == value

        if not _wait_for(reloaded, timeout):
            raise RuntimeError(f"the server did not apply {name} = {value} within {timeout} s")

    @property
    def synchronous_standbys(self) -> List[str]:
        """Application names of the standbys this server waits for at commit (see
        :meth:`set_synchronous_standbys`)."""
        return list(self._synchronous_standbys)

    def set_synchronous_standbys(self, names: List[str]) -> None:
        """Wait at every commit for one of the standbys named (their ``application_name``)
        to have flushed it (``synchronous_commit = on``, ``synchronous_standby_names =
        ANY 1 (...)``); an empty list turns synchronous replication off again. While no
        named standby is connected, commits on this server wait."""
        if names:
            quoted = ", ".join('"' + name.replace('"', '""') + '"' for name in names)
            self.alter_system(
                synchronous_standby_names=f"ANY 1 ({quoted})", synchronous_commit="on"
            )
        else:
            self.alter_system(synchronous_standby_names=None, synchronous_commit=None)
        self._synchronous_standbys = list(names)

    def in_recovery(self) -> bool:
        """Whether the server is a standby (``pg_is_in_recovery()``)."""
        with self._admin() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            row = cur.fetchone()
            return bool(row and row[0])

    def cleanup(self) -> None:
        """Stop the server (immediate mode) if it runs and remove its temporary directory.

        Safe to call more than once; afterwards the object cannot be started again.
        """
        with self._lock:
            if self._cleaned_up:
                return
            if os.getpid() != self._owner_pid:
                return  # a forked child: the parent owns the server
            try:
                pid = self.pid
                if pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGCONT)
                    with contextlib.suppress(Exception):
                        _run(
                            [
                                os.path.join(self.bindir, "pg_ctl"),
                                "stop",
                                "-w",
                                "-t",
                                "30",
                                "-D",
                                self.datadir,
                                "-m",
                                "immediate",
                            ],
                            self._account,
                            cwd=self.basedir,
                            timeout=60,
                        )
                    leftover = self.pid
                    if leftover is not None:
                        with contextlib.suppress(OSError):
                            os.kill(leftover, signal.SIGKILL)
                        _wait_for(lambda: not _is_postmaster(leftover, self.datadir), 10)
            finally:
                self._cleaned_up = True
                self._paused = False
                if self._basedir is not None:
                    shutil.rmtree(self._basedir, ignore_errors=True)
                self._stop_watchdog()
                _cleanup._unregister(self)
                if self._requested_port is None and self._port is not None:
                    _release_port(self._port)

    def __enter__(self: _S) -> _S:
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
        return f"<PostgresServer {where} {state}>"

    # -- SQL helpers --------------------------------------------------------

    def connect(
        self, dbname: Optional[str] = None, **kwargs: Any
    ) -> psycopg2.extensions.connection:
        """Open a new autocommit psycopg2 connection as the superuser to ``dbname``
        (default ``postgres``); ``kwargs`` are passed to :func:`psycopg2.connect`."""
        conn: psycopg2.extensions.connection = psycopg2.connect(self.make_dsn(dbname), **kwargs)
        conn.autocommit = True
        return conn

    @contextlib.contextmanager
    def _admin(self) -> Iterator[psycopg2.extensions.cursor]:
        conn = self.connect(application_name="pgreservoir-testing-admin")
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def backend_pids(self, dbname: Optional[str] = None) -> List[int]:
        """Process ids of client backends (optionally only those connected to ``dbname``),
        excluding the connection used to ask."""
        with self._admin() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND (%(db)s::text IS NULL OR datname = %(db)s) ORDER BY pid",
                {"db": dbname},
            )
            return [int(row[0]) for row in cur.fetchall()]

    def connection_count(self, dbname: Optional[str] = None) -> int:
        """Number of client connections (optionally only to ``dbname``), excluding the
        connection used to ask."""
        return len(self.backend_pids(dbname))

    def terminate_backends(
        self,
        dbname: Optional[str] = None,
        application_name: Optional[str] = None,
        *,
        wait: bool = True,
    ) -> int:
        """Terminate client backends (``pg_terminate_backend``), optionally only those
        connected to ``dbname`` and/or with ``application_name``. With ``wait`` it also
        waits (up to 10 s) until they have exited. Returns how many were terminated."""
        with self._admin() as cur:
            # Select first, terminate second: the planner may evaluate WHERE clauses
            # in any order, so pg_terminate_backend must not sit next to the filters.
            cur.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND (%(db)s::text IS NULL OR datname = %(db)s)"
                " AND (%(app)s::text IS NULL OR application_name = %(app)s)",
                {"db": dbname, "app": application_name},
            )
            candidates = [int(row[0]) for row in cur.fetchall()]
            pids: List[int] = []
            if candidates:
                cur.execute(
                    "SELECT pid FROM unnest(%s::int[]) AS t(pid) WHERE pg_terminate_backend(pid)",
                    (candidates,),
                )
                pids = [int(row[0]) for row in cur.fetchall()]
            if wait and pids:

                def gone() -> bool:
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
                    )
                    row = cur.fetchone()
                    return row is not None and int(row[0]) == 0

                _wait_for(gone, 10)
        return len(pids)

    def create_database(self, name: Optional[str] = None, *, template: Optional[str] = None) -> str:
        """Create a database (named ``name``, or a unique generated name) and return a DSN
        for it. ``template`` selects the template database (default ``template1``)."""
        if name is None:
            name = f"test_{uuid.uuid4().hex[:16]}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        with self._admin() as cur:
            cur.execute(statement)
        return self.make_dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, terminating its connections first."""
        self.terminate_backends(dbname=name)
        with self._admin() as cur:
            if self.version >= 130000:
                cur.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                return
            statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
            deadline = time.monotonic() + 10
            while True:
                try:
                    cur.execute(statement)
                    return
                except psycopg2.errors.ObjectInUse:
                    if time.monotonic() >= deadline:
                        raise
                    self.terminate_backends(dbname=name)

    # -- internals ----------------------------------------------------------

    def _require_pid(self) -> int:
        pid = self.pid
        if pid is None:
            raise RuntimeError("the server is not running")
        return pid

    def _log_size(self) -> int:
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.logfile, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _setup(self) -> None:
        """First start: resolve binaries and account, create the directory, the
        watchdog and the data directory."""
        account = _server_account()
        bindir = self._requested_bindir or find_bindir()
        if not _has_server_programs(bindir):
            raise RuntimeError(f"{bindir!r} does not contain postgres, initdb and pg_ctl")
        if account is not None and not _usable_bindir(bindir, account):
            bindir = _relocate_install(bindir, account)
        self._account = account
        self._bindir = bindir
        self._version = None
        if self.version < 100000:  # read early: fails loudly on broken binaries
            raise RuntimeError(f"PostgreSQL 10 or newer is needed, {bindir} has {self.version}")

        basedir = tempfile.mkdtemp(prefix="pgreservoir-", dir=_temp_root(account))
        self._basedir = basedir
        _cleanup._register(self)
        os.chmod(basedir, 0o700)
        if account is not None:
            os.chown(basedir, account.uid, account.gid)
        self._start_watchdog()
        self._create_datadir(Path(self.datadir))

    def _create_datadir(self, datadir: Path) -> None:
        """Make the data directory: a copy of the template or initdb, our settings'
        include file and a pg_hba.conf (a standby overrides this)."""
        account = self._account
        template = self._template(self.version) if self._use_template else None
        if template is not None:
            _copy_tree(template, datadir, account)
        else:
            self._initdb(datadir)
        with open(datadir / "postgresql.conf", "a", encoding="utf-8") as handle:
            handle.write("\n# added by pgreservoir.testing\ninclude 'pgreservoir.conf'\n")
        method = "scram-sha-256" if self._password is not None else "trust"
        _write_file(
            datadir / "pg_hba.conf",
            "# written by pgreservoir.testing\n"
            "local all all trust\n"
            "local replication all trust\n"
            f"host all all 127.0.0.1/32 {method}\n"
            f"host all all ::1/128 {method}\n"
            f"host replication all 127.0.0.1/32 {method}\n"
            f"host replication all ::1/128 {method}\n",
            account,
        )

    def _initdb(self, datadir: Path, pwfile_dir: Optional[Path] = None) -> None:
        parent = datadir.parent
        command = [
            os.path.join(self.bindir, "initdb"),
            "-D",
            str(datadir),
            "-U",
            self._user,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        pwfile = (pwfile_dir or parent) / "pwfile"
        if self._password is not None:
            _write_file(pwfile, self._password + "\n", self._account)
            command += ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            command += ["-A", "trust"]
        try:
            _check(_run(command, self._account, cwd=str(parent)), "initdb")
        finally:
            with contextlib.suppress(FileNotFoundError):
                pwfile.unlink()

    def _template(self, version: int) -> Optional[Path]:
        """A cached, initdb'ed (never started) data directory for our settings."""
        account = self._account
        key = "|".join(
            [
                _TEMPLATE_FORMAT,
                os.path.realpath(self.bindir),
                str(version),
                self._user,
                str(account.uid if account else os.geteuid()),
            ]
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        root = Path(_temp_root(account)) / f"pgreservoir-tmpl-{digest}"
        owners = {os.geteuid()} | ({account.uid} if account else set())

        def usable() -> bool:
            return _trusted_cache_dir(root, owners) and (root / "complete").exists()

        if usable():
            return root / "data"
        staging = Path(tempfile.mkdtemp(prefix=".pgreservoir-tmpl-", dir=root.parent))
        try:
            if account is not None:
                os.chown(staging, account.uid, account.gid)
            self._initdb(staging / "data")
            _write_file(staging / "complete", "", account)
            try:
                os.rename(staging, root)
            except OSError:
                if not usable():
                    return None  # someone else's or broken: just run initdb ourselves
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return root / "data"

    def _write_runtime_conf(self) -> None:
        basedir = self.basedir
        socket_path = os.path.join(basedir, f".s.PGSQL.{self.port}.lock")
        socket_dir = basedir if len(socket_path.encode()) < _SOCKET_PATH_MAX else ""
        settings: Dict[str, str] = {
            "listen_addresses": self._host,
            "port": str(self.port),
            "unix_socket_directories": socket_dir,
            "max_connections": str(self._max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        if self._password is not None:
            settings["password_encryption"] = "scram-sha-256"
        settings.update(self._settings)
        text = "# written by pgreservoir.testing on every start\n" + "".join(
            f"{name} = {_conf_quote(value)}\n" for name, value in settings.items()
        )
        _write_file(Path(self.datadir) / "pgreservoir.conf", text, self._account)

    def _start_watchdog(self) -> None:
        self._watchdog = _Watchdog(
            {
                "basedir": self.basedir,
                "datadir": self.datadir,
                "pg_ctl": os.path.join(self.bindir, "pg_ctl"),
                "uid": self._account.uid if self._account else None,
                "gid": self._account.gid if self._account else None,
            }
        )

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.stop()

    def _forget_after_fork(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.forget()


def start_server(**kwargs: Any) -> PostgresServer:
    """Create a :class:`PostgresServer` with ``kwargs`` and start it. Call
    :meth:`PostgresServer.cleanup` when done (or rely on process exit)."""
    server = PostgresServer(**kwargs)
    try:
        return server.start()
    except BaseException:
        server.cleanup()
        raise
