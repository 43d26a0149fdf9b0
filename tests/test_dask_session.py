"""The dask engine keeps one cluster for a whole crawl, every ``--depth`` level included (issue 12)."""

from __future__ import annotations

import time

import psutil
import pytest

distributed = pytest.importorskip("distributed")

from test_following import sites  # noqa: E402,F401  (the fixture)

import crawler  # noqa: E402
from crawler.pipeline import RunOptions, run_engine  # noqa: E402
from crawler_plugins.dask.cluster import Connection  # noqa: E402
from crawler_plugins.dask.engine import DaskEngine  # noqa: E402


def _children() -> set[int]:
    """Our child processes, but multiprocessing's helpers (resource tracker, forkserver), which live as long as we do."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.is_running() and not any("resource_tracker" in part or "forkserver" in part for part in child.cmdline()):
                found.add(child.pid)
        except psutil.Error:
            pass
    return found


def test_one_local_cluster_for_every_level_of_a_deep_crawl(sites, monkeypatch):  # noqa: F811
    opened = []
    real_open = Connection.open

    def counted_open(self):
        opened.append(self.options.scheduler)
        return real_open(self)

    monkeypatch.setattr(Connection, "open", counted_open)
    main, _ = sites
    engine = DaskEngine()
    before = _children()
    records: list[dict] = []
    settings = crawler.Settings(timeout=5.0, engine_options={"workers": "1"})
    stats = run_engine(engine, [main.url("/")], settings, RunOptions(parse_workers=0, depth=2), records.append)
    assert sorted((r["url"], r["depth"]) for r in records) == sorted(
        [(main.url("/"), 0), (main.url("/a"), 1), (main.url("/b"), 1), (main.url("/c"), 2), (main.url("/d?q=1"), 2)]
    )
    assert opened == [None]  # three levels, one LocalCluster
    assert stats.engine_stats["session"] is True and stats.engine_stats["cluster"].startswith("LocalCluster")
    assert engine._session is None  # closed with the run
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # its worker processes are gone with it
        left = _children() - before
        if not left:
            break
        time.sleep(0.2)
    assert not left


def test_fetch_outside_a_session_still_opens_and_closes_its_own_cluster(sites, dask_scheduler, monkeypatch):  # noqa: F811
    opened = []
    real_open = Connection.open
    monkeypatch.setattr(Connection, "open", lambda self: (opened.append(1), real_open(self))[1])
    main, _ = sites
    settings = crawler.Settings(timeout=5.0, engine_options={"scheduler": dask_scheduler})
    engine = DaskEngine()
    for _ in range(2):  # a plugin caller without the pipeline: each fetch() connects on its own
        [result] = list(engine.fetch([main.url("/d")], settings))
        assert result.ok
    assert opened == [1, 1]
