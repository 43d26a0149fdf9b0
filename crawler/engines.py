"""The engine contract: what an engine is, what it gets, what it gives back.

An engine turns URLs into :class:`FetchResult` values.  It never parses
pages, writes records or keeps statistics: the pipeline does that, the same
way for every engine, so that engines differ only in how they wait.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ContextManager, Iterable, Iterator, Mapping, Protocol, runtime_checkable

DEFAULT_USER_AGENT = "crawler/{version} (+https://github.com/crawler-dev/crawler)"


@dataclass(frozen=True)
class FetchResult:
    """The outcome of fetching one URL, success or failure.

    ``error`` is ``None`` or one of the codes in :data:`crawler.fetching.ERROR_CODES`.
    ``body`` is the decoded body (``Content-Encoding`` removed).  ``headers``
    has lower-case names.  ``elapsed`` is seconds from the request start to
    the full body or the failure, retries and backoff included.
    """

    url: str
    status: int | None = None
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    final_url: str | None = None
    error: str | None = None
    elapsed: float = 0.0
    detail: str | None = None
    # Engines that parse where they fetch (e.g. on a remote worker) hand the
    # parse fields back here; the pipeline then passes them through unparsed.
    parsed: Mapping[str, object] | None = None
    size: int | None = None  # decoded body size, when ``body`` was not sent back
    first_byte_s: float | None = None  # seconds from the last exchange's start to its status line

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


@dataclass(frozen=True)
class RunContext:
    """What the pipeline tells an engine about one run: not the user's options, filled in for each run."""

    # what the pipeline will do with pages, for engines that parse where they fetch
    parse: bool = True
    want_links: bool = False
    # the caller reads the bodies (sitemaps are fetched with parse=False and this on):
    # an engine that parses where it fetches and keeps bodies there sends them back
    want_bodies: bool = False
    # the run's per-host politeness (crawler.politeness.HostGate, or a RemoteGate to it for
    # engines that fetch in processes): the fetch plan carries it, and its driver answers
    # the plan's Ask steps with it; None when no rule is on
    gate: object | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Settings:
    """Every option an engine may need, with the command line's defaults; ``run``, the pipeline's context."""

    concurrency: int = 32
    timeout: float = 10.0
    retries: int = 1
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 10
    user_agent: str = ""
    ca_file: str | None = None  # extra CA bundle for https (None: the system's / certifi's)
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    max_retry_after: float = 60.0  # a longer Retry-After is not waited for: the URL fails
    engine_options: Mapping[str, str] = field(default_factory=dict)
    # politeness (see crawler.politeness)
    per_host: int | None = None
    delay: float = 0.0
    robots: bool = True
    run: RunContext = field(default_factory=RunContext)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    def with_run(self, **changes) -> "Settings":
        """These settings with ``run`` changed (see :class:`RunContext`)."""
        return dataclasses.replace(self, run=dataclasses.replace(self.run, **changes))

    def options(self) -> dict:
        """The user's options alone, as a dict (what the report shows)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "run"}


@runtime_checkable
class Engine(Protocol):
    """A way of fetching many URLs concurrently.

    ``fetch`` yields exactly one :class:`FetchResult` per URL of ``urls``, in
    any order, and must read ``urls`` lazily: at most about
    ``settings.concurrency`` URLs (and their bodies) may be held at once.
    Closing the returned iterator early (``.close()``, e.g. on Ctrl-C) must
    stop all work and release every thread, process and socket it started.
    The semantics of one fetch (timeouts, retries, redirects, decoding, size
    limit, error codes) come from :mod:`crawler.fetching`, never re-invented.
    """

    name: str
    description: str

    def fetch(self, urls: Iterable[str], settings: Settings) -> Iterator[FetchResult]: ...


class OptionalEngineParts(Protocol):
    """What an engine may have besides :class:`Engine`'s members: each is read with ``getattr`` and a default.

    Not part of :class:`Engine`, which is ``runtime_checkable``: there, a
    missing optional member would make ``isinstance`` refuse the engine.
    This class states their types and meaning in one place, for readers and
    type checkers (``engine: Engine & OptionalEngineParts`` in spirit).
    Two more optional behaviours belong to ``fetch()`` itself:

    * written as a generator, it may ``return`` a dict of engine-specific
      figures: the report shows it as ``engine_stats``.  A ``remote_cpu_s``
      key (CPU spent outside this machine's process tree, e.g. on cluster
      workers) is added to the report's ``cpu_s``;
    * an engine that parses where it fetches sets ``FetchResult.parsed`` to
      the parse fields (those of :data:`crawler.records.PARSE_FIELDS`) and may
      leave ``body`` empty, giving the decoded size in ``size``; the pipeline
      then writes the record without parsing again.  With
      ``settings.run.want_bodies`` it must send the body back (``--sitemap``
      reads it).
    """

    #: The ``--engine-opt`` keys the engine reads from ``settings.engine_options``,
    #: each with a one-line description.  A key that no engine of the run
    #: declares is a usage error (a misspelt option is never silently
    #: ignored); ``--list-engines`` shows them.  An engine that reads none
    #: declares ``{}``; one without the attribute may read any key, so a run
    #: that includes it cannot refuse one.
    options: Mapping[str, str]

    #: Set when the engine cannot run here (a missing optional dependency), to
    #: the reason and the fix, e.g. "pip install 'crawler[dask]'".
    #: ``--list-engines`` shows it, ``-e all`` skips the engine with a note,
    #: and ``-e NAME`` is a usage error quoting it.  Default: None.
    unavailable: str | None

    #: True when fetch() runs requests in other processes: ``settings.run.gate``
    #: is then a :class:`crawler.politeness.RemoteGate`, whose questions a
    #: thread of the crawl's process answers, so that the limits hold across
    #: all of them.  Default: False.
    fetches_in_processes: bool

    #: Modules ``fetch()`` needs (its HTTP client), imported by the pipeline before
    #: the run's clock starts: an engine module imports its client only when
    #: it runs, so that listing engines stays quick, and the bare reference
    #: loops of the benchmarks import theirs before they time too.  Imports
    #: only: pools, sessions and connections are the run's own cost.
    #: Default: none.
    imports: tuple[str, ...]

    #: Modules the engine's worker processes need, for an engine whose workers the
    #: ``forkserver`` starts: the server imports them once, before forking any
    #: worker (the pipeline lists them before a run starts it; see
    #: :func:`crawler.pipeline.preload_for`).  Default: none.
    forkserver_preload: tuple[str, ...]

    def session(self, settings: Settings) -> ContextManager[object]:
        """A context manager the pipeline enters once around all of a run's ``fetch()`` calls.

        One per ``--depth`` level, and the sitemaps' own: for what should
        outlive one call (a cluster).  Default: none.
        """
        ...
