"""A watchdog process that cleans up after its owner when the owner dies.

Each server (or PgBouncer) starts one: a separate interpreter that blocks
reading a pipe from its owner. EOF without the ``done`` message means the
owner died without cleaning up, so the watchdog stops what it was started for
and removes its temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import IO, Any, Dict, Optional

# Runs as ``python -c``, so it needs nothing importable. ``cfg`` holds
# ``basedir`` (removed at the end), ``uid``/``gid`` to run pg_ctl as, and
# either ``datadir`` + ``pg_ctl`` (a PostgreSQL server) or ``pidfile`` +
# ``marker`` (any process whose pid is in the file and whose command line
# contains the marker, e.g. a PgBouncer and its configuration file).
_WATCHDOG_SOURCE = r"""
import json, os, shutil, signal, subprocess, sys
cfg = json.loads(sys.argv[1])
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
received = b""
while True:
    try:
        chunk = os.read(0, 4096)
    except OSError:
        break
    if not chunk:
        break
    received += chunk
if b"done" in received:
    sys.exit(0)

def running(pidfile, marker):
    try:
        with open(pidfile) as handle:
            pid = int(handle.readline().strip())
    except (OSError, ValueError):
        return None
    if os.path.exists("/proc/self"):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                if marker.encode() not in handle.read():
                    return None
        except OSError:
            return None
    return pid

if cfg.get("datadir"):
    datadir = cfg["datadir"]
    pidfile, marker = os.path.join(datadir, "postmaster.pid"), datadir
else:
    pidfile, marker = cfg["pidfile"], cfg["marker"]
pid = running(pidfile, marker)
if pid is not None:
    try:
        os.kill(pid, signal.SIGCONT)
    except OSError:
        pass
    if cfg.get("datadir"):
        kwargs = {}
        if cfg["uid"] is not None:
            kwargs = {"user": cfg["uid"], "group": cfg["gid"], "extra_groups": []}
        try:
            subprocess.run(
                [cfg["pg_ctl"], "stop", "-D", datadir, "-m", "immediate", "-w", "-t", "30"],
                cwd=cfg["basedir"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, timeout=60, **kwargs
            )
        except Exception:
            pass
    pid = running(pidfile, marker)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
shutil.rmtree(cfg["basedir"], ignore_errors=True)
"""


class _Watchdog:
    """The owner's end of a watchdog process (see the module documentation)."""

    def __init__(self, config: Dict[str, Any]) -> None:
        self._popen = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG_SOURCE, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
        self._process: Optional[subprocess.Popen[bytes]] = self._popen

    def poll(self) -> Optional[int]:
        """The watchdog process's exit status, or None while it runs."""
        return self._popen.poll()

    def stop(self) -> None:
        """Tell the watchdog its owner cleaned up, and wait for it to exit."""
        process, self._process = self._process, None
        if process is None:
            return
        pipe: Optional[IO[bytes]] = process.stdin
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.write(b"done\n")
                pipe.flush()
            with contextlib.suppress(OSError):
                pipe.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def forget(self) -> None:
        """In a forked child: close our copy of the pipe, leaving the parent's watchdog be."""
        process, self._process = self._process, None
        if process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
