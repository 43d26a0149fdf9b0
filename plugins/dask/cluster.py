"""The client's connection to a Dask cluster: a LocalCluster started here, or the client of ``scheduler=``.

One :class:`Connection` serves a whole crawl when the pipeline enters the
engine's ``session()``, else one ``fetch()``.  ``dask`` and ``distributed``
are imported when it opens, not before (``crawl --list-engines`` lists the
engine without them).
"""

from __future__ import annotations

import logging
import time
import uuid

import crawler
from crawler.errors import CrawlerError

from .options import Options

# Run by each worker of a LocalCluster this engine starts (dask preloads accept a script's text).
# Ctrl-C in a terminal reaches the whole process group: the crawl's own process
# handles it and closes the cluster, so its workers must not die of it first,
# each printing a KeyboardInterrupt traceback.
_LOCAL_WORKER_SETUP = """
import signal


def dask_setup(worker):
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: leave it
        pass
"""


class Connection:
    """A cluster and its client.

    ``gate_token`` names the politeness gates on the workers
    (:func:`.worker.gate_for`): they live as long as the connection, and
    :meth:`close` drops them.
    """

    def __init__(self, options: Options, settings: crawler.Settings):
        self.options = options
        self.settings = settings
        self.cluster = None
        self.client = None
        self.own_cluster = options.scheduler is None
        self.gate_token = uuid.uuid4().hex[:12]
        self.start_s = 0.0

    def open(self) -> None:
        import dask
        import distributed

        started = time.perf_counter()
        if self.own_cluster:
            with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ()}):
                self.cluster = self._local_cluster(distributed)
            self.client = distributed.Client(self.cluster, set_as_default=False)
        else:
            address = self.options.scheduler
            try:
                self.client = distributed.Client(address, timeout=self.options.connect_timeout, set_as_default=False)
            except Exception as exc:  # OSError on timeout or refusal, ValueError/TypeError on a bad address
                raise CrawlerError(f"cannot reach Dask scheduler {address}: {one_line(exc)}") from None
        self.start_s = time.perf_counter() - started

    def _local_cluster(self, distributed):
        return distributed.LocalCluster(
            n_workers=self.options.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # No dashboard; the scheduler's HTTP server (health, metrics) on a free loopback port,
            # not 8787, which another cluster may hold (dask then warns on stderr).
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            # Not even ERROR: a worker that loses the scheduler (a second Ctrl-C ends the crawl at
            # once) would log a traceback on the user's terminal; what fails reaches the records.
            silence_logs=logging.CRITICAL,
            preload=[_LOCAL_WORKER_SETUP],
        )

    def close(self) -> None:
        from .worker import drop_gate

        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        if client is not None:
            if client.status == "running":
                try:  # the gates of a session's runs were kept for the next run: dropped now
                    client.run(drop_gate, self.gate_token)
                except Exception:
                    pass
            try:
                client.close(timeout=10)
            except Exception:
                pass
        if cluster is not None:
            try:
                cluster.close(timeout=20)
            except Exception:
                pass


def _worker_environ() -> dict:
    """Dask's environment for new worker processes, without its ``MALLOC_TRIM_THRESHOLD_=65536``.

    With it, glibc hands freed memory back to the system after nearly every
    page (bodies and parse trees are tens of KB) and takes it back for the
    next: measured (README), the same fetch-and-parse work costs 10-30 % more
    CPU.  These workers live for one crawl, so keeping freed memory is the
    better trade.
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ["MALLOC_TRIM_THRESHOLD_"] = None  # None unsets it (distributed.nanny._get_env_variables)
    return environ


def one_line(exc: BaseException) -> str:
    """What Dask raised, in one line of at most 300 characters, for an error record or a CrawlerError."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
