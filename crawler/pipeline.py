"""One engine run: fetch → (parse stage) → records and statistics.

The engine's results are consumed as they come.  Pages to parse go to a
:class:`ParseStage` — a ``ProcessPoolExecutor`` fed in batches through a
bounded hand-off — while fetching goes on; everything else becomes a record
at once.  When the parse stage is full, the pipeline stops pulling results,
so the engine slows down instead of memory growing (Scrapy's
``Slot.needs_backout``).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import itertools
import operator
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from . import parse
from .engines import Engine, FetchResult, Settings
from .errors import CrawlerError, OutputError
from .fetching import default_user_agent
from .frontier import Frontier
from .records import make_record
from .parse_stage import ParseStage
from .politeness import GateServer, HostGate
from .processes import hide_script_main, preload_in_forkserver, show_script_main
from .stats import MemorySampler, RunStats
from .urls import OverlongLine

if TYPE_CHECKING:
    from .sitemaps import URLSpool


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


def wants_parse(result: FetchResult) -> bool:
    return result.ok and result.parsed is None and parse.is_html(result.content_type, result.body)


def preload_for(engines: Iterable[Engine]) -> None:
    """Have the forkserver import what these engines' worker processes need (their ``forkserver_preload``).

    Call it before any run of a session starts the forkserver (the parse
    stage does, first): a list added later counts only if the server is
    started again, which it is not, and each worker then imports the modules
    itself.  The parse workers of a run without such an engine need none of
    it, so it is not listed at import.
    """
    for engine in engines:
        preload_in_forkserver(list(getattr(engine, "forkserver_preload", ())))


def _politeness_gate(engine: Engine, settings: Settings):
    """A fresh per-host gate for this run and, for an engine whose fetches run in processes, its server.

    (None, None) when no politeness rule is on.
    """
    if not (settings.robots or settings.per_host or settings.delay):
        return None, None
    gate = HostGate(settings.per_host, settings.delay, settings.robots, settings.user_agent or default_user_agent())
    if getattr(engine, "fetches_in_processes", False):
        return gate, GateServer(gate)
    return gate, None


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
    **run: object,
) -> RunStats:
    """Run ``engine`` over ``urls`` (see :class:`EngineRun`), ``write`` each record as it is made, return the stats.

    On ``KeyboardInterrupt``, a failure of ``write`` or any other exception,
    the run is stopped (every process and thread it started), and the
    exception re-raised with the stats of what completed as ``exc.run_stats``.
    """
    engine_run = EngineRun(engine, urls, settings, options, exclude_pids=exclude_pids, skip=skip, write=write, progress=progress, **run)
    try:
        for _ in engine_run:  # every record went to write()
            pass
    except BaseException as exc:
        exc.run_stats = engine_run.stats
        raise
    return engine_run.stats


class EngineRun:
    """One engine's run over a URL list; iterate it for the records, each as its URL completes.

    Iteration drives the whole run in the caller's thread: the engine is
    pulled for results, pages go to the parse stage, and records come out
    between results; the parse stage's records made while the engine waits
    come out at its next result.  While the caller holds a record, nothing
    new is fetched by engines that run in this thread (asyncio, yield): a
    request's clock keeps running meanwhile.  Closing the iterator
    (``break``, ``.close()``, an exception) stops every process and thread
    the run started; :attr:`stats` then covers the records handed out.

    With ``write``, records are not handed out: each is written as soon as
    it is made, from whichever thread made it (the parse stage's callbacks
    included), and counted in the same step (:data:`RECORDING`), then
    ``progress(record)`` is called; iterating yields nothing.  That is the
    CLI's way: a record on disk as soon as it exists, whatever the engine
    is waiting for.

    ``skip(url)`` true means the URL already has its record (``--resume``).
    With ``options.depth``, the links found by the parse stage are crawled
    too, one level per ``engine.fetch()`` call (breadth-first).

    ``state``: where the frontier's log lives (:func:`crawler.frontier.state_path`),
    kept across processes; without it, a temporary file.  A page's links
    reach the log (flushed) before its record is handed out, so a record
    never outlives its links.  ``resume`` takes the crawl up from that log:
    the list (level 0) is read again, then each level's queued URLs are
    crawled, and ``skip`` passes over every URL, list line or followed link,
    that has its record already (the records judge what is done, not the
    log).  Without ``resume`` an existing log is replaced.  A crawl that
    reaches its end writes that into the log; resumed, it says "already
    complete" through ``notify`` and fetches only list lines that have no
    record (lines added to the URL file since), with their links.

    ``sitemaps``: sitemap sources (``--sitemap``), read before the crawl
    through this engine (parsing off, the run's politeness gate): their page
    URLs join the list after ``urls``, as depth-0 lines; each sitemap
    document that fails becomes one record (a line read, in the report).

    ``notify(line)`` receives one-line notes for the user (stderr in the CLI).

    An engine may offer ``session(settings)``, a context manager entered
    around the whole run, every level included (the dask engine keeps one
    cluster for all of them).

    A page the parse stage delivers after the run was stopped is dropped, so
    ``--resume`` fetches it again: it has no record.  A failure in a parse
    stage callback (the frontier's spool) stops the run and is raised in the
    caller's thread at the next step; an ``OSError`` there becomes an
    :class:`OutputError`.
    """

    def __init__(
        self,
        engine: Engine,
        urls: Iterable[str],
        settings: Settings,
        options: RunOptions,
        *,
        exclude_pids: frozenset[int] = frozenset(),
        skip: Callable[[str], bool] | None = None,
        state: str | None = None,
        resume: bool = False,
        sitemaps: Sequence[str] = (),
        notify: Callable[[str], None] | None = None,
        write: Callable[[dict], None] | None = None,
        progress: Callable[[dict], None] | None = None,
    ) -> None:
        self.engine = engine
        self._write = write
        self._progress = progress
        self.urls = urls
        self.settings = settings
        self.options = options
        self.skip = skip
        self.state = state
        self.resume = resume
        self.sitemaps = sitemaps
        self.notify = notify or (lambda line: None)
        self.exclude_pids = exclude_pids
        self.stats = RunStats(engine.name, exclude_pids)
        self.stats.concurrency = settings.concurrency
        self.stats.fetches_in_processes = bool(getattr(engine, "fetches_in_processes", False))
        self.following = options.depth > 0 and options.parse
        self.want_links = self.following or (options.record_links and options.parse)
        self.frontier: Frontier | None = None
        self.halt = _Halt()
        self._lock = threading.Lock()
        self._origin: dict[str, tuple[int, str]] = {}  # followed URL in the engine's hands -> (depth, parent)
        self._ready: collections.deque[tuple[dict, float | None]] = collections.deque()
        self._started = False
        # the run's parts, made by _set_up() when iteration starts
        self.stage: ParseStage | None = None
        self.gate = self.gate_server = None
        self.run_settings = settings
        self.results: Iterator[FetchResult] = iter(())
        self.spool = None
        self._session = None
        self._sessions = contextlib.ExitStack()

    def __iter__(self) -> Iterator[dict]:
        if self._started:
            raise RuntimeError("an EngineRun is iterated once")
        self._started = True
        return self._records()

    # --- records ----------------------------------------------------------------------

    def complete(
        self, result: FetchResult, parsed: dict | None = None, parse_error: str | None = None, at: tuple[int, str | None] | None = None
    ) -> None:
        """Make ``result``'s record, ready to be handed out (from any thread: the parse stage calls it too)."""
        halt, frontier, options = self.halt, self.frontier, self.options
        if halt.stopped:
            return
        parsed = parsed or (dict(result.parsed) if result.parsed else None)
        with self._lock:
            if halt.stopped:
                return
            try:
                depth, parent = at or self._origin.pop(result.url, (0, None))
                if frontier is not None:  # the page's links go to the log (flushed) before its record
                    frontier.seen(result.final_url)  # a redirect's target is crawled: never queued after this
                    links = parsed.get("link_urls") if parsed else None
                    if links and depth < options.depth:
                        frontier.offer(links, result.final_url or result.url, self.stats.lines_read, depth + 1)
                    else:
                        frontier.sync()
                record = make_record(self.engine.name, result, parsed, parse_error, depth, parent, options.record_links)
                if self._write is None:
                    self._ready.append((record, result.first_byte_s))
                    return
                with RECORDING:
                    self._write(record)
                    self.stats.record(record, result.first_byte_s)
                if self._progress:
                    self._progress(record)
            except Exception as exc:  # never out of a parse-stage callback: the caller's thread raises it
                halt.fail(exc)

    def _hand_out(self) -> Iterator[dict]:
        """Yield the records made so far (none with ``write``), each counted as it goes."""
        while self._ready:
            record, first_byte = self._ready.popleft()
            self.stats.record(record, first_byte)
            show_script_main()  # the caller's own processes are its business
            try:
                yield record
            finally:
                hide_script_main()

    # --- the run ----------------------------------------------------------------------

    def _records(self) -> Iterator[dict]:
        hide_script_main()  # the run's processes (parse stage, pool, cluster) are ours
        try:
            yield from self._steps()
        finally:
            show_script_main()

    def _steps(self) -> Iterator[dict]:
        self._set_up()
        stats, stage = self.stats, self.stage
        memory = MemorySampler(self.exclude_pids)
        try:
            if stage:
                stage.start()
            with memory:
                stats.start()
                try:
                    with contextlib.ExitStack() as self._sessions:
                        yield from self._crawl()
                finally:
                    stats.stop()
        except BaseException:
            self.halt.stopped = True  # before the stage is cancelled: its late deliveries are not records
            stats.interrupted = True
            close = getattr(self.results, "close", None)
            if close:
                close()
            if stage:
                stage.close(cancel=True)
            raise
        else:
            if stage:
                stage.close()
            self.halt.stopped = True
            stats.check_accounting()
        finally:
            stats.peak_rss_mb = memory.peak / 2**20
            self._release()

    def _set_up(self) -> None:
        """The run's parts: frontier (when following), parse stage, politeness gate, the settings the engine gets."""
        engine, options = self.engine, self.options
        for module in getattr(engine, "imports", ()):
            importlib.import_module(module)  # before the clock: the engine's client library
        preload_for([engine])
        if self.following:
            self.frontier = _open_frontier(engine.name, options, self.state, self.resume, self.skip, self.notify)
        if options.parse:
            self.stage = ParseStage(
                options.parse_workers, self.complete, options.batch_size, options.parse_bytes_in_flight, options.parse_timeout
            )
            self.stage.want_links = self.want_links
        settings = self.settings.with_run(parse=options.parse, want_links=self.want_links)
        self.gate, self.gate_server = _politeness_gate(engine, settings)
        asked = self.gate_server.remote if self.gate_server is not None else self.gate
        self.run_settings = settings.with_run(gate=asked) if asked is not None else settings
        self._session = getattr(engine, "session", None)

    def _engine_ready(self) -> None:
        """Enter the engine's session once, when there is something to fetch."""
        if callable(self._session):
            self._sessions.enter_context(self._session(self.run_settings))
            # on the way out, the engine's run in progress is closed before its session
            self._sessions.callback(lambda: getattr(self.results, "close", lambda: None)())
        self._session = None

    def _crawl(self) -> Iterator[dict]:
        """The list (and the sitemaps' pages), then each level of followed links."""
        frontier = self.frontier
        urls = self.urls
        if self.sitemaps and not (frontier is not None and frontier.complete):
            self._engine_ready()
            self.spool = _read_sitemaps(self.engine, self.sitemaps, self.run_settings, self._sitemap_failure, self.notify)
            self.halt.check()
            urls = itertools.chain(urls, self.spool)
        listed = frontier.listed if frontier is not None else None
        level_urls: Iterable[str] = counted(urls, self.stats, self.skip, self._refuse, listed)
        listed_count = operator.length_hint(self.urls, -1)
        remaining = None if listed_count < 0 else lambda: listed_count - self.stats.lines_read  # noqa: E731
        for level in range(self.options.depth + 1 if self.following else 1):
            if level:
                if not frontier.count_at(level):
                    break  # nothing was found to go deeper with
                frontier.begin_level(level)
                level_urls = self._followed(level)
                queued, taken = frontier.count_at(level), self.stats.pulled
                remaining = lambda: queued - (self.stats.pulled - taken)  # noqa: E731
            yield from self._level(level_urls, remaining)
        if frontier is not None:
            frontier.finish()

    def _level(self, urls: Iterable[str], remaining: Callable[[], int] | None) -> Iterator[dict]:
        """One engine.fetch() call over ``urls`` (about ``remaining()`` more, if known), and its pages parsed to the last."""
        pending = _nonempty(urls, remaining)
        yield from self._hand_out()  # e.g. refused overlong lines
        if pending is None:
            return  # e.g. resumed: every URL of the level has its record
        self._engine_ready()
        self.results = iter(self.engine.fetch(pending, self.run_settings))
        yield from self._consume(self.results, self.stage)
        if self.stage:  # the level's links are all known only once it is parsed
            while not self.stage.drain(wake=lambda: bool(self._ready)):
                yield from self._hand_out()
        yield from self._hand_out()
        self.halt.check()

    def _release(self) -> None:
        """Close what the run opened, and keep the figures of its parts in the stats."""
        stats, stage = self.stats, self.stage
        if self.spool is not None:
            self.spool.close()
        if self.frontier is not None:
            stats.links = self.frontier.stats()
            self.frontier.close()
        if self.gate is not None:
            stats.politeness = self.gate.stats()
        if self.gate_server is not None:
            self.gate_server.close()
        if stage:
            stats.parse_cpu_s = stage.parse_cpu_s
            stats.peak_parse_backlog = stage.peak_backlog
            stats.parse_wait_s = stage.wait_s

    def _consume(self, results: Iterator[FetchResult], stage: ParseStage | None) -> Iterator[dict]:
        """Take every result of one engine.fetch() call: to the parse stage, or straight to a record."""
        stats = self.stats
        while True:
            self.halt.check()
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
                self.complete(result)
            yield from self._hand_out()

    def _refuse(self, line: OverlongLine) -> None:
        self.complete(FetchResult(url=str(line), error="invalid_url", detail=line.detail))

    def _followed(self, level: int) -> Iterator[str]:
        for url, parent in self.frontier.level(level):
            if self.skip is not None and self.skip(url):  # done by the stopped run (--resume)
                self.stats.skipped += 1
                continue
            with self._lock:
                self._origin[url] = (level, parent)
            self.stats.pulled += 1
            yield url

    def _sitemap_failure(self, failure) -> None:
        result = failure.result
        stats = self.stats
        stats.lines_read += 1
        self.notify(f"{self.engine.name}: sitemap {result.url}: {result.error} ({result.detail})")
        if self.skip is not None and self.skip(result.url):
            stats.skipped += 1
            return
        stats.pulled += 1
        stats.returned()
        self.complete(result, at=(0, failure.parent))


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

    fetch_settings = settings.with_run(parse=False, want_links=False, want_bodies=True)
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


def _nonempty(urls: Iterable[str], remaining: Callable[[], int] | None = None) -> Iterator[str] | None:
    """``urls`` as an iterator, or None when it has none (no engine run is started for nothing).

    ``remaining()``: how many URLs ``urls`` may still give (None: unknown).
    The iterator passes that on (PEP 424, ``operator.length_hint``), so that
    an engine that starts a process per request in flight starts no more
    than the list needs.
    """
    iterator = iter(urls)
    for first in iterator:
        if remaining is None:
            return itertools.chain((first,), iterator)
        held = [first]

        def give() -> Iterator[str]:
            yield held.pop()
            yield from iterator

        return URLStream(give(), lambda: remaining() + len(held))
    return None


class URLStream:
    """An iterator of URLs that tells how many are left (``operator.length_hint``)."""

    def __init__(self, urls: Iterator[str], remaining: Callable[[], int]) -> None:
        self._urls = urls
        self._remaining = remaining

    def __iter__(self) -> "URLStream":
        return self

    def __next__(self) -> str:
        return next(self._urls)

    def __length_hint__(self) -> int:
        return max(self._remaining(), 0)

    def close(self) -> None:
        close = getattr(self._urls, "close", None)
        if close:
            close()


def sized(urls: Iterable[str], count: int | None) -> Iterable[str]:
    """``urls``, known to be ``count`` (a counted file, the demo's pages), telling so to :class:`EngineRun`."""
    if count is None:
        return urls
    taken = 0

    def counting() -> Iterator[str]:
        nonlocal taken
        for url in urls:
            taken += 1
            yield url

    return URLStream(counting(), lambda: count - taken)


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
