"""One engine run: fetch → (parse stage) → records and statistics.

The engine's results are consumed as they come.  Pages to parse go to a
:class:`ParseStage` — a ``ProcessPoolExecutor`` fed in batches through a
bounded hand-off — while fetching goes on; everything else becomes a record
at once.  When the parse stage is full, the pipeline stops pulling results,
so the engine slows down instead of memory growing (Scrapy's
``Slot.needs_backout``).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from . import parse
from .engines import Engine, FetchResult, Settings
from .fetching import default_user_agent
from .frontier import Frontier
from .outputs import RECORD_KEYS
from .politeness import HostGate, shared_gate
from .stats import MemorySampler, RunStats


@dataclass(frozen=True)
class RunOptions:
    """How the pipeline treats fetched pages (the engine never sees these)."""

    parse: bool = True
    parse_workers: int = os.cpu_count() or 1
    parse_timeout: float = 5.0  # seconds one page may spend in the parse stage
    batch_size: int = 32  # measured: 1.36x the pages/s of one page per task (benchmarks/parsers.py)
    # bound on page bytes handed to the parse stage and not yet parsed
    parse_bytes_in_flight: int = 64 * 1024 * 1024
    depth: int = 0  # levels of links to follow from the list, breadth-first
    same_host: bool = True  # follow only links to the host of the page they are on
    max_pages: int | None = None  # queue links only while records + queued stay within this


def make_record(
    engine: str,
    result: FetchResult,
    parsed: dict | None = None,
    parse_error: str | None = None,
    depth: int = 0,
    parent: str | None = None,
) -> dict:
    """The SPEC §6 record of one URL."""
    got_body = result.status is not None and result.error != "too_large"
    fields = parsed or {}
    record = {
        "engine": engine,
        "url": result.url,
        "final_url": result.final_url,
        "ok": result.ok and parse_error is None,
        "status": result.status,
        "error": "parse" if parse_error and result.error is None else result.error,
        "detail": parse_error if parse_error and result.error is None else result.detail,
        "bytes": len(result.body) if result.size is None else result.size,
        "fetch_ms": round(result.elapsed * 1000, 2),
        "content_type": result.content_type,
        "title": fields.get("title"),
        "links": fields.get("links"),
        "words": fields.get("words"),
        "simhash": fields.get("simhash"),
        "sha256": fields.get("sha256") or (hashlib.sha256(result.body).hexdigest() if got_body else None),
        "depth": depth,
        "parent": parent,
    }
    assert tuple(record) == RECORD_KEYS
    return record


def wants_parse(result: FetchResult) -> bool:
    return result.ok and result.parsed is None and parse.is_html(result.content_type, result.body)


Done = Callable[[FetchResult, "dict | None", "str | None"], None]


@dataclass
class _Flight:
    batch: list[FetchResult]
    size: int


class ParseStage:
    """Parses pages in worker processes, in batches, with bounded work in flight.

    ``done(result, parsed, error)`` is called once per submitted page, from
    the executor's result thread (or the caller's, when recovering).  A batch
    goes out when it is full, or at once when a worker is idle, so batching
    never delays an idle stage.

    Faults: a page over ``timeout`` seconds is stopped inside its worker
    (SIGALRM); a worker stuck where no signal reaches it is killed by a
    watchdog.  When a worker dies, the pool is rebuilt and the pages of the
    batches it took down are parsed again one at a time, so that only the
    page that kills a worker gets ``error: "parse"``.
    """

    def __init__(
        self,
        workers: int,
        done: Done,
        batch_size: int,
        bytes_in_flight: int,
        timeout: float | None = None,
        parse_batch: Callable = parse.parse_batch,  # replaceable for fault-injection tests
    ):
        self.parse_batch = parse_batch
        self.want_links = False  # return each page's link URLs too (for following links)
        self.workers = workers
        self.done = done
        self.batch_size = batch_size
        self.bytes_limit = bytes_in_flight
        self.timeout = timeout
        self.parse_cpu_s = 0.0
        self.peak_backlog = 0  # pages handed over and not yet parsed
        self.wait_s = 0.0  # time the fetch side stood still waiting for room
        self._pages_in_flight = 0
        self.restarts = 0
        self.watchdog_kills = 0
        self._batch: list[FetchResult] = []
        self._flights: dict[int, _Flight] = {}
        self._in_flight_bytes = 0
        self._orphans: list[FetchResult] = []  # pages of batches whose worker died
        self._cond = threading.Condition()
        self._executor: ProcessPoolExecutor | None = None
        self._watchdog: threading.Thread | None = None
        self._clock = None
        self._closing = threading.Event()

    # --- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        if self.workers <= 0:
            return
        self._executor = self._new_executor()
        if self.timeout:
            self._watchdog = threading.Thread(target=self._watch, name="crawl-parse-watchdog", daemon=True)
            self._watchdog.start()

    def _new_executor(self) -> ProcessPoolExecutor:
        # Not fork: the asyncio engine and the progress bar run threads, and
        # forking a process with threads alive can deadlock the child.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        self._clock = context.Array("d", 2 * self.workers)  # per worker: page started at, pid
        slots = context.Value("i", 0)
        executor = ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=parse.init_worker, initargs=(self._clock, slots)
        )
        # Start every worker now, so that process start-up is not timed as parsing.
        for future in [executor.submit(self.parse_batch, []) for _ in range(self.workers)]:
            future.result()
        return executor

    def close(self, cancel: bool = False) -> None:
        self._closing.set()
        if self._executor is None:
            return
        if cancel:  # an interrupt must not wait for pages being parsed
            self._executor.shutdown(wait=False, cancel_futures=True)
            _kill_workers(self._executor)
        else:
            self._executor.shutdown(wait=True)
        self._executor = None

    # --- feeding --------------------------------------------------------------------

    def submit(self, result: FetchResult) -> None:
        if self._executor is None:
            self._parse_here(result)
            return
        self._batch.append(result)
        with self._cond:
            idle = len(self._flights) < self.workers
        if idle or len(self._batch) >= self.batch_size:
            self._send()

    def _parse_here(self, result: FetchResult) -> None:
        [outcome], cpu = self.parse_batch([_item(result)], None, self.want_links)
        self.parse_cpu_s += cpu
        self._deliver(result, outcome)

    def _send(self) -> None:
        batch, self._batch = self._batch, []
        size = sum(len(r.body) for r in batch)
        with self._cond:
            if self._flights and self._full(size):
                waited = time.perf_counter()
                while self._flights and self._full(size):
                    self._cond.wait()
                self.wait_s += time.perf_counter() - waited
            if self._orphans:
                self._recover_locked()
            flight = _Flight(batch, size)
            try:
                future = self._executor.submit(self.parse_batch, [_item(r) for r in batch], self.timeout, self.want_links)
            except BrokenProcessPool:  # a worker died since the last batch came back
                self._orphans.extend(batch)
                return
            self._flights[id(future)] = flight
            self._in_flight_bytes += size
            self._pages_in_flight += len(batch)
            self.peak_backlog = max(self.peak_backlog, self._pages_in_flight)
        future.add_done_callback(self._finished)

    def _full(self, size: int) -> bool:
        return self._in_flight_bytes + size > self.bytes_limit or len(self._flights) >= 2 * self.workers

    def _finished(self, future: Future) -> None:
        with self._cond:
            flight = self._flights[id(future)]
        try:
            outcomes, cpu = future.result()
        except BrokenProcessPool:
            outcomes, cpu = None, 0.0
        except BaseException as exc:  # cancelled by an interrupt, or unpicklable
            outcomes, cpu = [f"{type(exc).__name__}: {exc}"[:200]] * len(flight.batch), 0.0
        try:
            if outcomes is not None:
                for result, outcome in zip(flight.batch, outcomes):
                    self._deliver(result, outcome)
        finally:
            # Only now: drain() must not return before these records are written.
            with self._cond:
                del self._flights[id(future)]
                self._in_flight_bytes -= flight.size
                self._pages_in_flight -= len(flight.batch)
                self.parse_cpu_s += cpu
                if outcomes is None and not self._closing.is_set():
                    self._orphans.extend(flight.batch)
                self._cond.notify_all()

    def _deliver(self, result: FetchResult, outcome: "dict | str") -> None:
        if isinstance(outcome, dict):
            self.done(result, outcome, None)
        else:
            self.done(result, None, outcome)

    def drain(self) -> None:
        """Send the partial batch and wait until every page is delivered."""
        if self._executor is None:
            return
        if self._batch:
            self._send()
        with self._cond:
            while self._flights or self._orphans:
                if self._orphans and not self._flights:
                    self._recover_locked()
                else:
                    self._cond.wait()

    # --- faults ---------------------------------------------------------------------

    def _recover_locked(self) -> None:
        """Rebuild the pool and re-parse orphaned pages one by one (called with the lock held)."""
        while self._flights:  # every batch of the broken pool must have come back first
            self._cond.wait()
        orphans, self._orphans = self._orphans, []
        self._replace_executor()  # the old one is broken, or about to be marked so
        for result in orphans:
            future = self._executor.submit(self.parse_batch, [_item(result)], self.timeout, self.want_links)
            kills = self.watchdog_kills
            try:
                [outcome], cpu = future.result(timeout=(self.timeout or 60) + 2)
                self.parse_cpu_s += cpu
            except BrokenProcessPool:
                if self.watchdog_kills > kills:
                    outcome = f"parse timed out after {self.timeout:g} s (worker killed)"
                else:
                    outcome = "parse worker died on this page"
                self._replace_executor()
            except TimeoutError:
                outcome = f"parse timed out after {self.timeout:g} s (worker killed)"
                _kill_workers(self._executor)
                self._replace_executor()
            self._deliver(result, outcome)

    def _replace_executor(self) -> None:
        self.restarts += 1
        old, self._executor = self._executor, self._new_executor()
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    def _watch(self) -> None:
        """Kill a worker whose page runs past the timeout where SIGALRM cannot stop it (C code)."""
        while not self._closing.wait(0.25):
            clock = self._clock
            now = time.monotonic()
            with clock.get_lock():
                posts = clock[:]
            for started, pid in zip(posts[0::2], posts[1::2]):
                if started and pid and now - started > self.timeout + 1:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                        self.watchdog_kills += 1
                    except ProcessLookupError:
                        pass


def _item(result: FetchResult) -> tuple[str, bytes, str | None]:
    return result.final_url or result.url, result.body, result.content_type


def _kill_workers(executor: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor has no public way to stop a worker mid-task before
    # Python 3.14's terminate_workers(); its process table is the only handle.
    if hasattr(executor, "terminate_workers"):
        executor.terminate_workers()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.join(timeout=2)


def _politeness_gate(engine: Engine, settings: Settings):
    """A fresh per-host gate for this run, or None when no politeness rule is on."""
    if not (settings.robots or settings.per_host or settings.delay):
        return None, None
    args = (settings.per_host, settings.delay, settings.robots, settings.user_agent or default_user_agent())
    if getattr(engine, "fetches_in_processes", False):
        return shared_gate(*args)
    return HostGate(*args), None


def counted(urls: Iterable[str], stats: RunStats, skip: Callable[[str], bool] | None) -> Iterator[str]:
    for url in urls:
        stats.lines_read += 1
        if skip and skip(url):
            stats.skipped += 1
            continue
        stats.pulled += 1
        yield url


def run_engine(
    engine: Engine,
    urls: Iterable[str],
    settings: Settings,
    options: RunOptions,
    write: Callable[[dict], None],
    progress: Callable[[dict], None] | None = None,
    exclude_pids: frozenset[int] = frozenset(),
    skip: Callable[[str], bool] | None = None,
) -> RunStats:
    """Fetch ``urls`` with ``engine``, write one record per URL, return the stats.

    ``skip(url)`` true means the URL already has its record (``--resume``).
    With ``options.depth``, the links found by the parse stage are crawled
    too, one level per ``engine.fetch()`` call (breadth-first).

    On ``KeyboardInterrupt`` (or any exception) the engine is closed, the
    parse stage stopped, the stats of what completed kept, and the exception
    re-raised with the stats attached as ``exc.run_stats``.
    """
    stats = RunStats(engine.name, exclude_pids)
    stats.concurrency = settings.concurrency
    lock = threading.Lock()
    following = options.depth > 0 and options.parse
    frontier = Frontier(options.max_pages, options.same_host) if following else None
    origin: dict[str, tuple[int, str]] = {}  # followed URL in the engine's hands -> (depth, parent)

    def complete(result: FetchResult, parsed: dict | None = None, parse_error: str | None = None) -> None:
        parsed = parsed or (dict(result.parsed) if result.parsed else None)
        with lock:
            depth, parent = origin.pop(result.url, (0, None))
            record = make_record(engine.name, result, parsed, parse_error, depth, parent)
            write(record)
            stats.record(record)
            if frontier is not None:
                frontier.seen(result.final_url)
                if parsed and depth < options.depth and parsed.get("link_urls"):
                    frontier.offer(parsed["link_urls"], result.final_url or result.url, stats.lines_read - stats.skipped)
            if progress:
                progress(record)

    def followed(level: int) -> Iterator[str]:
        for url, parent in frontier.next_level():
            with lock:
                origin[url] = (level, parent)
            stats.pulled += 1
            yield url

    def marked_seen(urls: Iterable[str]) -> Iterator[str]:
        for url in urls:
            frontier.seen(url)
            yield url

    stage = (
        ParseStage(options.parse_workers, complete, options.batch_size, options.parse_bytes_in_flight, options.parse_timeout)
        if options.parse
        else None
    )
    if stage:
        stage.want_links = following
    settings = settings.replace(parse=options.parse, want_links=following)
    gate, gate_manager = _politeness_gate(engine, settings)
    if gate is not None:
        settings = settings.replace(gate=gate)
    level_urls = counted(urls, stats, skip)
    if frontier is not None:
        level_urls = marked_seen(level_urls)
    results = iter(())
    memory = MemorySampler(exclude_pids)
    try:
        if stage:
            stage.start()
        with memory:
            stats.start()
            try:
                for level in range(options.depth + 1 if following else 1):
                    if level:
                        level_urls = followed(level)
                    results = iter(engine.fetch(level_urls, settings))
                    _consume(results, stats, stage, complete)
                    if stage:
                        stage.drain()  # the level's links are all known only once it is parsed
                    if frontier is None or frontier.queued == stats.followed_taken():
                        break
            finally:
                stats.stop()
    except BaseException as exc:
        stats.interrupted = True
        close = getattr(results, "close", None)
        if close:
            close()
        if stage:
            stage.close(cancel=True)
        exc.run_stats = stats
        raise
    else:
        if stage:
            stage.close()
        stats.check_accounting()
    finally:
        stats.peak_rss_mb = memory.peak / 2**20
        if frontier is not None:
            stats.links = frontier.stats()
            frontier.close()
        if gate is not None:
            try:
                stats.politeness = gate.stats()
            except Exception:  # the manager process may be gone after an interrupt
                pass
        if gate_manager is not None:
            gate_manager.shutdown()
        if stage:
            stats.parse_cpu_s = stage.parse_cpu_s
            stats.peak_parse_backlog = stage.peak_backlog
            stats.parse_wait_s = stage.wait_s
    return stats


def _consume(results: Iterator[FetchResult], stats: RunStats, stage: ParseStage | None, complete) -> None:
    """Take every result of one engine.fetch() call: to the parse stage, or straight to a record."""
    while True:
        try:
            result = next(results)
        except StopIteration as finished:
            if isinstance(finished.value, dict):
                stats.engine_stats = finished.value
            return
        stats.returned()
        if stage and wants_parse(result):
            stage.submit(result)
        else:
            complete(result)
