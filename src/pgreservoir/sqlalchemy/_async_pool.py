"""``AsyncAdaptedReservoirPool``: ReservoirPool for ``create_async_engine()``.

SQLAlchemy's asyncio engines run the synchronous pool API inside greenlets
(``greenlet_spawn``): a pool method that must wait hands a coroutine to
``await_()``, which suspends the greenlet while the event loop runs it. This
pool does exactly that with pgreservoir's asyncio shell: a checkout waits in
the shell's fair line as a Future of the engine's loop, never blocking the
loop; new connections are made by the shell's tasks, each inside its own
``greenlet_spawn`` so that SQLAlchemy's creator and events run as usual.
"""

from __future__ import annotations

import asyncio
from typing import Any, Set

from sqlalchemy.pool.base import _AsyncConnDialect
from sqlalchemy.util.concurrency import await_, in_greenlet

from .._async.shell import AsyncPool
from .._core import Core
from ..errors import PoolClosed, PoolTimeout
from ..options import next_pool_name
from ._pool import ReservoirPool, pool_events
from ._records import AsyncRecordDriver

__all__ = ["AsyncAdaptedReservoirPool"]


class AsyncAdaptedReservoirPool(ReservoirPool):
    """ReservoirPool for asyncio engines (``create_async_engine(url, poolclass=...)``).

    The same arguments as :class:`ReservoirPool`. New connections are opened
    by the pool's tasks: while connecting fails, checkouts get the connect
    error at once (``fail_fast``, unless ``pool_options`` says otherwise).
    """

    _is_asyncio = True
    _dialect = _AsyncConnDialect()

    def _new_shell(self) -> Any:
        options = self._options
        if self._given_options is None or self._given_options.fail_fast is False:
            options = options.replace(fail_fast=True)
        core = Core(
            options,
            name=options.name or next_pool_name(),
            min_size=0,
            max_size=self._max_size,
            lifo=self._use_lifo,
        )
        return AsyncPool(
            core,
            AsyncRecordDriver(self, f"SQLAlchemy pool {type(self).__name__}"),
            options,
            on_event=pool_events(core.name),
        )

    def _do_get(self) -> Any:
        shell = self._current_shell()
        wait = self._wait
        if wait < self._options.timeout:
            # QueuePool bounds the wait for a returned connection, never a
            # connect: with room in the pool, wait for the open that the
            # pool's task does for this caller (a failing connect still
            # returns at once: fail_fast).
            gauges = shell.gauges()
            if gauges["size"] < gauges["max_size"]:
                wait = self._options.timeout
        try:
            record = await_(shell.acquire(wait))
        except PoolTimeout as exc:
            raise self._timed_out(exc) from exc
        except PoolClosed:
            return self._do_get()  # dispose() raced this checkout
        record._pgreservoir_shell = shell
        return record

    def _do_return_conn(self, record: Any) -> None:
        shell = self._owns(record)
        if shell is None:
            if in_greenlet():
                record.close()
            return
        close = not self._keep_idle(shell)
        if in_greenlet():
            await_(shell.release(record, close))
            return
        # Returned outside the greenlet bridge (a connection collected by the
        # garbage collector): give it back from a task on the pool's loop.
        loop = shell.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_release_later, shell, record, close)

    def dispose(self) -> None:
        """Close the idle connections (see :meth:`ReservoirPool.dispose`)."""
        shell, self._shell = self._shell, None
        if shell is not None:
            if in_greenlet():
                await_(shell.close(0.0))
            else:
                shell.abandon_on_collect(warn=False)
        self.logger.info("Pool disposed. %s", self.status())


_later: Set[asyncio.Task[Any]] = set()


def _release_later(shell: Any, record: Any, close: bool) -> None:
    task = asyncio.get_running_loop().create_task(shell.release(record, close))
    _later.add(task)
    task.add_done_callback(_later.discard)
