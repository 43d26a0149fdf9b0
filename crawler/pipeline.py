"""One engine run: fetch → (parse stage) → records and statistics.

The engine's results are consumed as they come.  Pages to parse go to a
:class:`ParseStage` — a ``ProcessPoolExecutor`` fed in batches through a
bounded hand-off — while fetching goes on; everything else becomes a record
at once.  When the parse stage is full, the pipeline stops pulling results,
so the engine slows down instead of memory growing (Scrapy's
``Slot.needs_backout``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from . import parse
from .engines import Engine, FetchResult, Settings
from .errors import CrawlerError, OutputError
from .fetching import default_user_agent
from .frontier import Frontier
from .outputs import record_keys
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
    record_links: bool = False  # records carry link_urls, the page's links (SPEC §6)


def make_record(
    engine: str,
    result: FetchResult,
    parsed: dict | None = None,
    parse_error: str | None = None,
    depth: int = 0,
    parent: str | None = None,
    record_links: bool = False,
) -> dict:
    """The SPEC §6 record of one URL; with ``record_links``, ``link_urls`` too (None when the page was not parsed)."""
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
    if record_links:
        links = fields.get("link_urls")
        record["link_urls"] = list(links) if links is not None else None
    assert tuple(record) == record_keys(record_links)
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


class _Recording:
    """Writing a record and counting it are one step for the main thread's signal handlers.

    A Ctrl-C handler that raises between the two would leave the file and the
    report one record apart; while :attr:`busy`, the CLI's handler parks its
    exception here instead, and it is raised as the step ends.
    """

    def __init__(self) -> None:
        self.busy = False
        self.pending: BaseException | None = None

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.busy = True

    def __exit__(self, *exc) -> None:
        if threading.current_thread() is threading.main_thread():
            self.busy = False
            pending, self.pending = self.pending, None
            if pending is not None:
                raise pending


RECORDING = _Recording()


def counted(
    urls: Iterable[str],
    stats: RunStats,
    skip: Callable[[str], bool] | None,
    refuse: Callable[[OverlongLine], None] | None = None,
    listed: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """The URLs for the engine: lines counted, ``--resume``'s done ones skipped.

    An :class:`OverlongLine` is never handed to the engine: ``refuse`` writes
    its ``invalid_url`` record at once (it counts as pulled and returned).
    ``listed(url)`` is told of every line read, the skipped ones included
    (the frontier marks them seen).
    """
    for url in urls:
        stats.lines_read += 1
        if listed is not None and not isinstance(url, OverlongLine):
            listed(url)
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
    *,
    state: str | None = None,
    resume: bool = False,
    sitemaps: Sequence[str] = (),
    notify: Callable[[str], None] | None = None,
) -> RunStats:
    """Fetch ``urls`` with ``engine``, write one record per URL, return the stats.

    ``skip(url)`` true means the URL already has its record (``--resume``).
    With ``options.depth``, the links found by the parse stage are crawled
    too, one level per ``engine.fetch()`` call (breadth-first).

    ``state``: where the frontier's log lives (:func:`crawler.frontier.state_path`),
    kept across processes; without it, a temporary file.  A page's links
    reach the log (flushed) before its record is written, so a record never
    outlives its links.  ``resume`` takes the crawl up from that log: the
    list (level 0) is read again, then each level's queued URLs are crawled,
    and ``skip`` passes over every URL, list line or followed link, that
    has its record already (the records judge what is done, not the log).
    Without ``resume`` an existing log is replaced.  A crawl that reaches its
    end writes that into the log; resumed, it says "already complete"
    through ``notify`` and fetches only list lines that have no record
    (lines added to the URL file since), with their links.

    ``sitemaps``: sitemap sources (``--sitemap``), read before the crawl
    through this engine (parsing off, the run's politeness gate): their page
    URLs join the list after ``urls``, as depth-0 lines; each sitemap
    document that fails becomes one record (a line read, in the report).

    ``notify(line)`` receives one-line notes for the user (stderr in the CLI).

    An engine may offer ``session(settings)``, a context manager entered
    around the whole run, every level included (the dask engine keeps one
    cluster for all of them).

    On ``KeyboardInterrupt`` (or any exception) the engine is closed, the
    parse stage stopped, the stats of what completed kept, and the exception
    re-raised with the stats attached as ``exc.run_stats``; from then on
    nothing more is written (a page the parse stage delivers late is
    dropped, so it is fetched again by ``--resume``: it has no record).

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
    want_links = following or (options.record_links and options.parse)
    tell = notify or (lambda line: None)
    frontier = _open_frontier(engine.name, options, state, resume, skip, tell) if following else None
    origin: dict[str, tuple[int, str]] = {}  # followed URL in the engine's hands -> (depth, parent)
    halt = _Halt()

    def complete(
        result: FetchResult, parsed: dict | None = None, parse_error: str | None = None, at: tuple[int, str | None] | None = None
    ) -> None:
        if halt.stopped:
            return
        parsed = parsed or (dict(result.parsed) if result.parsed else None)
        with lock:
            if halt.stopped:
                return
            try:
                depth, parent = at or origin.pop(result.url, (0, None))
                if frontier is not None:  # the page's links go to the log (flushed) before its record
                    frontier.seen(result.final_url)  # a redirect's target is crawled: never queued after this
                    links = parsed.get("link_urls") if parsed else None
                    if links and depth < options.depth:
                        frontier.offer(links, result.final_url or result.url, stats.lines_read, depth + 1)
                    else:
                        frontier.sync()
                record = make_record(engine.name, result, parsed, parse_error, depth, parent, options.record_links)
                with RECORDING:
                    write(record)
                    stats.record(record, result.first_byte_s)
                if progress:
                    progress(record)
            except Exception as exc:  # never out of a parse-stage callback: the caller's thread raises it
                halt.fail(exc)

    def refuse(line: OverlongLine) -> None:
        complete(FetchResult(url=str(line), error="invalid_url", detail=line.detail))

    def followed(level: int) -> Iterator[str]:
        for url, parent in frontier.level(level):
            if skip is not None and skip(url):  # done by the stopped run (--resume)
                stats.skipped += 1
                continue
            with lock:
                origin[url] = (level, parent)
            stats.pulled += 1
            yield url

    def sitemap_failure(failure) -> None:
        result = failure.result
        stats.lines_read += 1
        tell(f"{engine.name}: sitemap {result.url}: {result.error} ({result.detail})")
        if skip is not None and skip(result.url):
            stats.skipped += 1
            return
        stats.pulled += 1
        stats.returned()
        complete(result, at=(0, failure.parent))

    stage = (
        ParseStage(options.parse_workers, complete, options.batch_size, options.parse_bytes_in_flight, options.parse_timeout)
        if options.parse
        else None
    )
    if stage:
        stage.want_links = want_links
    settings = settings.replace(parse=options.parse, want_links=want_links)
    gate, gate_manager = _politeness_gate(engine, settings)
    if gate is not None:
        settings = settings.replace(gate=gate)
    session = getattr(engine, "session", None)
    results = iter(())
    spool = None
    memory = MemorySampler(exclude_pids)
    try:
        if stage:
            stage.start()
        with memory:
            stats.start()
            try:
                with contextlib.ExitStack() as sessions:

                    def engine_ready() -> None:
                        """Enter the engine's session once, when there is something to fetch."""
                        nonlocal session
                        if callable(session):
                            sessions.enter_context(session(settings))
                            # on the way out, the engine's run in progress is closed before its session
                            sessions.callback(lambda: getattr(results, "close", lambda: None)())
                        session = None

                    if sitemaps and not (frontier is not None and frontier.complete):
                        engine_ready()
                        spool = _read_sitemaps(engine, sitemaps, settings, sitemap_failure, tell)
                        halt.check()
                        urls = itertools.chain(urls, spool)
                    listed = frontier.listed if frontier is not None else None
                    level_urls: Iterable[str] = counted(urls, stats, skip, refuse, listed)
                    for level in range(options.depth + 1 if following else 1):
                        if level:
                            if not frontier.count_at(level):
                                break  # nothing was found to go deeper with
                            frontier.begin_level(level)
                            level_urls = followed(level)
                        pending = _nonempty(level_urls)
                        if pending is None:
                            continue  # e.g. resumed: every URL of the level has its record
                        engine_ready()
                        results = iter(engine.fetch(pending, settings))
                        _consume(results, stats, stage, complete, halt)
                        if stage:
                            stage.drain()  # the level's links are all known only once it is parsed
                        halt.check()
                    if frontier is not None:
                        frontier.finish()
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
        if spool is not None:
            spool.close()
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


def _open_frontier(
    engine: str, options: RunOptions, state: str | None, resume: bool, done, tell: Callable[[str], None]
) -> Frontier:
    """The run's frontier: a temporary log, a fresh ``state``, or (``resume``) the one a stopped crawl left."""
    if state is None:
        return Frontier(options.max_pages, options.same_host)
    existed = os.path.exists(state)
    try:
        frontier = Frontier(options.max_pages, options.same_host, state, fresh=not resume)
        if resume:
            frontier.restore()
    except OSError as exc:
        raise CrawlerError(f"cannot use the crawl's state file {state}: {exc.strerror or exc}") from None
    if resume and frontier.complete:
        tell(f"{engine}: already complete ({state})")
    elif resume and not existed and _records_done(done):
        tell(
            f"warning: {engine}: no frontier state at {state}: links of pages already crawled cannot be followed; "
            f"their {_records_done(done)} records are kept and the links of pages crawled from now on are followed "
            "(run without --resume to crawl again from the start)"
        )
    return frontier


def _records_done(skip) -> int:
    """How many records ``skip`` knows of: a :class:`~crawler.outputs.CompletedUrls` or its ``take``; 0 if it cannot tell."""
    for holder in (skip, getattr(skip, "__self__", None)):
        try:
            return len(holder)
        except TypeError:
            continue
    return 0


def _read_sitemaps(engine: Engine, sources: Sequence[str], settings: Settings, failed, tell) -> "URLSpool":
    """Expand ``sources`` through ``engine`` (parse off, bodies back): page URLs in a spool, failures to ``failed``."""
    from .sitemaps import PageURL, URLSpool, expand_sitemaps

    fetch_settings = settings.replace(parse=False, want_links=False, want_bodies=True)
    spool = URLSpool()
    events = expand_sitemaps(sources, lambda batch: engine.fetch(batch, fetch_settings), max_bytes=settings.max_bytes)
    counts = None
    try:
        while True:
            try:
                event = next(events)
            except StopIteration as finished:
                counts = finished.value
                break
            if isinstance(event, PageURL):
                spool.add(event.url)
            else:
                failed(event)
    except BaseException:
        events.close()
        spool.close()
        raise
    if counts:
        tell(
            f"{engine.name}: sitemaps: {counts['sitemaps']} documents read, {counts['pages']} page URLs, "
            f"{counts['failures']} failed"
        )
    return spool


def _nonempty(urls: Iterable[str]) -> Iterator[str] | None:
    """``urls`` as an iterator, or None when it has none (no engine run is started for nothing)."""
    iterator = iter(urls)
    for first in iterator:
        return itertools.chain((first,), iterator)
    return None


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
