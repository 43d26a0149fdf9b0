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
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from . import parse
from .engines import Engine, FetchResult, Settings
from .outputs import RECORD_KEYS
from .stats import MemorySampler, RunStats


@dataclass(frozen=True)
class RunOptions:
    """How the pipeline treats fetched pages (the engine never sees these)."""

    parse: bool = True
    parse_workers: int = os.cpu_count() or 1
    parse_timeout: float = 5.0
    batch_size: int = 32  # measured: 1.36x the pages/s of one page per task (benchmarks/parsers.py)
    # bound on page bytes handed to the parse stage and not yet parsed
    parse_bytes_in_flight: int = 64 * 1024 * 1024


def make_record(engine: str, result: FetchResult, parsed: dict | None = None, parse_error: str | None = None) -> dict:
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
        "bytes": len(result.body),
        "fetch_ms": round(result.elapsed * 1000, 2),
        "content_type": result.content_type,
        "title": fields.get("title"),
        "links": fields.get("links"),
        "words": fields.get("words"),
        "simhash": fields.get("simhash"),
        "sha256": fields.get("sha256") or (hashlib.sha256(result.body).hexdigest() if got_body else None),
        "depth": 0,
        "parent": None,
    }
    assert tuple(record) == RECORD_KEYS
    return record


def wants_parse(result: FetchResult) -> bool:
    return result.ok and result.parsed is None and parse.is_html(result.content_type, result.body)


Done = Callable[[FetchResult, "dict | None", "str | None"], None]


class ParseStage:
    """Parses pages in worker processes, in batches, with bounded bytes in flight.

    ``done(result, parsed, error)`` is called once per submitted page, from
    the executor's result thread.  A batch goes out when it is full, or at
    once when a worker is idle, so batching never delays an idle stage.
    """

    def __init__(self, workers: int, done: Done, batch_size: int, bytes_in_flight: int):
        self.workers = workers
        self.done = done
        self.batch_size = batch_size
        self.bytes_limit = bytes_in_flight
        self.parse_cpu_s = 0.0
        self.peak_backlog = 0
        self._batch: list[FetchResult] = []
        self._batch_bytes = 0
        self._in_flight_batches = 0
        self._in_flight_bytes = 0
        self._room = threading.Condition()
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        if self.workers <= 0:
            return
        # Not fork: the asyncio engine and the progress bar run threads, and
        # forking a process with threads alive can deadlock the child.
        context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
        self._executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_ignore_interrupts)
        # Start every worker now, so that process start-up is not timed as parsing.
        for future in [self._executor.submit(parse.parse_batch, []) for _ in range(self.workers)]:
            future.result()

    def submit(self, result: FetchResult) -> None:
        if self._executor is None:
            [outcome], cpu = parse.parse_batch([(result.final_url or result.url, result.body, result.content_type)])
            self.parse_cpu_s += cpu
            self._deliver(result, outcome)
            return
        self._batch.append(result)
        self._batch_bytes += len(result.body)
        with self._room:
            idle = self._in_flight_batches < self.workers
        if idle or len(self._batch) >= self.batch_size:
            self._send()

    def _send(self) -> None:
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        with self._room:
            while self._in_flight_bytes and self._in_flight_bytes + size > self.bytes_limit:
                self._room.wait()
            self._in_flight_batches += 1
            self._in_flight_bytes += size
            self.peak_backlog = max(self.peak_backlog, self._in_flight_batches)
        items = [(r.final_url or r.url, r.body, r.content_type) for r in batch]
        future = self._executor.submit(parse.parse_batch, items)
        future.add_done_callback(lambda f: self._finished(f, batch, size))

    def _finished(self, future: Future, batch: list[FetchResult], size: int) -> None:
        try:
            outcomes, cpu = future.result()
            self.parse_cpu_s += cpu
        except BrokenProcessPool as exc:
            outcomes = [f"parse worker died: {exc}"] * len(batch)
        except BaseException as exc:  # cancelled on interrupt, or a pickling error
            outcomes = [f"{type(exc).__name__}: {exc}"[:200]] * len(batch)
        try:
            for result, outcome in zip(batch, outcomes):
                self._deliver(result, outcome)
        finally:
            with self._room:
                self._in_flight_batches -= 1
                self._in_flight_bytes -= size
                self._room.notify_all()

    def _deliver(self, result: FetchResult, outcome: "dict | str") -> None:
        if isinstance(outcome, dict):
            self.done(result, outcome, None)
        else:
            self.done(result, None, outcome)

    def drain(self) -> None:
        """Send the partial batch and wait until every page is delivered."""
        if self._batch:
            self._send()
        with self._room:
            while self._in_flight_batches:
                self._room.wait()

    def close(self, cancel: bool = False) -> None:
        if self._executor is None:
            return
        if cancel:
            # An interrupt must not wait for pages being parsed.
            processes = list((self._executor._processes or {}).values())
            self._executor.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            for process in processes:
                process.join(timeout=2)
        else:
            self._executor.shutdown(wait=True)
        self._executor = None


def _ignore_interrupts() -> None:
    # Ctrl-C reaches the whole process group; the parent alone decides what
    # happens (it cancels the stage), so workers must not die mid-batch on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def counted(urls: Iterable[str], stats: RunStats) -> Iterator[str]:
    for url in urls:
        stats.lines_read += 1
        yield url


def run_engine(
    engine: Engine,
    urls: Iterable[str],
    settings: Settings,
    options: RunOptions,
    write: Callable[[dict], None],
    progress: Callable[[dict], None] | None = None,
    exclude_pids: frozenset[int] = frozenset(),
) -> RunStats:
    """Fetch ``urls`` with ``engine``, write one record per URL, return the stats.

    On ``KeyboardInterrupt`` (or any exception) the engine is closed, the
    parse stage stopped, the stats of what completed kept, and the exception
    re-raised with the stats attached as ``exc.run_stats``.
    """
    stats = RunStats(engine.name)
    lock = threading.Lock()

    def complete(result: FetchResult, parsed: dict | None = None, parse_error: str | None = None) -> None:
        record = make_record(engine.name, result, parsed or (dict(result.parsed) if result.parsed else None), parse_error)
        with lock:
            write(record)
            stats.record(record)
            if progress:
                progress(record)

    stage = ParseStage(options.parse_workers, complete, options.batch_size, options.parse_bytes_in_flight) if options.parse else None
    if stage:
        stage.start()
    results = engine.fetch(counted(urls, stats), settings)
    memory = MemorySampler(exclude_pids)
    try:
        with memory:
            stats.start()
            try:
                for result in results:
                    if stage and wants_parse(result):
                        stage.submit(result)
                    else:
                        complete(result)
                if stage:
                    stage.drain()
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
    finally:
        stats.peak_rss_mb = memory.peak / 2**20
        if stage:
            stats.parse_cpu_s = stage.parse_cpu_s
            if stage.workers > 0:  # inline parsing is already in this process's CPU time
                stats.cpu_s += stage.parse_cpu_s
    return stats
