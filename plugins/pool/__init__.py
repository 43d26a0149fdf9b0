"""``pool``: a ``multiprocessing.Pool`` of worker processes, one ``requests.Session`` each.

``--concurrency`` processes each run one blocking request at a time.  Every
process has its own interpreter and GIL, so the client's Python work (HTTP
parsing, decompression) spreads over cores; the price is process start-up and
pickling every result, body included, once across a pipe.  The session is
made in the pool initializer, so each worker keeps its connections alive from
one URL to the next.  Results stream back through ``imap_unordered``.

Stopping: closing the generator (Ctrl-C, an exception, an early ``close()``)
terminates the pool and joins its processes; a normal end closes and joins
it.  Workers ignore SIGINT, so a terminal's Ctrl-C, which reaches the whole
process group, is handled once, by the parent.  A worker also exits by
itself when the parent dies without stopping it (SIGKILL, a crash).

A dead worker (killed, segfault, out of memory) must not hang the run:
``multiprocessing.Pool`` replaces it and silently loses its task, and a
worker killed inside the pool's queue code can leave a queue lock held
forever.  :class:`.run.Run` and :class:`.crew.Crew` say how this engine
notices, records and works around it.

The modules, parent side first:

- :mod:`.engine` -- :class:`PoolEngine`, what the registry gives: its ``--engine-opt`` keys, its start method, ``fetch()``.
- :mod:`.run` -- one ``fetch()``: the URL list read lazily, batches handed out, dead workers' tasks recorded.
- :mod:`.crew` -- one ``multiprocessing.Pool`` with its feed, results and shared state; stopped without hanging.
- :mod:`.cpython_internals` -- every CPython-private part of ``multiprocessing`` the crew relies on, checked.
- :mod:`.worker` -- what runs in each pool process: its Session, and the fetches of one batch.

Importing the package does not import requests: the workers do (and the
forkserver, once for all of them), so ``crawl --list-engines`` stays quick.
"""

import crawler

from .engine import PoolEngine

__all__ = ["PoolEngine"]


@crawler.hookimpl
def crawler_engines():
    return [PoolEngine()]
