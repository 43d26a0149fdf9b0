"""The ``pool`` engine's own promises: dead workers, early close, laziness, sessions, signals.

Everything talks to servers on 127.0.0.1.  Worker processes are found with
psutil as the descendants of this process that a run added (the forkserver
and the resource tracker, which live as long as the test session, are
started by a warm-up run first).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from aiohttp import web
from conftest import LocalServer, html_page

import crawler
from crawler.errors import CrawlerError
from crawler.plugins import engines, get_plugin_manager
from crawler_plugins.pool.engine import CHUNKSIZE
from crawler_plugins.pool.run import Run


class Probe:
    """What the probe server saw: the client port of each request, and which tags started."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tag_ports: dict[str, int] = {}
        self.started: dict[str, threading.Event] = {}
        self.client_ports: list[int] = []

    def event(self, tag: str) -> threading.Event:
        with self.lock:
            return self.started.setdefault(tag, threading.Event())


def build_probe_app(probe: Probe) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/slow")
    async def slow(request):
        tag = request.query["tag"]
        probe.tag_ports[tag] = request.transport.get_extra_info("peername")[1]
        probe.event(tag).set()
        await asyncio.sleep(float(request.query.get("s", "3")))
        return web.Response(body=html_page("slow"), content_type="text/html")

    @routes.get("/port")
    async def port(request):
        with probe.lock:
            probe.client_ports.append(request.transport.get_extra_info("peername")[1])
        return web.Response(body=html_page("port"), content_type="text/html")

    app = web.Application()
    app.add_routes(routes)
    return app


@pytest.fixture(scope="module")
def probe():
    state = Probe()
    server = LocalServer(build_probe_app(state))
    server.probe = state
    yield server
    server.close()


@pytest.fixture(scope="module")
def engine(probe):
    pool = engines(get_plugin_manager())["pool"]
    # Warm-up: starts the forkserver and the resource tracker, which outlive runs.
    assert [r.ok for r in pool.fetch([probe.url("/port?warm")], crawler.Settings(concurrency=1))] == [True]
    return pool


def settings(**changes) -> crawler.Settings:
    return crawler.Settings(timeout=5.0, backoff_base=0.05).replace(**changes)


def descendants() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def added_since(before: dict[int, psutil.Process]) -> list[psutil.Process]:
    alive = []
    for pid, process in descendants().items():
        try:
            if pid not in before and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_until_gone(before: dict[int, psutil.Process], timeout: float = 15.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := added_since(before)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def serving(client_port: int, processes: list[psutil.Process]) -> psutil.Process:
    """The process whose TCP connection has ``client_port`` as its local port."""
    for process in processes:
        try:
            if any(c.laddr and c.laddr.port == client_port for c in process.net_connections(kind="tcp")):
                return process
        except psutil.NoSuchProcess:
            pass
    raise AssertionError(f"no worker holds local port {client_port}")


def consume_in_thread(results: list, iterator) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.extend(iterator), daemon=True)
    thread.start()
    return thread


def test_worker_killed_mid_fetch_is_recorded_and_the_run_finishes(engine, probe):
    before = descendants()
    slow = probe.url("/slow?s=60&tag=busy-kill")  # answers long after the run must have ended
    urls = [slow] + [probe.url(f"/port?busy={i}") for i in range(10)]
    results: list = []
    thread = consume_in_thread(results, engine.fetch(urls, settings(concurrency=2)))
    assert probe.probe.event("busy-kill").wait(30)
    victim = serving(probe.probe.tag_ports["busy-kill"], added_since(before))
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(30)
    assert not thread.is_alive(), "the run hangs on a dead worker"
    # Not waiting for the 60 s response; room for a new pool starting on a loaded machine.
    assert time.monotonic() - killed_at < 20
    assert sorted(r.url for r in results) == sorted(urls)  # one record per URL
    by_url = {r.url: r for r in results}
    assert by_url[slow].error == "other" and not by_url[slow].ok
    assert by_url[slow].detail.startswith("pool worker died (exit code")
    assert all(by_url[u].ok for u in urls[1:])
    assert wait_until_gone(before) == []


def test_idle_worker_killed_holding_the_task_queue_lock_does_not_jam_the_run(engine, probe):
    # An idle worker waits for its next task inside the pool's task-queue lock;
    # killed there, it never releases it, and a plain Pool never starts another task.
    before = descendants()
    release = threading.Event()
    slow = probe.url("/slow?s=1&tag=idle-kill")
    later = [probe.url(f"/port?idle={i}") for i in range(6)]

    def urls():
        yield slow
        release.wait(10)  # the list "stalls" while the test kills the idle worker
        yield from later

    results: list = []
    thread = consume_in_thread(results, engine.fetch(urls(), settings(concurrency=2)))
    assert probe.probe.event("idle-kill").wait(30)
    workers = added_since(before)
    busy = serving(probe.probe.tag_ports["idle-kill"], workers)
    deadline = time.monotonic() + 15
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = added_since(before)
    [idle] = [p for p in workers if p.pid != busy.pid]
    time.sleep(0.2)  # let it settle into waiting for a task
    os.kill(idle.pid, signal.SIGKILL)
    release.set()
    thread.join(30)
    assert not thread.is_alive(), "the run hangs after an idle worker died"
    assert sorted(r.url for r in results) == sorted([slow] + later)
    assert all(r.ok for r in results)  # the idle worker had no URL: nothing lost
    assert wait_until_gone(before) == []


def test_worker_killed_while_sending_a_large_result_does_not_hang(engine, server, monkeypatch):
    # Killed a few tens of ms after its fetch ended, the worker is usually in
    # the middle of writing 30 MB to the result pipe: the pool's result thread
    # is then left waiting for the rest of that message.
    runs = []
    init = Run.__init__
    monkeypatch.setattr(Run, "__init__", lambda self, *a, **k: (init(self, *a, **k), runs.append(self))[0])
    before = descendants()
    big = server.url("/big?n=30000000&jam")
    urls = [big] + [server.url(f"/page/jam{i}") for i in range(6)]
    results: list = []
    thread = consume_in_thread(results, engine.fetch(urls, settings(concurrency=2, max_bytes=50_000_000)))
    victim = None
    deadline = time.monotonic() + 30
    while victim is None and time.monotonic() < deadline and thread.is_alive():
        try:
            run = runs[0]
            [task] = [t for t in list(run.pending.values()) if t.url == big] or [None]
            holder = task.crew.state[task.slot] if task else 0
        except (IndexError, RuntimeError):  # not started yet; pending changed while read
            holder = 0
        if holder < 0:  # fetched, now being sent
            victim = -holder
            time.sleep(0.07)
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.001)
    assert victim is not None
    thread.join(30)
    assert not thread.is_alive(), "the run hangs on a jammed result pipe"
    assert [t for t in threading.enumerate() if t.name == "crawl-pool-stop"] == []  # the pool really stopped
    assert sorted(r.url for r in results) == sorted(urls)
    by_url = {r.url: r for r in results}
    assert by_url[big].error == "other" and "pool worker died" in by_url[big].detail
    assert all(by_url[u].ok for u in urls[1:])
    assert wait_until_gone(before) == []


def test_closing_early_leaves_no_worker_process(engine, probe):
    before = descendants()
    urls = (probe.url(f"/port?close={i}") for i in itertools.count())
    results = engine.fetch(urls, settings(concurrency=4))
    got = [next(results) for _ in range(5)]
    assert len(added_since(before)) >= 4  # the workers are up...
    results.close()
    assert all(r.ok for r in got)
    assert wait_until_gone(before) == []  # ...and gone


def test_urls_are_read_lazily_and_in_flight_is_bounded(engine, probe):
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield probe.url(f"/port?lazy={i}")

    results = engine.fetch(endless(), settings(concurrency=2))
    assert pulled == 0  # nothing happens before the first result is asked for
    got = [next(results) for _ in range(5)]
    results.close()
    assert all(r.ok for r in got)
    in_flight = 2 * 2 * CHUNKSIZE  # the engine's limit for 2 workers
    assert pulled <= in_flight + 5 + 1


def test_each_worker_keeps_its_connection_alive(engine, probe):
    probe.probe.client_ports.clear()
    urls = [probe.url(f"/port?reuse={i}") for i in range(40)]
    assert all(r.ok for r in engine.fetch(urls, settings(concurrency=2)))
    assert len(probe.probe.client_ports) == 40
    assert len(set(probe.probe.client_ports)) <= 2  # one Session, one connection per worker


def test_spawn_start_method_works_too(engine, probe):
    urls = [probe.url(f"/port?spawn={i}") for i in range(3)]
    options = {"start_method": "spawn"}
    assert all(r.ok for r in engine.fetch(urls, settings(concurrency=2, engine_options=options)))


@pytest.mark.parametrize("options", [{"start_method": "bogus"}, {"chunksize": "0"}, {"chunksize": "many"}])
def test_bad_engine_options_are_one_line_errors(engine, probe, options):
    with pytest.raises(CrawlerError, match="--engine-opt .* for pool expects"):
        list(engine.fetch([probe.url("/port?opt")], settings(engine_options=options)))


class _ExitWhenUnpickled:
    """Makes every worker die while it starts: unpickling its arguments calls os._exit(3)."""

    def __reduce__(self):
        return (os._exit, (3,))


def test_workers_that_cannot_start_end_the_run_with_an_error_not_a_hang(engine, probe):
    before = descendants()
    broken = settings(concurrency=2, engine_options={"poison": _ExitWhenUnpickled()})
    started = time.monotonic()
    with pytest.raises(CrawlerError, match="keep dying.*exit code 3"):
        list(engine.fetch([probe.url("/port?never")], broken))
    assert time.monotonic() - started < 30  # three pools started and lost: seconds, not a hang
    assert wait_until_gone(before) == []


def _session_processes(sid: int) -> list[psutil.Process]:
    alive = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            pass
    return alive


def _wait_session_empty(sid: int, timeout: float = 15.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := _session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_ctrl_c_to_the_process_group_leaves_no_process(probe, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(probe.url(f"/slow?s=2&tag=ctrl-c-{i}") + "\n" for i in range(40)))
    process = subprocess.Popen(
        [sys.executable, "-m", "crawler", str(urls), "-e", "pool", "-c", "4", "--no-parse", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert probe.probe.event("ctrl-c-0").wait(20)
        time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    # Workers ignore SIGINT: none dies of it ("Process ForkServerPoolWorker-N:" + traceback).
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and "PoolWorker" not in stderr
    assert _wait_session_empty(process.pid) == []


def test_workers_exit_when_the_parent_is_killed(probe):
    script = textwrap.dedent(
        f"""
        import sys
        import crawler
        from crawler.plugins import engines, get_plugin_manager

        urls = ["{probe.url('/slow?s=30&tag=orphans-')}" + str(i) for i in range(8)]
        for result in engines(get_plugin_manager())["pool"].fetch(urls, crawler.Settings(concurrency=4)):
            print(result)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        assert probe.probe.event("orphans-0").wait(20)
        assert len(_session_processes(process.pid)) >= 1 + 4  # the parent and its workers at least
        process.kill()  # the parent alone: no chance to terminate its pool
        process.wait()
        assert _wait_session_empty(process.pid) == []
    finally:
        for left in _session_processes(process.pid):
            left.kill()


def test_a_short_list_starts_no_more_processes_than_it_has_urls(tmp_path, probe):
    # the whole command: the URL file is counted, and the pool told (operator.length_hint)
    urls = tmp_path / "urls.txt"
    urls.write_text(probe.url("/port?short-list") + "\n")
    report = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "crawler", str(urls), "-e", "pool", "-c", "32", "--no-parse", "-q", "--report", str(report)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    import json

    [summary] = json.loads(report.read_text())["engines"]
    assert summary["ok"] == 1 and summary["engine_stats"]["processes"] == 1
    # a list whose length is unknown (a generator) keeps one process per request in flight
    unknown = Run((u for u in ["http://a.test/"]), settings(concurrency=5), None, 1)
    assert unknown.processes == 5


# --- the politeness gate, answered by the parent: a dead worker gives back what it held ------------


class GateProbe:
    """A host whose first ``/robots.txt`` (when ``robots_hangs``) and ``/slow`` never answer in time."""

    def __init__(self, robots_hangs: bool):
        self.robots_hangs = robots_hangs
        self.robots_asked = 0
        self.ports: dict[str, int] = {}
        self.hung = threading.Event()

    def app(self) -> web.Application:
        routes = web.RouteTableDef()

        async def hang(request, what: str):
            self.ports[what] = request.transport.get_extra_info("peername")[1]
            self.hung.set()
            await asyncio.sleep(60)

        @routes.get("/robots.txt")
        async def robots(request):
            self.robots_asked += 1
            if self.robots_hangs and self.robots_asked == 1:
                await hang(request, "robots")
            return web.Response(text="User-agent: *\nDisallow: /private\n")

        @routes.get("/slow")
        async def slow(request):
            await hang(request, "slow")
            return web.Response(text="late")

        @routes.get("/{name}")
        @routes.get("/private/{name}")
        async def page(request):
            return web.Response(body=html_page(request.match_info["name"]), content_type="text/html")

        app = web.Application()
        app.add_routes(routes)
        return app


def _crawl_killing_the_hung_worker(gate_probe: GateProbe, urls: list[str], what: str, **options) -> dict:
    """Crawl ``urls`` with the pool through the API; SIGKILL the worker whose request hangs; the records by URL."""
    before = descendants()
    records: list = []
    thread = consume_in_thread(records, crawler.crawl(urls, engine="pool", parse=False, timeout=90, **options))
    assert gate_probe.hung.wait(30)
    os.kill(serving(gate_probe.ports[what], added_since(before)).pid, signal.SIGKILL)
    thread.join(40)
    assert not thread.is_alive(), "the host's other URLs wait forever for what the dead worker held"
    assert sorted(r["url"] for r in records) == sorted(urls)
    return {r["url"]: r for r in records}


def test_a_dead_worker_gives_back_its_per_host_slot(engine):
    gate_probe = GateProbe(robots_hangs=False)
    server = LocalServer(gate_probe.app())
    try:
        urls = [server.url("/slow")] + [server.url(f"/page-{i}") for i in range(6)]
        # one request at a time to the host: the others can start only once the dead worker's slot is free
        got = _crawl_killing_the_hung_worker(gate_probe, urls, "slow", concurrency=2, per_host=1)
    finally:
        server.close()
    assert got[urls[0]]["error"] == "other" and "pool worker died" in got[urls[0]]["detail"]
    assert all(got[url]["ok"] for url in urls[1:]), [got[url]["error"] for url in urls[1:]]


def test_a_worker_that_dies_fetching_robots_txt_leaves_it_to_another(engine):
    gate_probe = GateProbe(robots_hangs=True)
    server = LocalServer(gate_probe.app())
    try:
        urls = [server.url(f"/page-{i}") for i in range(4)] + [server.url("/private/secret")]
        got = _crawl_killing_the_hung_worker(gate_probe, urls, "robots", concurrency=2)
    finally:
        server.close()
    died = [url for url in urls if got[url]["error"] == "other"]
    assert len(died) == 1 and "pool worker died" in got[died[0]]["detail"]
    assert gate_probe.robots_asked == 2  # asked again, by another URL, and its rules hold
    if died != [urls[-1]]:
        assert got[urls[-1]]["error"] == "robots"
    assert all(got[url]["ok"] for url in urls[:-1] if url not in died)


def test_without_parsing_no_body_crosses_the_pipe_and_the_records_are_the_same(engine, probe):
    import hashlib

    from conftest import run_records

    urls = [probe.url(f"/port?no-body={i}") for i in range(4)] + [probe.url("/missing-page")]
    results = list(engine.fetch(urls, settings(concurrency=2).with_run(parse=False)))
    assert {r.url for r in results} == set(urls)
    for result in results:  # the size and the fields come back; the bytes stay in the worker
        assert result.body == b"" and result.size > 0 and result.parsed["title"] is None
    page = next(r for r in results if r.ok)
    assert page.parsed["sha256"] == hashlib.sha256(html_page("port")).hexdigest() and page.size == len(html_page("port"))
    fields = ("ok", "status", "error", "bytes", "sha256", "title")
    by_engine = {
        name: {r["url"]: tuple(r[f] for f in fields) for r in run_records(name, urls, parse=False, robots=False)}
        for name in ("pool", "threads")
    }
    assert by_engine["pool"] == by_engine["threads"]
    # with parsing on, or bodies wanted, the body comes back as before
    [whole] = engine.fetch(urls[:1], settings(concurrency=1).with_run(want_bodies=True, parse=False))
    assert whole.body == html_page("port") and whole.parsed is None
