"""The ``dask`` engine as the registry gives it, on the client: what ``fetch()`` and ``session()`` do."""

from __future__ import annotations

import contextlib
import importlib.util
from typing import TYPE_CHECKING, Iterable, Iterator

import crawler

from .options import DESCRIPTIONS, Options

if TYPE_CHECKING:
    from .cluster import Connection

# .cluster and .run are imported where they are used: every crawl and
# `crawl --list-engines` import this module, whichever engine runs.

INSTALL_HINT = "pip install 'crawler[dask]'"


class DaskEngine:
    name = "dask"
    description = "Dask cluster: batches of URLs fetched (aiohttp) and parsed on the workers; bodies stay there"
    options: dict[str, str] = DESCRIPTIONS  # the --engine-opt keys (see .options)

    def __init__(self) -> None:
        self.unavailable = None if importlib.util.find_spec("distributed") else INSTALL_HINT
        self._session: Connection | None = None

    @contextlib.contextmanager
    def session(self, settings: crawler.Settings) -> Iterator[None]:
        """One cluster for every ``fetch()`` called inside: the pipeline enters it around a whole run.

        A crawl with ``--depth`` calls ``fetch()`` once per level (and once
        per level of sitemap indexes); without a session each call would
        start and stop its own LocalCluster.  Inside one, they share the
        cluster (or the client of ``scheduler=``) and the politeness gates on
        the workers, so robots.txt is read once per host per run, as in the
        other engines.  Leaving the session closes the cluster.
        """
        if self._session is not None:  # nested: the outer session serves
            yield
            return
        from .cluster import Connection

        connection = Connection(Options.from_settings(settings), settings)
        quiet = _QuietDask()
        try:
            connection.open()
            self._session = connection
            yield
        finally:
            self._session = None
            try:
                connection.close()
            finally:
                quiet.restore()

    def fetch(self, urls: Iterable[str], settings: crawler.Settings) -> Iterator[crawler.FetchResult]:
        """Batches of ``urls`` run on the cluster (see :mod:`.run`); returns the run's ``engine_stats``."""
        from .run import Run

        run = Run(Options.from_settings(settings), settings, self._session)
        # Dask logs what it copes with (reconnection attempts, workers leaving) with tracebacks
        # on stderr; the crawl reports what matters itself, in one line (CrawlerError).
        quiet = _QuietDask()
        try:
            run.start()
            yield from run.results(iter(urls))
        finally:
            try:
                run.close()
            finally:
                quiet.restore()
        return run.engine_stats()


class _QuietDask:
    """Raise the ``distributed`` loggers to CRITICAL for a run; restore their levels after.

    Dask's logging config gives some of them levels of their own
    (``distributed.client: warning``), so each is set, not just the parent.
    """

    def __init__(self) -> None:
        import logging

        import distributed  # noqa: F401  (importing it applies Dask's logging config: first)

        names = ["distributed"] + [
            name
            for name, logger in list(logging.root.manager.loggerDict.items())
            if name.startswith("distributed.") and isinstance(logger, logging.Logger) and logger.level != logging.NOTSET
        ]
        self.levels = {name: logging.getLogger(name).level for name in names}
        for name in names:
            logging.getLogger(name).setLevel(logging.CRITICAL)

    def restore(self) -> None:
        import logging

        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
