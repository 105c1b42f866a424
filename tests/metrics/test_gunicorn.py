"""Prometheus metrics of a multiprocess server (issue 17): examples/gunicorn_app.py
under a real gunicorn with several workers, against real PostgreSQL, scraped
over HTTP; every worker's pool is a series of its own (``pid``) and they add
up to what the app served."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import DEADLINE, wait_until

from .test_prometheus import free_port

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
WORKERS = 3

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def children(pid: int) -> Set[int]:
    """The processes whose parent is ``pid`` (gunicorn's workers)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        return str(response.read().decode())


def samples_of(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def by_pid(samples: Samples, name: str, **labels: str) -> Dict[int, float]:
    """pid -> value of metric ``name`` for the pool ``web`` (and ``labels``)."""
    want = {"pool_name": "web", **labels}
    found = {}
    for (sample, keys), value in samples.items():
        attrs = dict(keys)
        if sample == name and all(attrs.get(k) == v for k, v in want.items()):
            found[int(attrs["pid"])] = value
    return found


@pytest.fixture
def gunicorn(postgres_dsn: str, tmp_path: Path) -> Iterator[Tuple[str, subprocess.Popen[str]]]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PGRESERVOIR_DSN": postgres_dsn,
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    server = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn",
            "--workers", str(WORKERS),
            "--bind", f"127.0.0.1:{port}",
            "--chdir", str(EXAMPLES),
            "--graceful-timeout", "5",
            "gunicorn_app:app",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        try:
            get(base + "/")
        except (urllib.error.URLError, ConnectionError):
            return False
        return len(children(server.pid)) == WORKERS

    try:
        wait_until(up, "gunicorn and its workers to serve", timeout=60)
        yield base, server
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(DEADLINE)


def test_every_workers_pool_is_scraped_and_they_add_up(
    gunicorn: Tuple[str, subprocess.Popen[str]],
) -> None:
    base, server = gunicorn
    workers = children(server.pid)
    served: List[int] = [int(get(base + "/")) for _ in range(40)]
    assert set(served) <= workers
    total = 40 + 1  # and the readiness probe's first query

    def settled() -> bool:
        samples = samples_of(get(base + "/metrics"))
        uses = by_pid(samples, "db_client_connection_use_time_seconds_count")
        used = by_pid(samples, "db_client_connection_count", state="used")
        idle = by_pid(samples, "db_client_connection_count", state="idle")
        # Every worker's file written since its last request ended, and since
        # its pool opened min_size (a worker that served nothing may have
        # booted last, its first connect still under way).
        return (
            set(uses) == workers
            and sum(uses.values()) >= total
            and not any(used.values())
            and all(idle.get(pid, 0) >= 1 for pid in workers)
        )

    wait_until(settled, "every worker's pool in the scrape")
    samples = samples_of(get(base + "/metrics"))
    uses = by_pid(samples, "db_client_connection_use_time_seconds_count")
    waits = by_pid(samples, "db_client_connection_wait_time_seconds_count")
    queries = samples[("app_queries_total", ())]
    # Each query checked out and returned one connection, in one worker.
    assert sum(uses.values()) == sum(waits.values()) == queries
    assert by_pid(samples, "db_client_connection_max") == dict.fromkeys(workers, 4)
    idle = by_pid(samples, "db_client_connection_count", state="idle")
    used = by_pid(samples, "db_client_connection_count", state="used")
    assert set(idle) == set(used) == workers
    assert all(idle[pid] >= 1 and used[pid] == 0 for pid in workers), (idle, used)
    creates = by_pid(samples, "db_client_connection_create_time_seconds_count")
    assert set(creates) == workers
    assert all(count >= 1 for count in creates.values())

    # A worker killed: its series go with it; gunicorn's replacement shows up.
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = children(server.pid)
        if victim in now or len(now) != WORKERS:
            return False
        try:
            get(base + "/")  # the new worker builds its pool on import
            uses = by_pid(samples_of(get(base + "/metrics")), "db_client_connection_max")
        except (urllib.error.URLError, ConnectionError):
            return False
        return set(uses) == now

    wait_until(replaced, "the killed worker's series to go and its replacement's to come")
