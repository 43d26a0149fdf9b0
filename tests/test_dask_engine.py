"""The ``dask`` engine: fetch and parse on a Dask cluster (issue 7), what is its own.

The shared suites (conformance, following, politeness, hostile) run this
engine in full themselves: conftest gives it the session's cluster.  Here is
what only dask has: parsing on the workers, politeness over a cluster,
batches, faults, its options and its figures.

Everything runs against local servers and a LocalCluster on 127.0.0.1.
Most tests share one session LocalCluster (2 single-threaded worker
processes) through ``--engine-opt scheduler=...``, the way a real cluster is
used; the ``--demo`` test lets the run start and close its own.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

distributed = pytest.importorskip("distributed")

from conftest import by_url, run_records  # noqa: E402
from test_politeness import watcher  # noqa: E402,F401  (the fixture)

import crawler  # noqa: E402
import crawler.plugins  # noqa: E402
import crawler_plugins.dask  # noqa: E402
from crawler.errors import CrawlerError  # noqa: E402
from crawler.pipeline import RunOptions, make_record, run_engine  # noqa: E402
from crawler_plugins.dask import options as dask_options  # noqa: E402
from crawler_plugins.dask import run as dask_run  # noqa: E402
from crawler_plugins.dask import worker as dask_worker  # noqa: E402
from crawler_plugins.dask.engine import DaskEngine  # noqa: E402


@pytest.fixture
def dask_client(dask_scheduler):
    with distributed.Client(dask_scheduler, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=30)  # a worker killed by an earlier test is back
        yield client


def on(scheduler: str, urls, **settings) -> list[dict]:
    """run_records for the dask engine on the shared cluster."""
    options = {"scheduler": scheduler, **settings.pop("engine_options", {})}
    return run_records("dask", urls, engine_options=options, **settings)


def run_dask(scheduler: str, urls, progress=None, **settings):
    """The real pipeline on the shared cluster: (records, stats)."""
    records: list[dict] = []
    options = {"scheduler": scheduler, **settings.pop("engine_options", {})}
    settings.setdefault("timeout", 5.0)
    settings.setdefault("backoff_base", 0.05)
    engine = DaskEngine()
    stats = run_engine(
        engine, urls, crawler.Settings(engine_options=options, **settings), RunOptions(parse_workers=0), records.append, progress
    )
    return records, stats


# --- politeness over the cluster ---------------------------------------------------------


def test_per_host_limit_holds_over_the_whole_cluster(watcher, dask_scheduler):  # noqa: F811
    site = watcher()
    urls = [site.url(f"/p{i}?s=0.05") for i in range(40)]
    records, stats = run_dask(dask_scheduler, urls, concurrency=8, per_host=2, engine_options={"batch": "4"})
    assert all(r["ok"] for r in records) and len(records) == 40
    assert site.peak == 2  # ten tasks over two workers, and never more than 2 at the server
    assert stats.summary()["engine_stats"]["host_partition"] is True


def test_robots_is_read_once_per_worker_process_at_most(watcher, dask_scheduler):  # noqa: F811
    site = watcher((200, "User-agent: *\nDisallow: /private\n"))
    urls = [site.url(f"/p{i}?s=0.02") for i in range(30)] + [site.url("/private/x")]
    records, stats = run_dask(dask_scheduler, urls, concurrency=8, engine_options={"batch": "3"})
    assert by_url(records)[site.url("/private/x")]["error"] == "robots"
    assert sum(r["ok"] for r in records) == 30
    assert 1 <= len(site.robots_agents) <= 2  # two worker processes
    figures = stats.summary()["engine_stats"]
    assert figures["host_partition"] is False and len(figures["records_per_worker"]) == 2


def test_crawl_delay_is_spread_over_the_worker_processes():
    gate = dask_worker.ClusterGate(None, 0.0, True, "agent", 3)
    gate.learn_robots("h:80", 200, "User-agent: *\nCrawl-delay: 0.5\n")
    assert gate.try_start("h:80") == 0.0
    gate.finish("h:80")
    assert 1.4 < gate.try_start("h:80") <= 1.5  # 3 processes x 0.5 s


# --- parsed on the workers, recorded by the client ---------------------------------------


def test_records_are_those_the_local_pipeline_writes(server, raw_server, dask_scheduler):
    urls = [
        server.url("/page/same"),
        server.url("/redirect/2"),
        server.url("/status/404"),
        server.url("/gzip"),
        server.url("/image"),
        server.url("/latin1"),
        server.url("/big?n=5000"),
        raw_server.url("/reset-mid-body"),
        "not a url",
    ]
    local = by_url(run_records("asyncio", urls, max_bytes=4500, retries=0))
    remote = by_url(on(dask_scheduler, urls, max_bytes=4500, retries=0))
    for url in urls:
        mine, theirs = dict(remote[url]), dict(local[url])
        assert mine.pop("engine") == "dask" and theirs.pop("engine") == "asyncio"
        mine.pop("fetch_ms"), theirs.pop("fetch_ms")
        assert mine == theirs, url


def test_a_page_the_parser_fails_on_gets_the_record_the_local_pipeline_writes(server, monkeypatch):
    from crawler import parse
    from crawler_plugins.asyncio_engine import AsyncioEngine

    settings = crawler.Settings(timeout=5.0)
    [fetched] = list(AsyncioEngine().fetch([server.url("/page/boom")], settings))
    local = make_record("e", fetched, parse_error="ValueError: boom")

    def broken(url, body, content_type, *more):
        raise ValueError("boom")

    monkeypatch.setattr(parse, "parse_page", broken)
    outcome = dask_worker.run_batch(7, [server.url("/page/boom")], settings, (True, False), None)  # the task, run here
    [slim] = outcome["results"]
    assert slim.body == b"" and slim.size == len(fetched.body)
    remote = make_record("e", slim, dict(slim.parsed))  # as the pipeline does with a result it need not parse
    local.pop("fetch_ms"), remote.pop("fetch_ms")
    assert remote == local and remote["error"] == "parse" and remote["detail"] == "ValueError: boom"
    # the failed parse is counted as parse CPU, a part of the task's
    assert outcome["id"] == 7 and outcome["cpu_s"] > outcome["parse_cpu_s"] > 0


@pytest.mark.parametrize("links", ["0", "1"])
def test_bodies_stay_on_the_workers(links, server, dask_scheduler):
    engine = DaskEngine()
    settings = crawler.Settings(engine_options={"scheduler": dask_scheduler, "links": links})
    results = {r.url: r for r in engine.fetch([server.url("/gzip"), server.url("/image"), "not a url"], settings)}
    assert len(results) == 3
    for result in results.values():
        assert result.body == b"" and set(result.parsed) - {"link_urls"} == set(crawler.parse.PARSE_FIELDS)
    assert results[server.url("/image")].size == 8 + 1024
    assert ("link_urls" in results[server.url("/gzip")].parsed) == (links == "1")  # for --depth


def test_no_parse_option_hashes_but_does_not_parse(server, dask_scheduler):
    [record] = on(dask_scheduler, [server.url("/page/raw")], engine_options={"parse": "no"})
    assert record["ok"] and record["title"] is None and record["words"] is None and record["sha256"]


# --- bounded, streaming, reported ---------------------------------------------------------


def test_reads_urls_lazily_and_streams_batches(server, dask_scheduler):
    pulled = [0]

    def lines():
        for i in range(400):
            pulled[0] += 1
            yield server.url(f"/page/lazy{i}")

    engine = DaskEngine()
    settings = crawler.Settings(concurrency=8, engine_options={"scheduler": dask_scheduler, "batch": "10"})
    results = engine.fetch(lines(), settings)
    next(results)
    # 2 workers x 1 thread: 2 x 2 batches of 10 in flight, one more read as the first came back
    assert pulled[0] <= 50
    rest = list(results)
    assert len(rest) == 399 and pulled[0] == 400


def test_report_counts_records_per_worker_and_remote_cpu(server, dask_scheduler):
    urls = [server.url(f"/page/w{i}") for i in range(120)]
    records, stats = run_dask(dask_scheduler, urls, engine_options={"batch": "8"})
    assert len(records) == 120 and all(r["ok"] for r in records)
    figures = stats.summary()["engine_stats"]
    assert sum(figures["records_per_worker"].values()) == 120
    assert len(figures["records_per_worker"]) == 2 and figures["workers"] == 2
    assert figures["batches"] == 15 and figures["batch"] == 8
    # the session cluster's workers are not this run's children: their CPU is remote, added to cpu_s
    assert figures["remote_cpu_s"] > 0 and figures["task_cpu_s"] > figures["remote_parse_cpu_s"] > 0
    assert stats.summary()["cpu_s"] == pytest.approx(stats.cpu_s + figures["remote_cpu_s"])


@pytest.mark.slow
def test_client_memory_stays_flat_from_2000_to_20000_urls(refused_port, dask_scheduler):
    """Reduced form of the memory check: the client process's peak RSS for 20,000 lines vs 2,000.

    Lines that are not http(s) URLs make each fetch instant, so the client's side
    (batching, submission, results, records) is what is measured.  The
    session cluster's scheduler runs in this process too, so it is included.
    """
    me = psutil.Process()

    def peak_rss(n: int) -> int:
        peak = [me.memory_info().rss]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.02):
                peak[0] = max(peak[0], me.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        count = [0]

        def write(record):
            count[0] += 1

        lines = (f"ftp://127.0.0.1:{refused_port}/{i}" for i in range(n))  # invalid_url, at once, on a worker
        settings = crawler.Settings(retries=0, timeout=2.0, robots=False, engine_options={"scheduler": dask_scheduler})
        run_engine(DaskEngine(), lines, settings, RunOptions(parse_workers=0), write)
        stop.set()
        sampler.join()
        assert count[0] == n
        return peak[0]

    peak_rss(2000)  # warm-up: imports, caches, the scheduler's first tasks
    small = peak_rss(2000)
    large = peak_rss(20000)
    assert large - small < 12 * 2**20, (small / 2**20, large / 2**20)


# --- options and the registry ------------------------------------------------------------


def test_bad_engine_options_are_usage_errors():
    for options in ({"batch": "0"}, {"batch": "many"}, {"parse": "maybe"}, {"links": "2"}, {"connect_timeout": "-1"}):
        with pytest.raises(CrawlerError, match="--engine-opt"):
            next(DaskEngine().fetch([], crawler.Settings(engine_options=options)))


class _Asked(dict):
    """engine_options that note every key looked up."""

    def __init__(self, **given):
        super().__init__(**given)
        self.asked = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)


def test_the_engine_declares_exactly_the_keys_it_reads():
    raw = _Asked(batch="8")
    dask_options.Options.from_settings(crawler.Settings(engine_options=raw))
    assert raw.asked == set(DaskEngine.options)
    assert all(isinstance(text, str) and text and "\n" not in text for text in DaskEngine.options.values())


def test_links_travel_back_when_the_pipeline_wants_them_unless_told():
    def links(**given):
        options = given.pop("engine_options", {})
        return dask_options.Options.from_settings(crawler.Settings(engine_options=options).with_run(**given)).links

    assert links() is False and links(want_links=True) is True
    assert links(want_links=True, engine_options={"links": "0"}) is False and links(engine_options={"links": "1"}) is True


def test_the_worker_gets_the_asyncio_engine_from_the_registry_once(monkeypatch):
    made = []
    real = crawler.plugins.get_plugin_manager
    monkeypatch.setattr(crawler.plugins, "get_plugin_manager", lambda *a, **k: made.append(1) or real(*a, **k))
    monkeypatch.setattr(dask_worker, "_engine", None)  # as in a fresh worker process
    engine = dask_worker.asyncio_engine()
    assert engine.name == "asyncio" and dask_worker.asyncio_engine() is engine and made == [1]


def test_no_module_of_the_package_imports_another_plugin():
    for path in pathlib.Path(crawler_plugins.dask.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1 and not (node.module or "").startswith("crawler_plugins"), (path.name, node.module)
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("crawler_plugins") for alias in node.names), path.name


# --- faults -------------------------------------------------------------------------------


class _Gone:
    address = "tcp://127.0.0.1:1"


class _FinishedTask:
    """Stands for a distributed Future that has finished (or failed)."""

    def __init__(self, key: str, error: BaseException | None = None, value=None):
        self.key, self.error, self.value = key, error, value

    def result(self, timeout=None):
        if self.error is not None:
            raise self.error
        return self.value

    def release(self):
        pass


def test_a_batch_that_keeps_killing_workers_is_split_and_only_the_culprit_fails():
    run = dask_run.Run(dask_options.Options.from_settings(crawler.Settings()), crawler.Settings())
    killed = distributed.scheduler.KilledWorker("crawl-x", _Gone(), 3)
    batch = dask_run.Batch(5, ["http://a.test/1", "http://a.test/poison", "http://a.test/3"])
    run.in_flight[5] = (batch, _FinishedTask("crawl-tok-5-0", killed))
    assert list(run._take(_FinishedTask("crawl-tok-5-0", killed))) == []  # nothing yet: split for re-runs
    assert [again.urls for again in run.retry] == [[url] for url in batch.urls] and run.figures.split == 1
    # the re-run of the poison URL kills workers again: it alone gets a record
    run.retry.clear()
    single = dask_run.Batch(9, ["http://a.test/poison"], kills=1)
    run.in_flight[9] = (single, _FinishedTask("crawl-tok-9-3", killed))
    [record] = list(run._take(_FinishedTask("crawl-tok-9-3", killed)))
    assert record.url == "http://a.test/poison" and record.error == "other" and "died" in record.detail
    assert not run.retry and not run.in_flight
    # a stale completion (an earlier submission of a batch) is never taken
    run.in_flight[11] = (dask_run.Batch(11, ["http://a.test/x"]), _FinishedTask("crawl-tok-11-8"))
    assert list(run._take(_FinishedTask("crawl-tok-11-7", value={"results": ["doubled"]}))) == []
    assert 11 in run.in_flight


@pytest.mark.slow
@pytest.mark.parametrize("pinned", [False, True], ids=["spread", "hosts-pinned"])
def test_a_worker_killed_mid_run_loses_nothing_and_doubles_nothing(pinned, server, dask_client, dask_scheduler):
    """SIGKILL a worker in the middle of its batch: every line still gets exactly one record.

    Spread (robots.txt only): the scheduler re-runs the lost task elsewhere.
    Pinned (--per-host: each host's batches are restricted to one worker):
    the client sees the worker leave and partitions its batches anew.
    """
    urls = [server.url(f"/delay?s=0.2&i={i}") for i in range(120)]
    pids = dask_client.run(os.getpid)
    workers = sorted(pids)
    victim = pids[workers[dask_run.host_hash(urls[0]) % len(workers)]] if pinned else pids[workers[0]]
    killed = []

    def progress(record):
        if not killed:  # the first batch is back: the victim is busy with its next one
            os.kill(victim, signal.SIGKILL)
            killed.append(time.monotonic())

    extra = {"per_host": 8} if pinned else {}  # pinned: one host, so one worker fetches it all
    records, stats = run_dask(dask_scheduler, urls, progress, concurrency=16, engine_options={"batch": "8"}, **extra)
    assert killed
    assert sorted(r["url"] for r in records) == sorted(urls)  # each line exactly once
    assert all(r["ok"] for r in records), [r for r in records if not r["ok"]][:3]
    assert stats.accounting_error is None
    figures = stats.summary()["engine_stats"]
    assert figures["host_partition"] is pinned
    if pinned:
        assert figures["resubmitted"] >= 1  # the client moved the dead worker's batches
    dask_client.wait_for_workers(2, timeout=30)  # the nanny restarts it for the next tests


def test_a_scheduler_lost_mid_run_ends_it_with_a_usage_error_not_a_hang(server):
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None, silence_logs=logging.ERROR,
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
    )  # fmt: skip
    records: list[dict] = []

    def progress(record):
        if len(records) == 1:  # the first batch is written: the scheduler goes away
            threading.Thread(target=cluster.close, daemon=True).start()

    urls = [server.url(f"/delay?s=0.1&i={i}") for i in range(200)]
    options = {"scheduler": cluster.scheduler_address, "batch": "8", "connect_timeout": "1"}
    settings = crawler.Settings(concurrency=4, timeout=5.0, engine_options=options)
    started = time.monotonic()
    try:
        with pytest.raises(CrawlerError, match="lost the Dask scheduler"):
            run_engine(DaskEngine(), urls, settings, RunOptions(parse_workers=0), records.append, progress)
    finally:
        cluster.close()
    assert 8 <= len(records) < 200 and time.monotonic() - started < 20


@pytest.mark.slow
def test_unreachable_scheduler_is_a_one_line_usage_error(tmp_path, refused_port, server):
    urls = tmp_path / "urls.txt"
    urls.write_text(server.url("/page/a") + "\n")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "crawler", str(urls), "-e", "dask", "-q",
         "--engine-opt", f"scheduler=tcp://127.0.0.1:{refused_port}", "--engine-opt", "connect_timeout=2"],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"crawl: error: cannot reach Dask scheduler tcp://127.0.0.1:{refused_port}: ")
    assert "after 2 s" in lines[0]
    # dask's own default would wait 30 s; start-up (dask's imports) on a loaded machine takes several
    assert elapsed < 25


def test_the_scheduler_is_given_five_seconds_by_default():
    options = dask_options.Options.from_settings(crawler.Settings(engine_options={"scheduler": "tcp://127.0.0.1:1"}))
    assert options.connect_timeout == 5.0 and options.batch == dask_options.DEFAULT_BATCH


# --- the command line ---------------------------------------------------------------------

WITHOUT_DASK = "import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None; from crawler.cli import main; main()"


@pytest.mark.slow
def test_without_the_extra_dask_is_listed_unavailable_and_refused(tmp_path, server):
    def crawl(*args):
        return subprocess.run([sys.executable, "-c", WITHOUT_DASK, *args], capture_output=True, text=True, timeout=60)

    listed = crawl("--list-engines")
    assert listed.returncode == 0, listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if line.startswith("dask ")]
    assert "unavailable: pip install 'crawler[dask]'" in line
    urls = tmp_path / "urls.txt"
    urls.write_text(server.url("/page/a") + "\n")
    refused = crawl(str(urls), "-e", "dask", "-q")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "dask" in refused.stderr and "pip install 'crawler[dask]'" in refused.stderr
    every = crawl(str(urls), "-e", "all", "-q", "--no-parse", "-c", "2")
    assert every.returncode == 0, every.stderr
    assert "skipping dask (pip install 'crawler[dask]')" in every.stderr


@pytest.mark.slow
def test_demo_starts_and_closes_its_own_local_cluster(tmp_path):
    report = tmp_path / "r.json"
    out = tmp_path / "r.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "crawler", "--demo", "--demo-pages", "200", "-e", "dask", "-q",
         "--report", str(report), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    [figures] = json.loads(report.read_text())["engines"]
    assert figures["engine"] == "dask" and figures["ok"] == 200 and figures["accounting_error"] is None
    stats = figures["engine_stats"]
    assert stats["cluster"].startswith("LocalCluster(") and stats["workers"] == (os.cpu_count() or 1)
    assert sum(stats["records_per_worker"].values()) == 200
    assert stats["remote_cpu_s"] is None  # its workers were its children, counted in cpu_s already
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 200 and all(r["title"] and r["simhash"] for r in records)
    # nothing of the run survives it: no worker, nanny, site or helper process in its session
    deadline = time.monotonic() + 10
    while True:
        left = [p for p in psutil.process_iter() if _session(p) == process.pid]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == []


def _session(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:
        return None
