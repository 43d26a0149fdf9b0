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
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from . import parse
from .engines import Engine, FetchResult, Settings
from .errors import OutputError
from .fetching import default_user_agent
from .frontier import Frontier
from .outputs import RECORD_KEYS
from .parse_stage import ParseStage
from .politeness import HostGate, shared_gate
from .stats import MemorySampler, RunStats
from .urls import OverlongLine


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


def _politeness_gate(engine: Engine, settings: Settings):
    """A fresh per-host gate for this run, or None when no politeness rule is on."""
    if not (settings.robots or settings.per_host or settings.delay):
        return None, None
    args = (settings.per_host, settings.delay, settings.robots, settings.user_agent or default_user_agent())
    if getattr(engine, "fetches_in_processes", False):
        return shared_gate(*args)
    return HostGate(*args), None


def counted(
    urls: Iterable[str],
    stats: RunStats,
    skip: Callable[[str], bool] | None,
    refuse: Callable[[OverlongLine], None] | None = None,
) -> Iterator[str]:
    """The URLs for the engine: lines counted, ``--resume``'s done ones skipped.

    An :class:`OverlongLine` is never handed to the engine: ``refuse`` writes
    its ``invalid_url`` record at once (it counts as pulled and returned).
    """
    for url in urls:
        stats.lines_read += 1
        if skip and skip(url):
            stats.skipped += 1
            continue
        stats.pulled += 1
        if refuse is not None and isinstance(url, OverlongLine):
            stats.returned()
            refuse(url)
            continue
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
    re-raised with the stats attached as ``exc.run_stats``; from then on
    nothing more is written (a page the parse stage delivers late is
    dropped, so it is fetched again by ``--resume``).

    ``write`` may fail in whichever thread completes a record (the parse
    stage's callbacks included): the first failure stops the writing and is
    raised here, in the caller's thread, at the next result; an ``OSError``
    of the link frontier's spool becomes an :class:`OutputError`.
    """
    stats = RunStats(engine.name, exclude_pids)
    stats.concurrency = settings.concurrency
    stats.fetches_in_processes = bool(getattr(engine, "fetches_in_processes", False))
    lock = threading.Lock()
    following = options.depth > 0 and options.parse
    frontier = Frontier(options.max_pages, options.same_host) if following else None
    origin: dict[str, tuple[int, str]] = {}  # followed URL in the engine's hands -> (depth, parent)
    halt = _Halt()

    def complete(result: FetchResult, parsed: dict | None = None, parse_error: str | None = None) -> None:
        if halt.stopped:
            return
        parsed = parsed or (dict(result.parsed) if result.parsed else None)
        with lock:
            if halt.stopped:
                return
            try:
                depth, parent = origin.pop(result.url, (0, None))
                record = make_record(engine.name, result, parsed, parse_error, depth, parent)
                write(record)
                stats.record(record, result.first_byte_s)
                if frontier is not None:
                    frontier.seen(result.final_url)
                    if parsed and depth < options.depth and parsed.get("link_urls"):
                        frontier.offer(parsed["link_urls"], result.final_url or result.url, stats.lines_read - stats.skipped)
                if progress:
                    progress(record)
            except Exception as exc:  # never out of a parse-stage callback: the caller's thread raises it
                halt.fail(exc)

    def refuse(line: OverlongLine) -> None:
        complete(FetchResult(url=str(line), error="invalid_url", detail=line.detail))

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
    level_urls = counted(urls, stats, skip, refuse)
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
                    _consume(results, stats, stage, complete, halt)
                    if stage:
                        stage.drain()  # the level's links are all known only once it is parsed
                    halt.check()
                    if frontier is None or frontier.queued == stats.followed_taken():
                        break
            finally:
                stats.stop()
    except BaseException as exc:
        halt.stopped = True  # before the stage is cancelled: its late deliveries are not records
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
        halt.stopped = True
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


class _Halt:
    """Whether records may still be written, and the first failure to write one."""

    def __init__(self) -> None:
        self.stopped = False
        self.failure: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        if self.failure is None:
            if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                exc = OutputError(f"cannot write the crawl's temporary files: {exc.strerror or exc}")
            self.failure = exc
        self.stopped = True

    def check(self) -> None:
        """Raise the first write failure, in the caller's thread."""
        if self.failure is not None:
            raise self.failure


def _consume(results: Iterator[FetchResult], stats: RunStats, stage: ParseStage | None, complete, halt: _Halt) -> None:
    """Take every result of one engine.fetch() call: to the parse stage, or straight to a record."""
    while True:
        halt.check()
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
