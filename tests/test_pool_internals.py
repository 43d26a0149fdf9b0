"""The CPython-private parts of ``multiprocessing`` that the pool engine relies on, all in
``crawler_plugins.pool.cpython_internals``: present on the Python running these tests, and a
Python without one of them gets a one-line error, not a hang.  (That each repair works is
tested in test_pool_engine.py: workers killed mid-fetch, holding a queue lock, mid-write.)
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import threading
import time
import types

import psutil
import pytest

import crawler
from crawler.errors import CrawlerError
from crawler.plugins import engines, get_plugin_manager
from crawler_plugins.pool import cpython_internals
from crawler_plugins.pool.cpython_internals import TrackedPool


def context():
    return multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")


@pytest.fixture
def pool():
    started = TrackedPool(2, context=context())
    yield started
    started.terminate()
    started.join()


def test_every_internal_the_pool_engine_relies_on_exists_on_this_python(pool):
    assert cpython_internals.missing(pool) == []
    assert len(pool.workers_started) == 2  # Pool starts its workers through Process, which TrackedPool overrides
    # ... and each is what the helpers use it as.
    assert isinstance(pool._worker_handler, threading.Thread) and hasattr(pool._worker_handler, "_state")
    assert callable(pool._change_notifier.put)
    for lock in (pool._inqueue._rlock, pool._outqueue._wlock):
        assert callable(lock.acquire) and callable(lock.release)
    assert isinstance(pool._outqueue._writer.fileno(), int)
    assert set(pool._pool) <= set(pool.workers_started)
    assert multiprocessing.pool.TERMINATE != multiprocessing.pool.RUN


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
def test_the_forkserver_preloads_the_worker_and_its_client_only_for_a_run_with_the_pool():
    import subprocess
    import sys

    script = (
        "import sys; from crawler import processes; from crawler.pipeline import preload_for;"
        "from crawler.plugins import engines, get_plugin_manager;"
        "found = engines(get_plugin_manager()); print(processes._FORKSERVER_PRELOAD);"
        "preload_for([found[name] for name in sys.argv[1:]]); print(processes._FORKSERVER_PRELOAD)"
    )
    listed, asyncio_run = subprocess.run([sys.executable, "-c", script, "asyncio"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert listed == asyncio_run == "['__main__']"  # importing every engine, and running asyncio: nothing more
    _, pool_run = subprocess.run([sys.executable, "-c", script, "asyncio", "pool"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert pool_run == "['__main__', 'crawler_plugins.pool.worker', 'crawler.requests_exchange']"


@pytest.mark.parametrize("python", [("cpython", (3, 16)), ("cpython", (3, 10)), ("pypy", (3, 11))])
def test_a_python_whose_sources_were_not_checked_is_refused(pool, python):
    assert cpython_internals.missing(pool, python) == ["CPython 3.11 to 3.15 (the versions whose sources were checked)"]
    assert cpython_internals.missing(pool, ("cpython", (3, 15))) == []


def test_a_python_lacking_one_gets_a_one_line_error_and_no_process_left(monkeypatch):
    TrackedPool(1, context=context()).terminate()  # warm-up: the forkserver and resource tracker outlive runs
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    monkeypatch.setitem(cpython_internals.POOL_INTERNALS, "_gone_in_a_later_python", "a part this Python lacks")
    pool = engines(get_plugin_manager())["pool"]
    with pytest.raises(CrawlerError) as raised:
        list(pool.fetch(["http://127.0.0.1:9/never-fetched"], crawler.Settings(concurrency=2)))
    message = str(raised.value)
    assert "\n" not in message and "Pool._gone_in_a_later_python" in message and "-e threads" in message
    deadline = time.monotonic() + 10
    while (left := [p for p in psutil.Process().children(recursive=True) if p.pid not in before]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in left if p.status() != psutil.STATUS_ZOMBIE] == []


def test_a_pool_that_does_not_start_workers_through_process_is_refused():
    # Every private part there, but no worker seen starting: TrackedPool would be blind to deaths.
    not_tracking = _namespace_with(cpython_internals.POOL_INTERNALS, workers_started=[])
    assert cpython_internals.missing(not_tracking) == ["multiprocessing.pool.Pool.Process (the pool started its workers without it)"]


def _namespace_with(dotted_names, **extra) -> types.SimpleNamespace:
    """An object on which every dotted name resolves."""
    root = types.SimpleNamespace(**extra)
    for name in dotted_names:
        obj = root
        for part in name.split("."):
            if not hasattr(obj, part):
                setattr(obj, part, types.SimpleNamespace())
            obj = getattr(obj, part)
    return root


def test_the_repairs_skip_what_is_missing_instead_of_raising():
    bare = types.SimpleNamespace(workers_started=[])
    cpython_internals.stop_replacing_workers(bare)
    cpython_internals.free_orphaned_locks(bare)
    cpython_internals.unjam_result_pipe(bare)
    assert cpython_internals.all_workers(bare) == []
