"""The ``pool`` engine as the registry gives it: its ``--engine-opt`` keys, its start method, ``fetch()``.

Start method: ``forkserver`` where the platform has it (Linux, the BSDs,
macOS), else ``spawn``; never ``fork``.

* ``fork`` copies the parent as it is, threads' locks included: the pipeline
  runs a memory sampler and a progress thread, the parse stage an executor's
  threads, the asyncio engine a loop thread (and pytest whatever it runs).  A
  lock held by another thread at fork time stays locked forever in the child.
  Python 3.12 warns about forking with threads alive and 3.14 stopped using
  fork as the default on Linux.  It would also make a worker depend on what
  the parent happened to have imported, so the CLI and the tests would not
  run the same way.
* ``spawn`` is safe, but every worker is a fresh interpreter that imports
  requests (about 0.15 s of CPU each): 32 workers cost 2.5-5 s on two busy
  cores before the first request.
* ``forkserver`` starts one clean, single-threaded server process per crawler
  process (shared with the parse stage's pool), which imports the worker
  module (and so requests) once, because it is added to the forkserver's
  preload list (``forkserver_preload`` below), and then forks each worker from itself.
  32 workers fetch their first page about 0.25 s after the pool is created
  (spawn: 2.5-5 s; both measured on 2 busy cores), with the same behaviour
  from the CLI and from tests.

``--engine-opt start_method=spawn|forkserver|fork`` and
``--engine-opt chunksize=N`` override the defaults, for measurements.
"""

from __future__ import annotations

import multiprocessing
from typing import Iterable, Iterator

import crawler
from crawler.errors import CrawlerError
from crawler.processes import start_context

# The most URLs one task carries (the measurements behind it: .run's comment on batches).
CHUNKSIZE = 8



class PoolEngine:
    name = "pool"
    description = "multiprocessing.Pool + requests, a Session per worker process, imap_unordered"
    options = {
        "start_method": "how worker processes start: forkserver (the default where the platform has it), spawn or fork",
        "chunksize": f"most URLs one task carries to a worker (default {CHUNKSIZE}; batches stay smaller while fetches are slow)",
    }
    fetches_in_processes = True  # so the workers ask the per-host gate in the parent
    imports = ("crawler_plugins.pool.run",)  # the parent's side; the workers import requests
    # requests (through crawler.requests_exchange) is imported once by the forkserver for
    # every worker: not by `crawl --list-engines`, nor by a run's parse workers without pool
    forkserver_preload = (f"{__package__}.worker", "crawler.requests_exchange")

    def fetch(self, urls: Iterable[str], settings: crawler.Settings) -> Iterator[crawler.FetchResult]:
        # Returns (StopIteration.value) a few figures for the report's engine_stats.
        from .run import Run

        return (yield from Run(urls, settings, _context(settings), _chunksize(settings)).results())


def _context(settings: crawler.Settings):
    method = settings.engine_options.get("start_method")
    if not method:
        return start_context()
    methods = multiprocessing.get_all_start_methods()
    if method not in methods:
        raise CrawlerError(f"--engine-opt start_method for pool expects one of {', '.join(methods)}, got {method!r}")
    return multiprocessing.get_context(method)


def _chunksize(settings: crawler.Settings) -> int:
    value = settings.engine_options.get("chunksize", CHUNKSIZE)
    try:
        chunk = int(value)
    except (TypeError, ValueError):
        chunk = 0
    if chunk < 1:
        raise CrawlerError(f"--engine-opt chunksize for pool expects a whole number >= 1, got {value!r}")
    return chunk
