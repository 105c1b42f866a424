"""Small process and file helpers shared by the things :mod:`pgreservoir.testing` starts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ._account import _Account


def _server_env() -> Dict[str, str]:
    """Our environment without libpq/PostgreSQL variables that could redirect the programs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


def _run(
    command: List[str],
    account: Optional[_Account],
    cwd: str,
    timeout: float = 120,
    extra_env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess[str]:
    kwargs = account.popen_kwargs() if account is not None else {}
    return subprocess.run(
        command,
        cwd=cwd,
        env={**_server_env(), **(extra_env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def _check(result: subprocess.CompletedProcess[str], what: str, extra: str = "") -> None:
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        message = f"{what} failed (exit {result.returncode}): {' '.join(result.args)}\n{output}"
        if extra:
            message += "\n" + extra
        raise RuntimeError(message)


def _write_file(path: Path, text: str, account: Optional[_Account], mode: int = 0o600) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)
    if account is not None:
        os.chown(path, account.uid, account.gid)


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _dsn_quote(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _chown_tree(root: Path, account: _Account) -> None:
    os.lchown(root, account.uid, account.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), account.uid, account.gid)


def _copy_tree(source: Path, destination: Path, account: Optional[_Account]) -> None:
    """Copy a data directory preserving modes (and ownership where possible)."""
    cp = shutil.which("cp")
    if cp is not None:  # much faster than shutil.copytree, and keeps the owner
        subprocess.run(
            [cp, "-a", str(source), str(destination)],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        if account is None or os.stat(destination).st_uid == account.uid:
            return
    else:
        shutil.copytree(source, destination, symlinks=True)
    if account is not None:
        _chown_tree(destination, account)


def _wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
