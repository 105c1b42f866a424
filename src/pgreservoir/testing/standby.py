"""A streaming standby of a :class:`~pgreservoir.testing.PostgresServer`: :class:`StandbyServer`.

Built with ``pg_basebackup -R -X stream`` from a running primary (about a
second), it streams the primary's WAL through a physical replication slot and
accepts read-only connections (hot standby). It is a
:class:`~pgreservoir.testing.PostgresServer` itself, so it has the same fault
controls (:meth:`stop`, :meth:`kill`, :meth:`restart`, :meth:`pause` /
:meth:`resume`) and SQL helpers, plus what a standby has: :meth:`promote`,
replay pause and resume, and waits for catching up that end at a deadline::

    with PostgresServer() as primary, StandbyServer(primary, synchronous=True) as standby:
        ...                                   # commits on primary wait for standby
        standby.wait_caught_up(timeout=10)    # replayed all the primary has written
        standby.pause_replay()                # receives WAL, applies none: it lags
        standby.resume_replay()
        primary.kill()                        # the primary dies ...
        standby.promote()                     # ... and the standby takes over

Synchronous (``synchronous=True``): the primary waits at every commit until
this standby has flushed it (``synchronous_commit = on``, the standby named in
``synchronous_standby_names``), so a commit the primary acknowledged is on the
standby when the primary dies. While the standby is down, commits on the
primary wait; cleaning the standby up takes it off the primary's list.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Optional

import psycopg2

from ._process import _check, _dsn_quote, _run, _write_file
from .server import PostgresServer

__all__ = ["StandbyServer"]

# Settings a base backup copies from the primary's postgresql.auto.conf that
# must not apply to the standby: it gets its own primary_conninfo, and a
# promoted standby must not wait for synchronous standbys of its old primary.
_NOT_INHERITED = ("primary_conninfo", "primary_slot_name", "synchronous_standby_names")
_POLL = 0.02


class StandbyServer(PostgresServer):
    """A hot standby streaming from ``primary`` (a running :class:`PostgresServer`).

    Nothing happens until :meth:`start` (or ``with StandbyServer(primary) as s:``).
    Keyword options:

    ``synchronous``
        make the primary wait at commit for this standby (see the module notes).
    ``name``
        its ``application_name`` on the primary (``pg_stat_replication``) and the
        name of its replication slot; default a unique ``pgr_standby_*``.
    ``port``, ``host``
        as for :class:`PostgresServer`; ``port`` lets a rebuilt server take the
        place of an old one (see :meth:`replace`).
    ``settings``
        extra settings on top of the primary's (``hot_standby_feedback`` ...).

    The binaries, account, superuser, password and ``max_connections`` are the
    primary's (a hot standby needs at least the primary's ``max_connections``).
    """

    def __init__(
        self,
        primary: PostgresServer,
        *,
        synchronous: bool = False,
        name: Optional[str] = None,
        port: Optional[int] = None,
        host: Optional[str] = None,
        settings: Optional[Dict[str, str]] = None,
    ) -> None:
        merged = dict(primary._settings)
        merged.update(settings or {})
        super().__init__(
            bindir=primary.bindir,
            port=port,
            host=host or primary.host,
            user=primary.user,
            password=primary.password,
            settings=merged,
            max_connections=primary._max_connections,
            use_template=False,
        )
        self._primary = primary
        self._synchronous = synchronous
        self._name = name or f"pgr_standby_{uuid.uuid4().hex[:10]}"
        self._promoted = False

    # -- properties ---------------------------------------------------------

    @property
    def primary(self) -> PostgresServer:
        """The server this standby was built from and streams from."""
        return self._primary

    @property
    def name(self) -> str:
        """Its ``application_name`` on the primary and the name of its replication slot."""
        return self._name

    @property
    def synchronous(self) -> bool:
        """Whether the primary waits at commit for this standby."""
        return self._synchronous

    @property
    def promoted(self) -> bool:
        """Whether :meth:`promote` made it a primary."""
        return self._promoted

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> StandbyServer:
        """Build the standby on the first start (base backup of the primary), start it
        and wait until it accepts connections; when synchronous, also put it on the
        primary's list of synchronous standbys. Returns ``self``."""
        with self._lock:
            first_start = self._basedir is None
            PostgresServer.start(self)
            if first_start and self._synchronous:
                names = self._primary.synchronous_standbys
                if self._name not in names:
                    self._primary.set_synchronous_standbys([*names, self._name])
            return self

    @classmethod
    def replace(cls, old: PostgresServer, primary: PostgresServer, **options: Any) -> StandbyServer:
        """Clean ``old`` up and start a standby of ``primary`` on ``old``'s port: an old
        primary coming back as a standby of the one promoted in its place, as clients
        see it (same address, now read-only). ``options`` as for the constructor."""
        port = old.port
        old.cleanup()
        return cls(primary, port=port, **options).start()

    def promote(self, timeout: float = 30) -> None:
        """Turn the standby into a primary (``pg_ctl promote``) and wait, until
        ``timeout`` seconds, until it accepts writes. It stops following its primary."""
        with self._lock:
            self._require_pid()
            result = _run(
                [
                    os.path.join(self.bindir, "pg_ctl"),
                    "promote",
                    "-w",
                    "-t",
                    str(int(max(timeout, 1))),
                    "-D",
                    self.datadir,
                ],
                self._account,
                cwd=self.basedir,
                timeout=timeout + 30,
            )
            _check(result, "pg_ctl promote")
            self._wait(lambda: not self.in_recovery(), timeout, "to leave recovery")
            self._promoted = True

    def cleanup(self) -> None:
        """Stop and remove the standby; take it off the primary's synchronous list and
        drop its replication slot there (when the primary is up and not paused)."""
        with self._lock:
            if self._cleaned_up:
                return
            if os.getpid() == self._owner_pid and self._basedir is not None:
                with contextlib.suppress(Exception):
                    self._detach_from_primary()
            super().cleanup()

    # -- replication --------------------------------------------------------

    def pause_replay(self, timeout: float = 10) -> None:
        """Stop applying WAL (``pg_wal_replay_pause()``; it is still received), and wait
        until replay has paused. Reads then see the data as of that moment."""
        self._query("SELECT pg_wal_replay_pause()")
        self._wait(lambda: self.replay_paused, timeout, "to pause replay")

    def resume_replay(self) -> None:
        """Apply WAL again (``pg_wal_replay_resume()``)."""
        self._query("SELECT pg_wal_replay_resume()")

    @property
    def replay_paused(self) -> bool:
        """Whether replay is paused (requested and in effect)."""
        if self.version >= 140000:
            return bool(self._query("SELECT pg_get_wal_replay_pause_state()") == "paused")
        return bool(self._query("SELECT pg_is_wal_replay_paused()"))

    def lag_bytes(self, *, received: bool = False) -> int:
        """How many bytes of WAL the primary has written that this standby has not yet
        replayed (``received=True``: not yet received)."""
        target = self._primary_lsn()
        return max(0, self._behind(target, received=received))

    def wait_caught_up(self, timeout: float = 30, *, received: bool = False) -> None:
        """Wait until the standby has replayed (``received=True``: received) everything
        the primary had written when this was called; :class:`TimeoutError` after
        ``timeout`` seconds, saying how far behind it still is."""
        target = self._primary_lsn()
        deadline = time.monotonic() + timeout
        while True:
            behind = self._behind(target, received=received)
            if behind <= 0:
                return
            if time.monotonic() >= deadline:
                what = "received" if received else "replayed"
                raise TimeoutError(
                    f"standby {self._name} has not {what} the primary's WAL up to {target} "
                    f"within {timeout} s: {behind} bytes behind"
                    + (" (replay is paused)" if not received and self.replay_paused else "")
                )
            time.sleep(_POLL)

    def wait_streaming(self, timeout: float = 30) -> None:
        """Wait until the primary sees this standby streaming (and, when synchronous,
        as its synchronous standby); :class:`TimeoutError` after ``timeout`` seconds."""
        wanted = ("sync", "quorum") if self._synchronous else None

        def streaming() -> bool:
            with self._primary._admin() as cur:
                cur.execute(
                    "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                    (self._name,),
                )
                rows = cur.fetchall()
            return any(
                state == "streaming" and (wanted is None or sync in wanted) for state, sync in rows
            )

        self._wait(streaming, timeout, "to stream from its primary")

    # -- internals ----------------------------------------------------------

    def _create_datadir(self, datadir: Path) -> None:
        primary = self._primary
        if not primary.running:
            raise RuntimeError("the primary must be running to build a standby from it")
        program = os.path.join(self.bindir, "pg_basebackup")
        if not os.path.isfile(program):
            raise RuntimeError(
                f"no pg_basebackup in {self.bindir}: install the PostgreSQL client "
                "programs of the same version, or set PG_BINDIR to a complete installation"
            )
        conninfo = self._primary_conninfo()
        password_file = None
        if self._password is not None:
            password_file = Path(self.basedir) / "pgpass"
            _write_file(
                password_file,
                f"{primary.host}:{primary.port}:*:{primary.user}:{self._password}\n",
                self._account,
            )
        command = [
            program,
            "-D",
            str(datadir),
            "-d",
            conninfo,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-C",
            "-S",
            self._name,
            "--no-sync",
        ]
        env_extra = {"PGPASSFILE": str(password_file)} if password_file else {}
        _check(
            _run(command, self._account, cwd=self.basedir, extra_env=env_extra),
            "pg_basebackup",
        )
        # Our own primary_conninfo and slot, in our include file; none inherited.
        auto = datadir / "postgresql.auto.conf"
        kept = [
            line
            for line in auto.read_text(encoding="utf-8").splitlines()
            if not line.strip().startswith(_NOT_INHERITED)
        ]
        _write_file(auto, "\n".join(kept) + "\n", self._account)
        self._settings["primary_conninfo"] = conninfo
        self._settings["primary_slot_name"] = self._name
        self._settings.setdefault("hot_standby", "on")
        if password_file is not None:
            self._settings["primary_conninfo"] = (
                conninfo + " passfile=" + _dsn_quote(str(password_file))
            )

    def _primary_conninfo(self) -> str:
        primary = self._primary
        values = {
            "host": primary.host,
            "port": str(primary.port),
            "user": primary.user,
            "application_name": self._name,
            "connect_timeout": "5",
        }
        return " ".join(f"{key}={_dsn_quote(value)}" for key, value in values.items())

    def _detach_from_primary(self) -> None:
        primary = self._primary
        if not primary.running or primary.paused or self._promoted:
            return
        if self._name in primary.synchronous_standbys:
            primary.set_synchronous_standbys(
                [name for name in primary.synchronous_standbys if name != self._name]
            )
        self.stop("immediate")
        with primary._admin() as cur:
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s AND NOT active",
                (self._name,),
            )

    def _primary_lsn(self) -> str:
        with self._primary._admin() as cur:
            cur.execute(
                "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
                " ELSE pg_current_wal_insert_lsn() END::text"
            )
            row = cur.fetchone()
        if row is None or row[0] is None:
            raise RuntimeError("cannot read the primary's WAL position")
        return str(row[0])

    def _behind(self, target: str, *, received: bool) -> int:
        position = "pg_last_wal_receive_lsn()" if received else "pg_last_wal_replay_lsn()"
        value = self._query(f"SELECT pg_wal_lsn_diff(%s::pg_lsn, {position})::bigint", (target,))
        return int(value) if value is not None else 1 << 62

    def _query(self, statement: str, params: Any = None) -> Any:
        with self._admin() as cur:
            cur.execute(statement, params)
            row = cur.fetchone()
        return row[0] if row else None

    def _wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last: Optional[BaseException] = None
        while True:
            try:
                if predicate():
                    return
            except psycopg2.Error as exc:  # e.g. still starting up
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"standby {self._name} did not manage {what} within {timeout} s"
                    + (f" (last error: {last})" if last else "")
                )
            time.sleep(_POLL)
