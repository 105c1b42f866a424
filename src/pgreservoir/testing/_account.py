"""Running as root: the unprivileged account the server programs run as.

PostgreSQL and PgBouncer refuse to run as root. When we are root they run as
the ``postgres`` account, or else as a ``pgreservoir`` system account that is
created on the machine the first time (logged at WARNING).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

logger = logging.getLogger("pgreservoir.testing")


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> Dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _lookup_account(name: str) -> Optional[_Account]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    if entry.pw_uid == 0:
        return None
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _server_account() -> Optional[_Account]:
    """The account to run the server programs as, or None to run them as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgreservoir"):
        account = _lookup_account(name)
        if account is not None:
            return account
    commands = [
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "pgreservoir",
        ],
        ["adduser", "-S", "-D", "-H", "-s", "/sbin/nologin", "pgreservoir"],  # busybox
    ]
    errors: List[str] = []
    for command in commands:
        if shutil.which(command[0]) is None:
            continue
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        account = _lookup_account("pgreservoir")  # may also have been created concurrently
        if account is not None:
            logger.warning(
                "running as root: created the system account 'pgreservoir' to run "
                "PostgreSQL as (it stays; remove it with 'userdel pgreservoir')"
            )
            return account
        errors.append(f"{' '.join(command)}: {result.stderr.strip()}")
    raise RuntimeError(
        "running as root, but PostgreSQL refuses to run as root and no unprivileged "
        "account ('postgres' or 'pgreservoir') exists or could be created: " + "; ".join(errors)
    )


def _permitted(path: str, account: _Account, want: int) -> bool:
    """Whether ``account`` (without supplementary groups) has ``want`` (rwx bits) on path."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_uid == account.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == account.gid:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def _traversable(path: str, account: _Account) -> bool:
    """Whether ``account`` can reach ``path`` (x on every ancestor, symlinks resolved or not)."""
    for candidate in {os.path.abspath(path), os.path.realpath(path)}:
        current = candidate
        while True:
            if not _permitted(current, account, 1):
                return False
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
    return True
