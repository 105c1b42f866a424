"""The ``pgreservoir`` logger and the engine's event sink.

The engine reports events (connect errors, discarded connections) through a
plain callable; this module turns them into log records that name the pool.
Nothing is logged on the checkout/check-in fast path.
"""

from __future__ import annotations

import logging
from typing import Callable

logger = logging.getLogger("pgreservoir")

_LEVELS = {
    "connect_error": logging.WARNING,
    "reset_failed": logging.WARNING,
    "forced": logging.WARNING,
    "leak": logging.WARNING,
    "reconnect_failed": logging.ERROR,
    "callback_error": logging.ERROR,
    "reconnected": logging.INFO,
    "closed": logging.INFO,
}


def event_logger(pool_name: str) -> Callable[[str, str], None]:
    """An event sink that logs ``kind: detail`` for the pool named ``pool_name``."""

    def log_event(kind: str, detail: str) -> None:
        level = _LEVELS.get(kind, logging.DEBUG)
        if logger.isEnabledFor(level):
            logger.log(level, "pool %r: %s: %s", pool_name, kind.replace("_", " "), detail)

    return log_event
