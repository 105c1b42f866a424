"""share_pools() and PoolCollector(directory=): one file per process, a pid
label per series, a forked child writing its own file, exited processes
dropped (issue 17)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Dict, Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgreservoir import ConnectionPool, flush_metrics
from pgreservoir.prometheus import PoolCollector, share_pools, stop_sharing
from support import DEADLINE, wait_until


def uses_by_pid(directory: Path, name: str) -> Dict[int, float]:
    registry = CollectorRegistry()
    registry.register(PoolCollector(directory=str(directory)))
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if (
                sample.name == "db_client_connection_use_time_seconds_count"
                and sample.labels["pool_name"] == name
            ):
                found[int(sample.labels["pid"])] = sample.value
    return found


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "pools"
    share_pools(str(directory))
    try:
        yield directory
    finally:
        stop_sharing(str(directory))


def test_a_forked_child_writes_its_own_file_and_goes_when_it_exits(
    postgres_dsn: str, shared: Path
) -> None:
    name = f"share-{uuid.uuid4().hex[:8]}"
    pool = ConnectionPool(postgres_dsn, min_size=1, name=name)
    try:
        with pool.connection():
            pass
        flush_metrics()
        assert uses_by_pid(shared, name) == {os.getpid(): 1}

        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one more checkout, then wait for the word
            code = 1
            try:
                os.close(go_w)
                with pool.connection(timeout=DEADLINE):
                    pass
                os.read(go_r, 1)
                code = 0
            finally:
                os._exit(code)
        os.close(go_r)
        try:
            # The child's pool counts on from what it inherited: 1, then its own.
            wait_until(
                lambda: uses_by_pid(shared, name) == {os.getpid(): 1, pid: 2},
                "the child's own file",
            )
        finally:
            os.write(go_w, b"x")
            os.close(go_w)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # Exited: its series are gone, its file removed.
        assert uses_by_pid(shared, name) == {os.getpid(): 1}
        assert not (shared / f"pools-{pid}.json").exists()
    finally:
        pool.close()


def test_stop_sharing_removes_this_process_file(postgres_dsn: str, tmp_path: Path) -> None:
    directory = tmp_path / "pools"
    share_pools(str(directory))
    mine = directory / f"pools-{os.getpid()}.json"
    assert mine.exists()
    json.loads(mine.read_text())  # a whole document, written atomically
    stop_sharing(str(directory))
    assert not mine.exists()


def test_foreign_and_broken_files_never_fail_a_scrape(tmp_path: Path) -> None:
    directory = tmp_path / "pools"
    directory.mkdir()
    (directory / f"pools-{os.getpid()}.json").write_text("{not json")
    (directory / "pools-abc.json").write_text("{}")
    (directory / "other.db").write_text("prometheus_client's own")
    assert uses_by_pid(directory, "anything") == {}
