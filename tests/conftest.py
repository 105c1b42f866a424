"""Test-suite set-up: load the pgreservoir pytest plugin (throwaway PostgreSQL servers).

When pgreservoir is installed, its ``pytest11`` entry point has already
registered the plugin; when the tests run from a source tree, load it here.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    manager = config.pluginmanager
    names = ("pgreservoir", "pgreservoir.testing.plugin", "pgreservoir.testing_plugin")
    if not any(manager.has_plugin(name) for name in names):
        manager.import_plugin("pgreservoir.testing.plugin")
