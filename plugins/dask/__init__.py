"""``dask``: fetch *and parse* on a Dask cluster, past one machine.

The URL list is cut into batches; each batch is one Dask task.  A task runs
on a worker, fetches its URLs with the ``asyncio`` engine (got from the
plugin registry there, so the same semantics as every engine) and parses
each HTML page *there*, as it arrives, with :func:`crawler.parse.parse_batch`
— the very function the local parse stage runs.  What comes back to the
client is one :class:`crawler.FetchResult` per URL with ``body=b""``,
``size`` set and ``parsed`` holding the parse fields (sha256 included), so
page bodies never cross the network and the pipeline writes each record
without parsing it again.  Only when the caller reads the bodies itself
(``Settings.run.want_bodies``: ``--sitemap`` documents) are they sent back.

Politeness (``--robots``, ``--per-host``, ``--delay``) is kept on the
workers, in one :class:`~crawler.politeness.HostGate` per worker process per
crawl.  With ``--per-host`` or ``--delay``, each host's URLs are sent to one
worker (picked by a hash of host:port, the way Nutch partitions a crawl), so
that worker's gate is the host's only gate and the limits hold for the whole
cluster.  With robots.txt alone, URLs go wherever there is room: each worker
process reads a host's robots.txt once, and a ``Crawl-delay`` it finds is
multiplied by the number of worker processes, so that the cluster as a whole
keeps to it on average.

``--concurrency`` is the number of requests in flight over the whole
cluster: each task runs ``ceil(concurrency / worker threads)`` coroutines.

The modules, client side first:

- :mod:`.engine` -- :class:`DaskEngine`, what the registry gives: ``fetch()``, ``session()``.
- :mod:`.options` -- the ``--engine-opt`` keys, their defaults, how they are read.
- :mod:`.cluster` -- the connection: a LocalCluster started here, or the client of ``scheduler=``.
- :mod:`.run` -- one ``fetch()``: batches, the window of tasks in flight, faults.
- :mod:`.accounting` -- what a run counts and reports as ``engine_stats``, CPU included.
- :mod:`.worker` -- the task a worker runs, and what a worker process keeps (its gates).

Importing the package imports neither ``dask`` nor ``distributed``, nor the
worker side: ``crawl --list-engines`` lists the engine (or why it is
unavailable) without them.
"""

import crawler

from .engine import DaskEngine

__all__ = ["DaskEngine"]


@crawler.hookimpl
def crawler_engines():
    return [DaskEngine()]
