"""Connection strings without secrets: masking for display, redaction of errors.

A password must never reach a log line, a ``repr()`` or an error message,
not even when the connection string is malformed and libpq's own message
quotes a piece of it (``password=correct horse`` fails with ``missing "="
after "horse"``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, Optional, Set, Tuple

__all__ = ["SECRET_KEYS", "mask_dsn", "parse_error", "redact", "secrets_of", "server_ports"]

#: libpq options whose values are secrets.
SECRET_KEYS = frozenset({"password", "sslpassword"})

_QUOTED = re.compile(r'"([^"]*)"')
_ASSIGNED = re.compile(r"(\w+)\s*=\s*")


def mask_dsn(params: Mapping[str, Any]) -> str:
    """Render connection parameters as a DSN with every secret shown as ``***``."""
    return " ".join(
        f"{key}={'***' if key in SECRET_KEYS else value}" for key, value in params.items()
    )


def _keys_in(text: str) -> Set[str]:
    """Words written as ``key=`` in a DSN or as a URI query parameter name."""
    return {m.group(1) for m in _ASSIGNED.finditer(text)}


def parse_error(message: str, source: Optional[str]) -> str:
    """libpq's complaint about ``source`` with every quoted piece of it hidden,
    except option names: those are the useful part and never secret."""
    keys = _keys_in(source or "")

    def hide(match: re.Match[str]) -> str:
        word = match.group(1)
        return match.group(0) if word in keys or word == "=" else '"***"'

    text = " ".join(message.split())
    text = re.sub(r"^invalid dsn:\s*", "", text)
    return _QUOTED.sub(hide, text)


def secrets_of(params: Mapping[str, Any]) -> Tuple[str, ...]:
    """The secret values among parsed connection parameters (for :func:`redact`)."""
    return tuple(str(v) for k, v in params.items() if k in SECRET_KEYS and v)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def server_ports(params: Mapping[str, Any]) -> Tuple[int, ...]:
    """The server ports a connection may go to (``port=5432,5433``; default 5432)."""
    given = params.get("port") or os.environ.get("PGPORT") or ""
    ports = [int(p) for p in (part.strip() for part in str(given).split(",")) if p.isdigit()]
    return tuple(ports) or (5432,)
