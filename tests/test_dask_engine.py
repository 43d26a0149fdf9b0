"""The ``dask`` engine: fetch and parse on a Dask cluster (issue 7).

Everything runs against local servers and a LocalCluster on 127.0.0.1.
Most tests share one session LocalCluster (2 single-threaded worker
processes) through ``--engine-opt scheduler=...``, the way a real cluster is
used; the ``--demo`` test lets the run start and close its own.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

distributed = pytest.importorskip("distributed")

import conftest  # noqa: E402
import test_conformance as conformance  # noqa: E402
import test_following as following  # noqa: E402
import test_politeness as politeness  # noqa: E402
from conftest import by_url, run_records  # noqa: E402
from test_following import sites  # noqa: E402,F401  (the fixture, for the following cases)
from test_politeness import watcher  # noqa: E402,F401  (the fixture, for the politeness cases)

import crawler  # noqa: E402
from crawler.errors import CrawlerError  # noqa: E402
from crawler.pipeline import RunOptions, make_record, run_engine  # noqa: E402
from crawler_plugins.dask import run as dask_engine  # noqa: E402

if not hasattr(conftest, "dask_scheduler"):  # until conftest has its own (see the patch in issue 7)

    @pytest.fixture(scope="session")
    def dask_scheduler():
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR,
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},  # not 8787: it may be taken
        ) as cluster:
            yield cluster.scheduler_address


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
    engine = dask_engine.DaskEngine()
    stats = run_engine(
        engine, urls, crawler.Settings(engine_options=options, **settings), RunOptions(parse_workers=0), records.append, progress
    )
    return records, stats


# --- the conformance suite, a representative subset --------------------------------------

CONFORMANCE_CASES = [
    "test_one_record_per_line_duplicates_and_invalid_lines",
    "test_http_error_statuses",
    "test_redirect_sets_final_url",
    "test_redirect_to_other_schemes_is_an_error_and_never_followed",
    "test_refused_port_is_connect",
    "test_slow_response_is_timeout",
    "test_503_then_200_with_one_retry",
    "test_body_over_max_bytes_is_too_large",
    "test_gzip_bomb_is_too_large",
    "test_gzip_and_deflate_are_decoded",
    "test_latin1_page_declared_by_meta_charset",
    "test_image_has_null_parse_fields",
    "test_chunked_response",
    "test_user_agent_is_sent",
    "test_concurrency_overlaps_waiting",
    "test_reset_mid_body_is_protocol",
    "test_garbage_instead_of_a_status_line_is_protocol",
    "test_hostile_url_lines_each_get_a_record",
]


POLITENESS_CASES = [
    ("test_per_host_limit_holds_at_the_server", {}),
    ("test_delay_spaces_request_starts", {}),
    ("test_robots_disallow_and_user_agent", {}),
    ("test_robots_crawl_delay_is_honoured", {}),
    ("test_robots_4xx_allows_5xx_disallows", {"status": 404, "allowed": True}),
    ("test_robots_4xx_allows_5xx_disallows", {"status": 503, "allowed": False}),
    ("test_no_robots_never_asks", {}),
    ("test_limits_hold_per_host_not_globally", {}),
]


def run_shared_case(module, case: str, given: dict, request, monkeypatch, scheduler: str) -> None:
    """Run a test written for every engine against the dask engine on the shared cluster."""
    test = getattr(module, case)
    monkeypatch.setattr(module, "run_records", lambda engine, urls, **settings: on(scheduler, urls, **settings))
    names = [name for name in inspect.signature(test).parameters if name != "engine_name" and name not in given]
    test("dask", **given, **{name: request.getfixturevalue(name) for name in names})


# Once conftest gives the dask engine a shared cluster (ENGINE_SETTINGS_FIXTURES), the shared
# suites run it in full themselves, and these subsets would only repeat them.
SHARED_SUITES_RUN_DASK = "dask" in getattr(conftest, "ENGINE_SETTINGS_FIXTURES", {})
subset = pytest.mark.skipif(SHARED_SUITES_RUN_DASK, reason="the shared suites run the dask engine themselves")


@subset
@pytest.mark.parametrize("case", CONFORMANCE_CASES)
def test_conformance_case(case, request, monkeypatch, dask_scheduler):
    run_shared_case(conformance, case, {}, request, monkeypatch, dask_scheduler)


FOLLOWING_CASES = [
    "test_depth_two_same_host_gives_exactly_the_expected_records",
    "test_any_host_follows_other_hosts",
    "test_max_pages_bounds_what_is_queued",
]


@subset
@pytest.mark.parametrize("case", FOLLOWING_CASES)
def test_following_case(case, request, monkeypatch, dask_scheduler):
    run_shared_case(following, case, {}, request, monkeypatch, dask_scheduler)


@subset
@pytest.mark.parametrize("case, given", POLITENESS_CASES, ids=[f"{c}{list(g.values()) or ''}" for c, g in POLITENESS_CASES])
def test_politeness_case(case, given, request, monkeypatch, dask_scheduler):
    run_shared_case(politeness, case, given, request, monkeypatch, dask_scheduler)


def test_per_host_limit_holds_over_the_whole_cluster(watcher, dask_scheduler):
    site = watcher()
    urls = [site.url(f"/p{i}?s=0.05") for i in range(40)]
    records, stats = run_dask(dask_scheduler, urls, concurrency=8, per_host=2, engine_options={"batch": "4"})
    assert all(r["ok"] for r in records) and len(records) == 40
    assert site.peak == 2  # ten tasks over two workers, and never more than 2 at the server
    assert stats.summary()["engine_stats"]["host_partition"] is True


def test_robots_is_read_once_per_worker_process_at_most(watcher, dask_scheduler):
    site = watcher((200, "User-agent: *\nDisallow: /private\n"))
    urls = [site.url(f"/p{i}?s=0.02") for i in range(30)] + [site.url("/private/x")]
    records, stats = run_dask(dask_scheduler, urls, concurrency=8, engine_options={"batch": "3"})
    assert by_url(records)[site.url("/private/x")]["error"] == "robots"
    assert sum(r["ok"] for r in records) == 30
    assert 1 <= len(site.robots_agents) <= 2  # two worker processes
    figures = stats.summary()["engine_stats"]
    assert figures["host_partition"] is False and len(figures["records_per_worker"]) == 2


def test_crawl_delay_is_spread_over_the_worker_processes():
    gate = dask_engine._ClusterGate(None, 0.0, True, "agent", 3)
    gate.learn_robots("h:80", 200, "User-agent: *\nCrawl-delay: 0.5\n")
    assert gate.try_start("h:80") == 0.0
    gate.finish("h:80")
    assert 1.4 < gate.try_start("h:80") <= 1.5  # 3 processes x 0.5 s


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
    outcome = dask_engine._run_batch(7, [server.url("/page/boom")], settings, (True, False), None)  # the task, run here
    [slim] = outcome["results"]
    assert slim.body == b"" and slim.size == len(fetched.body)
    remote = make_record("e", slim, dict(slim.parsed))  # as the pipeline does with a result it need not parse
    local.pop("fetch_ms"), remote.pop("fetch_ms")
    assert remote == local and remote["error"] == "parse" and remote["detail"] == "ValueError: boom"
    assert outcome["id"] == 7 and outcome["cpu_s"] >= outcome["parse_cpu_s"] >= 0


@pytest.mark.parametrize("links", ["0", "1"])
def test_bodies_stay_on_the_workers(links, server, dask_scheduler):
    engine = dask_engine.DaskEngine()
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

    engine = dask_engine.DaskEngine()
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
    assert figures["remote_cpu_s"] > 0 and figures["task_cpu_s"] > 0
    assert stats.summary()["cpu_s"] >= figures["remote_cpu_s"]


def test_bad_engine_options_are_usage_errors():
    for options in ({"batch": "0"}, {"batch": "many"}, {"parse": "maybe"}, {"connect_timeout": "-1"}):
        with pytest.raises(CrawlerError, match="--engine-opt"):
            next(dask_engine.DaskEngine().fetch([], crawler.Settings(engine_options=options)))


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
        run_engine(dask_engine.DaskEngine(), lines, settings, RunOptions(parse_workers=0), write)
        stop.set()
        sampler.join()
        assert count[0] == n
        return peak[0]

    peak_rss(2000)  # warm-up: imports, caches, the scheduler's first tasks
    small = peak_rss(2000)
    large = peak_rss(20000)
    assert large - small < 12 * 2**20, (small / 2**20, large / 2**20)


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
    run = dask_engine._Run(dask_engine._Options.from_settings(crawler.Settings()), crawler.Settings())
    killed = distributed.scheduler.KilledWorker("crawl-x", _Gone(), 3)
    batch = dask_engine._Batch(5, ["http://a.test/1", "http://a.test/poison", "http://a.test/3"])
    run.in_flight[5] = (batch, _FinishedTask("crawl-tok-5-0", killed))
    assert list(run._take(_FinishedTask("crawl-tok-5-0", killed))) == []  # nothing yet: split for re-runs
    assert [again.urls for again in run.retry] == [[url] for url in batch.urls] and run.split == 1
    # the re-run of the poison URL kills workers again: it alone gets a record
    run.retry.clear()
    single = dask_engine._Batch(9, ["http://a.test/poison"], kills=1)
    run.in_flight[9] = (single, _FinishedTask("crawl-tok-9-3", killed))
    [record] = list(run._take(_FinishedTask("crawl-tok-9-3", killed)))
    assert record.url == "http://a.test/poison" and record.error == "other" and "died" in record.detail
    assert not run.retry and not run.in_flight
    # a stale completion (an earlier submission of a batch) is never taken
    run.in_flight[11] = (dask_engine._Batch(11, ["http://a.test/x"]), _FinishedTask("crawl-tok-11-8"))
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
    victim = pids[workers[dask_engine._host_hash(urls[0]) % len(workers)]] if pinned else pids[workers[0]]
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
            run_engine(dask_engine.DaskEngine(), urls, settings, RunOptions(parse_workers=0), records.append, progress)
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
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"crawl: error: cannot reach Dask scheduler tcp://127.0.0.1:{refused_port}: ")
    assert "after 2 s" in lines[0]
    assert elapsed < 10


def test_the_scheduler_is_given_five_seconds_by_default():
    options = dask_engine._Options.from_settings(crawler.Settings(engine_options={"scheduler": "tcp://127.0.0.1:1"}))
    assert options.connect_timeout == 5.0 and options.batch == dask_engine.DEFAULT_BATCH


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
