"""The pytest plugin under its former name; it lives in :mod:`pgreservoir.testing.plugin`.

Kept so that ``pytest_plugins = ["pgreservoir.testing_plugin"]`` in existing
``conftest.py`` files keeps working. Do not list both names: the installed
``pytest11`` entry point already registers :mod:`pgreservoir.testing.plugin`.
"""

from __future__ import annotations

from .testing.plugin import postgres_dsn, postgres_server

__all__ = ["postgres_dsn", "postgres_server"]
