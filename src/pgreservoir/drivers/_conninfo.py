"""Connection strings without secrets: masking for display, redaction of errors.

A password must never reach a log line, a ``repr()`` or an error message,
not even when the connection string is malformed and libpq's own message
quotes a piece of it (``password=correct horse`` fails with ``missing "="
after "horse"``). Secrets are found by where they are (the value of
``password=`` or ``sslpassword=``, the password of a URI's user info), never
by searching for their text: a short or common password ("postgres", "1")
must not blank out a user name or every digit of a message. Option names are
never secret, and are always shown: they are what a typo is found by.

libpq and the drivers do not echo connection strings in connect errors
(their messages name hosts, ports, users and databases, never a password),
so what a connection error shows needs no masking beyond :func:`redact`, a
positional mask of anything shaped like a connection string.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Collection, List, Mapping, Optional, Tuple
from urllib.parse import unquote

from ..options import OPTION_NAMES, SECRET_KEYS

__all__ = [
    "SECRET_KEYS",
    "mask_dsn",
    "parse_error",
    "pool_option_hint",
    "redact",
    "secret_spans",
    "server_ports",
]

_MASK = "***"
_QUOTED = re.compile(r'"([^"]*)"')
_URI_PREFIX = re.compile(r"postgres(?:ql)?://", re.IGNORECASE)
_UNKNOWN_OPTION = re.compile(r'invalid (?:connection option|URI query parameter):? "([^"]*)"')

# What redact() masks in free text: the value after password= or sslpassword=
# (quoted, possibly unterminated, or up to the next space), a URI's password
# (between the user name's ":" and the last "@" before the path), a secret
# query parameter, and a secret in the repr() of a dict of options.
_KEYWORD_SECRET = re.compile(
    r"(?<![\w.?&])(?:ssl)?password\s*=\s*(?:'((?:[^'\\]|\\.)*)(?:'|$)|([^\s']\S*))",
    re.IGNORECASE,
)
_URI_SECRET = re.compile(r"postgres(?:ql)?://[^\s:/?#@]*:([^\s/?#]*)@", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"[?&](?:ssl)?password=([^&\s#]*)", re.IGNORECASE)
_REPR_SECRET = re.compile(
    r"""['"](?:ssl)?password['"]\s*:\s*(?:'((?:[^'\\]|\\.)*)|"((?:[^"\\]|\\.)*))""",
    re.IGNORECASE,
)


def mask_dsn(params: Mapping[str, Any]) -> str:
    """Render connection parameters as a DSN with every secret shown as ``***``."""
    return " ".join(
        f"{key}={_MASK if key in SECRET_KEYS else value}" for key, value in params.items()
    )


# -- where the secrets of a connection string are ---------------------------------


def secret_spans(text: str) -> List[Tuple[int, int]]:
    """The ``(start, end)`` ranges of ``text`` (a connection string, well formed
    or not) that hold or may hold a secret.

    Keyword/value strings are read as libpq reads them. A word after an
    unquoted secret that is not followed by ``=`` is taken for the rest of
    it (``password=correct horse``: libpq complains of "horse"), and so is
    everything after it; a word followed by ``=`` is an option name.
    """
    if _URI_PREFIX.match(text.lstrip()):
        return _uri_spans(text)
    return _keyword_spans(text)


def _keyword_spans(text: str) -> List[Tuple[int, int]]:
    spans: List[Tuple[int, int]] = []
    n = len(text)
    i = 0
    after_secret = False  # the previous value was an unquoted secret
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        key_start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[key_start:i]
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=":
            # Malformed from here on: libpq stops; anything after a secret may be one.
            if after_secret:
                spans.append((key_start, n))
            break
        after_secret = False
        i += 1
        while i < n and text[i].isspace():
            i += 1
        quoted = i < n and text[i] == "'"
        if quoted:
            i += 1
        value_start = i
        while i < n:
            char = text[i]
            if char == "\\":
                i += 2
                continue
            if (quoted and char == "'") or (not quoted and char.isspace()):
                break
            i += 1
        value_end = min(i, n)
        if quoted:
            i += 1
        if key in SECRET_KEYS:
            spans.append((value_start, value_end))
            after_secret = not quoted
    return spans


def _uri_spans(text: str) -> List[Tuple[int, int]]:
    spans: List[Tuple[int, int]] = []
    match = _URI_PREFIX.search(text)
    assert match is not None
    start = match.end()
    # The authority ends at the path, the query or the end of the string.
    end = len(text)
    for stop in "/?":
        at = text.find(stop, start)
        if at != -1:
            end = min(end, at)
    authority = text[start:end]
    # libpq takes the user info up to the first "@"; a password with an
    # unescaped "@" continues to the last one: mask up to there.
    at_sign = authority.rfind("@")
    if at_sign != -1:
        colon = authority.find(":", 0, at_sign)
        if colon != -1:
            spans.append((start + colon + 1, start + at_sign))
    query = text.find("?", end)
    if query != -1:
        pos = query + 1
        for part in text[query + 1 :].split("&"):
            name, eq, _ = part.partition("=")
            if eq and unquote(name).lower() in SECRET_KEYS:
                spans.append((pos + len(name) + 1, pos + len(part)))
            pos += len(part) + 1
    return spans


def _overlaps(start: int, end: int, spans: List[Tuple[int, int]]) -> bool:
    return any(s < end and start < e for s, e in spans)


def _masked_piece(piece: str, source: str, spans: List[Tuple[int, int]]) -> Optional[str]:
    """``piece`` (quoted by libpq) as it may be shown: as is if no occurrence of
    it in ``source`` touches a secret; with the secret parts masked if it
    occurs once; None (hide it all) if it is not in the source (but for a
    lone punctuation mark), or occurs more than once and touches a secret."""
    found: List[int] = []
    at = source.find(piece)
    while at != -1 and piece:
        found.append(at)
        at = source.find(piece, at + 1)
    if not found:
        # libpq's own text (a bracket it looked for), or decoded from the source.
        return piece if len(piece) == 1 and not piece.isalnum() else None
    touching = [a for a in found if _overlaps(a, a + len(piece), spans)]
    if not touching:
        return piece
    if len(found) > 1:
        return None
    base = found[0]
    out: List[str] = []
    pos = base
    for span_start, span_end in sorted(spans):
        s, e = max(span_start, base), min(span_end, base + len(piece))
        if s >= e or s < pos:
            continue
        out.append(source[pos:s])
        out.append(_MASK)
        pos = e
    out.append(source[pos : base + len(piece)])
    return "".join(out)


def parse_error(message: str, source: Optional[str], names: Collection[str] = ()) -> str:
    """libpq's complaint about the connection string ``source`` with every quoted
    piece that is or may be part of a secret hidden.

    ``names`` are option names known as names (the keyword arguments): always
    shown. A quoted piece of ``source`` is shown with any secret in it masked
    (see :func:`secret_spans`); anything else quoted is hidden.
    """
    text = " ".join(message.split())
    text = re.sub(r"^invalid dsn:\s*", "", text)
    src = source or ""
    spans = secret_spans(src)

    def hide(match: re.Match[str]) -> str:
        word = match.group(1)
        if word == "=" or word in names:
            return match.group(0)
        shown = _masked_piece(word, src, spans)
        return f'"{_MASK}"' if shown is None else f'"{shown}"'

    return _QUOTED.sub(hide, text)


def pool_option_hint(message: str) -> str:
    """For an unknown connection option that looks like a misspelt pool option
    (all unknown keywords go to the driver): ``; did you mean the pool option ...?``."""
    match = _UNKNOWN_OPTION.search(message)
    if match is None:
        return ""
    close = difflib.get_close_matches(match.group(1), sorted(OPTION_NAMES), n=1, cutoff=0.75)
    return f" (did you mean the pool option {close[0]!r}?)" if close else ""


# -- free text ---------------------------------------------------------------------


def redact(text: str) -> str:
    """``text`` with the secrets of any connection string in it masked, by position:
    the value of ``password=``/``sslpassword=``, a URI's password or secret
    query parameter, a secret in the repr of a dict of options. Nothing
    else is touched (no search for a secret's text)."""
    spans: List[Tuple[int, int]] = []
    for pattern in (_URI_SECRET, _QUERY_SECRET):
        spans.extend(m.span(1) for m in pattern.finditer(text))
    for pattern in (_KEYWORD_SECRET, _REPR_SECRET):
        for m in pattern.finditer(text):
            group = 1 if m.group(1) is not None else 2
            spans.append(m.span(group))
    return _mask_spans(text, spans) if spans else text


def _mask_spans(text: str, spans: List[Tuple[int, int]]) -> str:
    """``text`` with each non-empty span replaced by ``***`` (overlaps merged)."""
    out: List[str] = []
    pos = 0
    for span_start, end in sorted(spans):
        start = max(span_start, pos)
        if start >= end:
            continue
        out.append(text[pos:start])
        out.append(_MASK)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def server_ports(params: Mapping[str, Any]) -> Tuple[int, ...]:
    """The server ports a connection may go to (``port=5432,5433``; default 5432)."""
    given = params.get("port") or os.environ.get("PGPORT") or ""
    ports = [int(p) for p in (part.strip() for part in str(given).split(",")) if p.isdigit()]
    return tuple(ports) or (5432,)
