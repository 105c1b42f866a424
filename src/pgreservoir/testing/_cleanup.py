"""Process-wide cleanup of everything :mod:`pgreservoir.testing` started.

Servers, standbys and PgBouncers register here when they start and leave when
cleaned up; whatever is left is cleaned up at interpreter exit. A forked child
forgets its parent's (the parent owns them).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from typing import Protocol, Set


class _Disposable(Protocol):
    def cleanup(self) -> None: ...

    def _forget_after_fork(self) -> None: ...


class _Live:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.things: Set[_Disposable] = set()


_live = _Live()


def _register(thing: _Disposable) -> None:
    with _live.lock:
        _live.things.add(thing)


def _unregister(thing: _Disposable) -> None:
    with _live.lock:
        _live.things.discard(thing)


def _cleanup_all() -> None:
    with _live.lock:
        things = list(_live.things)
    for thing in things:
        with contextlib.suppress(Exception):
            thing.cleanup()


def _after_fork_in_child() -> None:
    # A forked child must not clean up (or keep alive) its parent's servers:
    # drop our copy of the watchdog pipes and forget them.
    _live.lock = threading.Lock()
    for thing in list(_live.things):
        thing._forget_after_fork()
    _live.things.clear()


atexit.register(_cleanup_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
