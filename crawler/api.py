"""The Python API (SPEC §9): what ``crawl`` does, as two calls.

:func:`crawl` yields one engine's records as each URL completes;
:func:`compare` runs engines one after the other and returns the report,
the same dict ``--report`` writes.  Options are the command's long options
with ``_`` for ``-``; :class:`Options` lists them with their defaults.

Both work from a script without an ``if __name__ == "__main__":`` guard:
the processes a run starts do not run the script again
(:func:`crawler.processes.hide_script_main`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import operator
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from .errors import CrawlerError

log = logging.getLogger("crawler")


class OptionError(CrawlerError, ValueError):
    """An option's value is out of its range, or options that cannot go together."""


@dataclass(frozen=True)
class Options:
    """Every option of :func:`crawl` and :func:`compare`, with the command's defaults."""

    concurrency: int | Sequence[int] = 32  # compare() sweeps every engine over a list of levels
    timeout: float = 10.0
    retries: int = 1
    max_bytes: int = 10 * 1024 * 1024
    parse: bool = True
    parse_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    parse_timeout: float = 5.0
    depth: int = 0
    same_host: bool = True
    max_pages: int | None = None
    record_links: bool = False
    per_host: int | None = None
    delay: float = 0.0
    robots: bool = True
    user_agent: str | None = None
    ca_file: str | None = None
    engine_opts: Mapping[str, str] = field(default_factory=dict)
    sitemap: Sequence[str] = ()
    plugin: Sequence[str] = ()

    @classmethod
    def of(cls, function: str, given: Mapping[str, object]) -> "Options":
        """The options ``given`` to ``function``: an unknown name is a ``TypeError`` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        for name in given:
            if name not in known:
                raise TypeError(f"{function}() got an unexpected option {name!r}; options are: {', '.join(sorted(known))}")
        options = cls(**given)
        options.check()
        return options

    def levels(self) -> list[int]:
        levels = [self.concurrency] if isinstance(self.concurrency, int) else list(self.concurrency)
        return list(dict.fromkeys(levels))

    def check(self) -> None:
        """Raise :class:`OptionError` for a value the command line would refuse."""
        levels = self.levels()
        problems = [
            (not levels or any(not isinstance(c, int) or c < 1 for c in levels), "concurrency must be at least 1"),
            (self.timeout <= 0, "timeout must be more than 0 seconds"),
            (self.retries < 0, "retries cannot be negative"),
            (self.max_bytes < 1, "max_bytes must be at least 1"),
            (self.parse_workers < 0, "parse_workers cannot be negative"),
            (self.parse_timeout <= 0, "parse_timeout must be more than 0 seconds"),
            (self.depth < 0, "depth cannot be negative"),
            (self.depth > 0 and not self.parse, "depth follows the links the parse stage finds: it cannot go with parse=False"),
            (self.max_pages is not None and self.max_pages < 1, "max_pages must be at least 1"),
            (self.per_host is not None and self.per_host < 1, "per_host must be at least 1"),
            (self.delay < 0, "delay cannot be negative"),
            (self.ca_file is not None and not os.path.isfile(self.ca_file), f"CA file not found: {self.ca_file}"),
            (isinstance(self.sitemap, str) or isinstance(self.plugin, str), "sitemap and plugin take a list of strings"),
            (not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(self.engine_opts).items()), "engine_opts maps strings to strings"),
        ]
        for wrong, message in problems:
            if wrong:
                raise OptionError(message)

    def settings(self):
        """The engine's :class:`~crawler.engines.Settings` (at the first concurrency level)."""
        from .engines import Settings
        from .fetching import default_user_agent

        return Settings(
            concurrency=self.levels()[0],
            timeout=self.timeout,
            retries=self.retries,
            max_bytes=self.max_bytes,
            user_agent=self.user_agent or default_user_agent(),
            ca_file=self.ca_file,
            engine_options=dict(self.engine_opts),
            per_host=self.per_host,
            delay=self.delay,
            robots=self.robots,
        )

    def run_options(self):
        """What the pipeline does with pages: :class:`~crawler.pipeline.RunOptions`."""
        from .pipeline import RunOptions

        return RunOptions(
            parse=self.parse,
            parse_workers=self.parse_workers,
            parse_timeout=self.parse_timeout,
            depth=self.depth,
            same_host=self.same_host,
            max_pages=self.max_pages,
            record_links=self.record_links,
        )


def crawl(urls: Iterable[str], engine: str = "asyncio", **options) -> Iterator[dict]:
    """Fetch ``urls`` with ``engine``; yield each URL's record (SPEC §6) as it completes.

    ``urls`` is any iterable of URL strings, read lazily; blank ones are
    skipped, and one that is no URL gets a record with an error.  Options are
    those of :class:`Options`.  The crawl runs while you iterate: breaking
    out of the loop, or closing the generator, stops every process and
    thread it started.  Engines that fetch in this thread (asyncio, yield)
    fetch nothing while your loop body runs, and a request's timeout counts
    that time.  An unknown engine or a bad option is raised here, before
    anything is fetched.
    """
    chosen = Options.of("crawl", options)
    if not isinstance(engine, str) or engine == "all" or "," in engine:
        raise OptionError(f"crawl() runs one engine, got {engine!r}: use compare() for several")
    if not isinstance(chosen.concurrency, int):
        raise OptionError("crawl() runs at one concurrency level: use compare() to sweep")
    [found] = _engines(chosen, [engine])
    _check_urls(urls)
    from .pipeline import EngineRun, sized

    strings = sized(_url_strings(urls), operator.length_hint(urls) or None)
    run = EngineRun(found, strings, chosen.settings(), chosen.run_options(), sitemaps=tuple(chosen.sitemap), notify=log.info)
    return iter(run)


def compare(
    urls: Iterable[str],
    engines: str | Sequence[str] = ("asyncio",),
    *,
    on_record: Callable[[dict], None] | None = None,
    **options,
) -> dict:
    """Run each of ``engines`` over ``urls`` in turn; return the report (SPEC §7), the dict ``--report`` writes.

    ``engines`` is a list of names, or ``"all"`` (the engines that can run
    here).  ``urls`` may be read once only (a generator): it is then spooled
    to a temporary file first, so that every engine gets the same list.  A
    list of levels as ``concurrency`` runs every engine at each (a sweep).
    ``on_record(record)`` receives every record, if given.
    """
    chosen = Options.of("compare", options)
    selected = _engines(chosen, [engines] if isinstance(engines, str) else list(engines))
    _check_urls(urls)
    from .pipeline import preload_for, run_engine, sized
    from .report import build_report

    preload_for(selected)
    settings, run_options, levels = chosen.settings(), chosen.run_options(), chosen.levels()
    sweep = len(levels) > 1
    summaries = []
    with _replayable(urls) as replay:
        for level in levels:
            for engine in selected:
                listed = replay()
                stats = run_engine(
                    engine, sized(_url_strings(listed), operator.length_hint(listed) or None), settings.replace(concurrency=level), run_options,
                    on_record or (lambda record: None), sitemaps=tuple(chosen.sitemap), notify=log.info,
                )  # fmt: skip
                summaries.append(dict(stats.summary(), sweep=sweep))
    return build_report(summaries, settings, run_options, {"demo": False, "urls_file": None, "concurrency_levels": levels})


def _engines(options: Options, names: list[str]) -> list:
    from .plugins import check_engine_options, get_engines, get_plugin_manager

    skipped: list[str] = []
    found = get_engines(get_plugin_manager(list(options.plugin)), names, skipped)
    for note in skipped:
        log.warning("skipping %s", note)
    check_engine_options(found, options.engine_opts)
    return found


def _check_urls(urls: object) -> None:
    if isinstance(urls, (str, bytes)):
        raise TypeError("urls is an iterable of URL strings, not one string: crawl([url]), not crawl(url)")
    iter(urls)  # a TypeError now, not at the first fetch


def _url_strings(urls: Iterable[object]) -> Iterator[str]:
    """The URLs as the engine takes them: stripped strings, blank ones left out."""
    for url in urls:
        text = str(url).strip()
        if text:
            yield text


@contextlib.contextmanager
def _replayable(urls: Iterable[str]) -> Iterator[Callable[[], Iterable[str]]]:
    """A callable giving ``urls`` afresh for each engine: a one-shot iterator is spooled to disk, never held."""
    if iter(urls) is not urls:  # a list, a tuple, a range of... anything that iterates anew
        yield lambda: urls
        return
    with tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n") as spool:
        for url in _url_strings(urls):
            spool.write(url.replace("\n", " ").replace("\r", " ") + "\n")

        def replay() -> Iterator[str]:
            spool.seek(0)
            for line in spool:
                yield line.rstrip("\n")

        yield replay
