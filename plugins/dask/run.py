"""``dask``: fetch *and parse* on a Dask cluster, past one machine.

The URL list is cut into batches; each batch is one Dask task.  A task runs
on a worker, fetches its URLs with the asyncio engine's machinery
(:class:`AsyncioEngine`, so the same semantics as every engine) and parses
each HTML page *there*, as it arrives, with :func:`crawler.parse.parse_batch`
— the very function the local parse stage runs.  What comes back to the
client is one :class:`crawler.FetchResult` per URL with ``body=b""``,
``size`` set and ``parsed`` holding the parse fields (sha256 included), so
page bodies never cross the network and the pipeline writes each record
without parsing it again.  Only when the caller reads the bodies itself
(``Settings.want_bodies``: ``--sitemap`` documents) are they sent back.

Bounded and streaming: the URL iterable is read lazily, one batch at a time,
and at most ``2 × (worker threads)`` batches are submitted and not yet taken
back; each finished batch is yielded at once and replaced by the next
(``distributed.as_completed``).  The client holds the URLs of the batches in
flight and nothing that grows with the list.

Faults: a worker that dies mid-batch has its task re-run on another worker
by the scheduler (``distributed.scheduler.allowed-failures``, 3 by default).
A batch that still ends in ``KilledWorker`` is split and its URLs re-run one
per task, so that only a URL that kills workers by itself gets an error
record (``other``).  Results are taken once per batch id: nothing is lost,
nothing doubled.  An unreachable scheduler is a :class:`CrawlerError` (a
one-line usage error, exit 2) after ``connect_timeout`` seconds.

Politeness (``--robots``, ``--per-host``, ``--delay``) is kept on the
workers, in one :class:`~crawler.politeness.HostGate` per worker process per
run.  With ``--per-host`` or ``--delay``, each host's URLs are sent to one
worker (picked by a hash of host:port, the way Nutch partitions a crawl), so
that worker's gate is the host's only gate and the limits hold for the whole
cluster.  With robots.txt alone, URLs go wherever there is room: each worker
process reads a host's robots.txt once per run, and a ``Crawl-delay`` it
finds is multiplied by the number of worker processes, so that the cluster
as a whole keeps to it on average.

Options (``--engine-opt KEY=VALUE``):

``scheduler=tcp://HOST:PORT``
    use a running cluster; without it, a ``LocalCluster`` of one
    single-threaded worker process per core is started and closed by the run
    (one for the whole crawl, every ``--depth`` level and the sitemaps
    included: the pipeline enters :meth:`DaskEngine.session` around them).
``batch=N``
    URLs per task (default :data:`DEFAULT_BATCH`, see there why).
``workers=N``
    worker processes of that LocalCluster (default: the CPU count).
``connect_timeout=S``
    seconds to reach the scheduler (default 5).
``worker_wait=S``
    seconds to wait for a first worker, or for one to come back when the
    cluster has none left, before giving up (default 60).
``parse=0``
    fetch only, like ``--no-parse`` (which does not reach engines yet).
``links=0``
    do not send each page's link URLs back (``--depth`` needs them to follow
    links; the pipeline does not tell engines whether it follows, so they
    are sent by default).

``--concurrency`` is the number of requests in flight over the whole
cluster: each task runs ``ceil(concurrency / worker threads)`` coroutines.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.util
import itertools
import logging
import math
import os
import tempfile
import threading
import time
import uuid
import zlib
from typing import Iterable, Iterator

import crawler
from crawler.errors import CrawlerError
from crawler.politeness import HostGate
from crawler.records import has_body, unparsed_fields

INSTALL_HINT = "pip install 'crawler[dask]'"

# URLs per task.  A task's fixed costs (a scheduler round trip, pickling, a
# fresh aiohttp session and its connections) are paid once per batch, and a
# batch's results come back only when its slowest URL is done.  See the
# README section on this engine for the measurements behind the choice.
DEFAULT_BATCH = 64
CONNECT_TIMEOUT_S = 5.0
WORKER_WAIT_S = 60.0
# Longest wait for a finished batch before checking the cluster's health.
POLL_S = 1.0
# Longest wait for the result of a task reported finished (a few KB) before running it again.
RESULT_TIMEOUT_S = 30.0
# Times a batch is run again after its task was dropped or its result lost, before its URLs get errors.
MAX_LOST = 3
# How often the client refreshes its view of the workers (for the window and the host partition).
WORKERS_REFRESH_S = 2.0
# Run gates a worker process keeps (runs that ended without dropping theirs, e.g. a lost client).
KEEP_GATES = 4

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


def _worker_environ() -> dict:
    """Dask's environment for new worker processes, without its ``MALLOC_TRIM_THRESHOLD_=65536``.

    With it, glibc hands freed memory back to the system after nearly every
    page (bodies and parse trees are tens of KB) and takes it back for the
    next: measured (README), the same fetch-and-parse work costs 10-30 % more
    CPU.  These workers live for one run, so keeping freed memory is the
    better trade.
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ["MALLOC_TRIM_THRESHOLD_"] = None  # None unsets it (distributed.nanny._get_env_variables)
    return environ


def _unavailable() -> str | None:
    return None if importlib.util.find_spec("distributed") else INSTALL_HINT


class DaskEngine:
    name = "dask"
    description = "Dask cluster: batches of URLs fetched (aiohttp) and parsed on the workers; bodies stay there"

    def __init__(self) -> None:
        self.unavailable = _unavailable()
        self._session: _Connection | None = None

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
        connection = _Connection(_Options.from_settings(settings), settings)
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
        options = _Options.from_settings(settings)
        run = _Run(options, settings, self._session)
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
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


# --- options --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Options:
    scheduler: str | None
    batch: int
    workers: int
    connect_timeout: float
    worker_wait: float
    parse: bool
    links: bool

    @classmethod
    def from_settings(cls, settings: crawler.Settings) -> "_Options":
        raw = dict(settings.engine_options or {})  # keys meant for other engines are theirs: ignored
        return cls(
            scheduler=(raw.get("scheduler") or "").strip() or None,
            batch=_number(raw, "batch", DEFAULT_BATCH, int, 1),
            workers=_number(raw, "workers", os.cpu_count() or 1, int, 1),
            connect_timeout=_number(raw, "connect_timeout", CONNECT_TIMEOUT_S, float, 0.1),
            worker_wait=_number(raw, "worker_wait", WORKER_WAIT_S, float, 0.1),
            parse=_flag(raw.get("parse", "1"), "parse") and getattr(settings, "parse", True),
            # Link URLs travel back unless known to be unneeded: --depth needs them, and the pipeline
            # does not say yet whether it follows links (a Settings.want_links would).
            links=_flag(raw["links"], "links") if "links" in raw else bool(getattr(settings, "want_links", True)),
        )


def _number(raw: dict, key: str, default, kind, minimum):
    if key not in raw:
        return default
    try:
        value = kind(raw[key])
    except ValueError:
        value = None
    if value is None or not value >= minimum:
        raise CrawlerError(f"--engine-opt {key} for dask expects a number >= {minimum}, got {raw[key]!r}")
    return value


def _flag(value: str, key: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise CrawlerError(f"--engine-opt {key} for dask expects 1/0, true/false or yes/no, got {value!r}")


# --- the client side ------------------------------------------------------------------


@dataclasses.dataclass
class _Batch:
    id: int
    urls: list[str]
    worker: str | None = None  # the worker its hosts belong to, when limits partition the crawl
    kills: int = 0  # times its URLs' task ended in KilledWorker
    lost: int = 0  # times its task was dropped or its result lost


class _Connection:
    """A cluster and its client: a LocalCluster started here, or the client of ``scheduler=``.

    Made by one run, or by :meth:`DaskEngine.session` for all the runs of a
    crawl.  ``gate_token`` names the politeness gates on the workers: they
    live as long as the connection.
    """

    def __init__(self, options: _Options, settings: crawler.Settings):
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
                raise CrawlerError(f"cannot reach Dask scheduler {address}: {_one_line(exc)}") from None
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
            silence_logs=logging.ERROR,
            preload=[_LOCAL_WORKER_SETUP],
        )

    def close(self) -> None:
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        if client is not None:
            if client.status == "running":
                try:  # the gates of a session's runs were kept for the next run: dropped now
                    client.run(_drop_gate, self.gate_token)
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


class _Run:
    """One engine run on the client: submission window, bookkeeping (on its own connection or a session's)."""

    def __init__(self, options: _Options, settings: crawler.Settings, connection: _Connection | None = None):
        self.options = options
        self.settings = settings
        self.connection = connection
        self.own_connection = connection is None  # else a session's: kept open after this run
        self.client = None
        self.own_cluster = options.scheduler is None
        self.token = uuid.uuid4().hex[:12]
        self.ids = itertools.count()
        self.submissions = itertools.count()
        self.in_flight: dict[int, tuple[_Batch, object]] = {}  # batch id -> (batch, its current future)
        self.retry: collections.deque[_Batch] = collections.deque()  # URLs to run again, before new input
        self.ca_pem: bytes | None = None
        # Politeness: limits pin each host to one worker; robots.txt alone does not.
        self.partition = bool(settings.per_host or settings.delay)
        self.polite = bool(settings.robots or self.partition)
        self.workers: list[str] = []  # addresses, sorted
        self.threads = 1
        self._workers_checked = 0.0
        self.no_workers_since: float | None = None
        # figures for the report
        self.cluster_start_s = 0.0
        self.close_s = 0.0
        self.per_worker: collections.Counter[str] = collections.Counter()
        self.task_cpu_s = 0.0
        self.parse_cpu_s = 0.0
        self.workers_cpu_s: float | None = None
        self.child_workers_cpu_s: float | None = None
        self.batches = 0
        self.tasks = 0
        self.resubmitted = 0
        self.split = 0
        self.peak_batches_in_flight = 0
        self.cpu_at_start: dict[str, float] = {}
        self.workers_seen: set[str] = set()
        self.politeness: dict | None = None

    # --- life cycle ---

    def start(self) -> None:
        if self.settings.ca_file:
            try:
                with open(self.settings.ca_file, "rb") as handle:
                    self.ca_pem = handle.read()  # the workers may not have the file: send its contents
            except OSError as exc:
                raise CrawlerError(f"cannot read CA file {self.settings.ca_file}: {exc}") from None
        started = time.perf_counter()
        if self.connection is None:
            self.connection = _Connection(self.options, self.settings)
            self.connection.open()
        self.client = self.connection.client
        try:
            self.client.wait_for_workers(1, timeout=self.options.worker_wait)
        except Exception:
            raise CrawlerError(
                f"no Dask worker joined {self._where()} within {self.options.worker_wait:g} s "
                f"(start some with: dask worker {self.options.scheduler or 'SCHEDULER'})"
            ) from None
        try:  # imports the crawler on every worker now, and notes each worker's CPU so far
            self.cpu_at_start = self.client.run(_worker_cpu_s)
        except Exception as exc:
            self._check_health()  # the scheduler went away: say that, not the below
            raise CrawlerError(
                f"the Dask workers at {self._where()} cannot run the crawler ({_one_line(exc)}); "
                "install this crawler, with the same version, on every worker"
            ) from None
        self.workers_seen.update(self.cpu_at_start)
        self._refresh_workers(force=True)
        # a session's runs all report the one start-up of its cluster
        self.cluster_start_s = time.perf_counter() - started if self.own_connection else self.connection.start_s

    def close(self) -> None:
        closing = time.perf_counter()
        client, connection = self.client, self.connection
        self.client = None
        if client is not None:
            running = client.status == "running"
            if self.in_flight and running:
                try:  # queued tasks go; running ones end by their own deadlines, their results dropped
                    client.cancel([future for _, future in self.in_flight.values()], force=True)
                except Exception:
                    pass
            self.in_flight.clear()
            if running:
                try:  # a session keeps its gates for the next run
                    after = client.run(_worker_after_run, connection.gate_token, self.own_connection)
                except Exception:
                    after = {}
                if self.cpu_at_start and after:
                    self.workers_cpu_s = _cpu_delta(self.cpu_at_start, {addr: cpu for addr, (cpu, _) in after.items()})
                if self.own_cluster and after:  # their whole lives, start-up included: what RUSAGE_CHILDREN adds
                    self.child_workers_cpu_s = sum(cpu for cpu, _ in after.values())
                gates = [gate for _, gate in after.values() if gate]
                if gates:
                    self.politeness = {
                        "gates": len(gates),
                        "hosts": max(g["hosts"] for g in gates),
                        "peak_in_flight_per_host": max(g["peak_in_flight_per_host"] for g in gates),
                    }
        if self.own_connection and connection is not None:
            connection.close()
        self.close_s = time.perf_counter() - closing

    def _where(self) -> str:
        return self.options.scheduler or "the LocalCluster"

    # --- the streaming loop ---

    def results(self, urls: Iterator[str]) -> Iterator[crawler.FetchResult]:
        import distributed

        completed = distributed.as_completed(loop=self.client.loop, with_results=False)
        exhausted = False
        while True:
            while len(self.in_flight) < self._window() and (self.retry or not exhausted):
                if self.retry:
                    again = self.retry.popleft()
                    chunk, kills, lost = again.urls, again.kills, again.lost
                else:
                    chunk, kills, lost = list(itertools.islice(urls, self.options.batch)), 0, 0
                    if not chunk:
                        exhausted = True
                        break
                    self.batches += 1
                for worker, part in self._partition(chunk):
                    completed.add(self._submit(_Batch(next(self.ids), part, worker, kills, lost)))
            self.peak_batches_in_flight = max(self.peak_batches_in_flight, len(self.in_flight))
            if not self.in_flight:
                return
            for future in self._next_ready(completed):
                yield from self._take(future)

    def _window(self) -> int:
        self._refresh_workers()
        return 2 * max(self.threads, 1)

    def _partition(self, chunk: list[str]) -> list[tuple[str | None, list[str]]]:
        """The chunk as one batch, or, when limits pin hosts to workers, one batch per worker."""
        if not self.partition or len(self.workers) < 2:
            return [(None, chunk)]
        parts: dict[str, list[str]] = {}
        for url in chunk:
            parts.setdefault(self.workers[_host_hash(url) % len(self.workers)], []).append(url)
        return list(parts.items())

    def _refresh_workers(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._workers_checked < WORKERS_REFRESH_S:
            return
        self._workers_checked = now
        try:
            counts = self.client.nthreads()
        except Exception:
            return
        self.workers_seen.update(counts)
        gone = set(self.workers) - set(counts)
        self.workers = sorted(counts)
        if gone and self.partition:
            self._unpin(gone)
        self.threads = sum(counts.values())
        if self.threads:
            self.no_workers_since = None
        elif self.no_workers_since is None:
            self.no_workers_since = now

    def _unpin(self, gone: set[str]) -> None:
        """Batches pinned to workers that left wait for them forever: cancel them, partition their URLs anew."""
        for batch_id, (batch, future) in list(self.in_flight.items()):
            if batch.worker in gone:
                del self.in_flight[batch_id]  # a late completion of it is ignored (see _take)
                try:
                    self.client.cancel([future], force=True)
                except Exception:
                    pass
                self.retry.appendleft(batch)
                self.resubmitted += 1

    def _submit(self, batch: _Batch):
        settings = self.settings.replace(
            concurrency=max(1, min(len(batch.urls), math.ceil(self.settings.concurrency / max(self.threads, 1)))),
            engine_options={},
            ca_file=None,  # its contents travel instead
            gate=None,  # the client's gate stays here: workers keep their own (see _worker_gate)
        )
        gate_spec = None
        if self.polite:
            gate_spec = (self.connection.gate_token, 1 if self.partition else max(len(self.workers), 1))
        # Strict: a loosely restricted task may be stolen by another worker, and a host would have two gates.
        restriction = {"workers": [batch.worker], "allow_other_workers": False} if batch.worker else {}
        future = self.client.submit(
            _run_batch,
            batch.id,
            batch.urls,
            settings,
            (self.options.parse, self.options.links),
            self.ca_pem,
            gate_spec,
            key=f"crawl-{self.token}-{batch.id}-{next(self.submissions)}",  # a re-run gets a new key
            pure=False,
            **restriction,
        )
        self.tasks += 1
        self.in_flight[batch.id] = (batch, future)
        return future

    def _next_ready(self, completed) -> list:
        """The finished futures, after waiting at most POLL_S; none after a health check."""
        if not completed.has_ready():
            condition = getattr(completed, "thread_condition", None)
            if condition is not None:
                with condition:
                    if not completed.has_ready():
                        condition.wait(POLL_S)
            else:  # pragma: no cover - a distributed without it
                time.sleep(0.01)
        if completed.has_ready():
            return completed.next_batch(block=False)
        self._check_health()
        return []

    def _check_health(self) -> None:
        client = self.client
        if client.status not in ("running", "connecting"):
            raise CrawlerError(
                f"lost the Dask scheduler {self._where()} (client {client.status}); "
                "finished batches are written, and --out with --resume goes on from there"
            )
        self._refresh_workers(force=True)
        if self.no_workers_since is not None and time.monotonic() - self.no_workers_since > self.options.worker_wait:
            raise CrawlerError(f"the Dask cluster at {self._where()} has had no worker for {self.options.worker_wait:g} s")

    def _take(self, future) -> Iterator[crawler.FetchResult]:
        import distributed

        batch_id = int(str(future.key).split("-")[2])
        entry = self.in_flight.get(batch_id)
        if entry is None or entry[1].key != future.key:  # a stale or repeated completion: never yield twice
            return
        batch, _ = entry
        del self.in_flight[batch_id]
        try:
            outcome = future.result(timeout=RESULT_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError, concurrent.futures.CancelledError) as exc:
            # Its result cannot be had (its worker left with it), or the scheduler dropped the task.
            future.release()
            if self.client.status not in ("running", "connecting"):
                self._check_health()  # raises: the scheduler is gone, not the batch
            batch.lost += 1
            if batch.lost <= MAX_LOST:
                self.resubmitted += 1
                self.retry.appendleft(batch)
            else:
                detail = f"dask task lost {batch.lost} times: {type(exc).__name__} {_one_line(exc)}"[:200]
                yield from (crawler.FetchResult(url=url, error="other", detail=detail) for url in batch.urls)
            return
        except distributed.scheduler.KilledWorker as exc:
            future.release()
            yield from self._killed(batch, exc)
            return
        except Exception as exc:
            future.release()
            if self.client.status not in ("running", "connecting"):
                self._check_health()  # raises: the scheduler is gone, not the batch
            detail = f"dask task failed: {_one_line(exc)}"[:200]
            yield from (crawler.FetchResult(url=url, error="other", detail=detail) for url in batch.urls)
            return
        future.release()
        results = outcome["results"]
        self.per_worker[outcome["worker"]] += len(results)
        self.task_cpu_s += outcome["cpu_s"]
        self.parse_cpu_s += outcome["parse_cpu_s"]
        yield from results

    def _killed(self, batch: _Batch, exc: BaseException) -> Iterator[crawler.FetchResult]:
        """Workers kept dying while running this batch (KilledWorker): re-run its URLs one per task.

        Only a URL that still kills workers on its own gets a record, error ``other``.
        """
        if len(batch.urls) > 1:
            self.split += 1
            self.retry.extend(_Batch(-1, [url], kills=batch.kills + 1) for url in batch.urls)
        else:
            detail = f"Dask workers died running this URL: {_one_line(exc)}"[:200]
            yield crawler.FetchResult(url=batch.urls[0], error="other", detail=detail)

    # --- report ---

    def engine_stats(self) -> dict:
        if self.own_cluster:
            remote = None
            note = (
                "LocalCluster workers are this run's child processes, reaped before it ends: "
                "their CPU is already in cpu_s (RUSAGE_CHILDREN), so none is added"
            )
        elif self.workers_cpu_s is not None:
            remote = round(self.workers_cpu_s, 3)
            note = "user+sys CPU of the cluster's worker processes during the run (psutil, through client.run)"
        else:
            remote = round(self.task_cpu_s, 3)
            note = "CPU of this run's tasks on the workers (process_time); the workers' own overhead not included"
        return {
            "cluster": f"LocalCluster({self.options.workers} workers x 1 thread)" if self.own_cluster else self.options.scheduler,
            "workers": len(self.workers_seen),
            "threads": self.threads,
            "batch": self.options.batch,
            "batches": self.batches,
            "tasks": self.tasks,
            "resubmitted": self.resubmitted,
            "split": self.split,
            "host_partition": self.partition,
            "peak_batches_in_flight": self.peak_batches_in_flight,
            "records_per_worker": dict(sorted(self.per_worker.items())),
            "cluster_start_s": round(self.cluster_start_s, 3),
            "session": not self.own_connection,  # the cluster serves every level of the crawl (DaskEngine.session)
            "close_s": round(self.close_s, 3),
            "task_cpu_s": round(self.task_cpu_s, 3),
            "remote_parse_cpu_s": round(self.parse_cpu_s, 3),
            "workers_cpu_s": None if self.workers_cpu_s is None else round(self.workers_cpu_s, 3),
            "remote_cpu_s": remote,
            "remote_cpu_note": note,
            # the part of the report's cpu_s that is LocalCluster workers (this run's children), not the client
            "child_workers_cpu_s": None if self.child_workers_cpu_s is None else round(self.child_workers_cpu_s, 3),
            "politeness": self.politeness,
        }


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _cpu_delta(before: dict, after: dict) -> float:
    return sum(max(0.0, cpu - before.get(addr, 0.0)) for addr, cpu in after.items())


def _host_hash(url: str) -> int:
    """A stable hash of the URL's host:port (the key crawler.fetching gates on); 0 for a line that is no URL."""
    from crawler.fetching import host_port

    try:
        host, port = host_port(url.strip())
    except ValueError:
        return 0
    return zlib.crc32(f"{host}:{port}".encode("utf-8", "replace"))


# --- the worker side ------------------------------------------------------------------


def _worker_cpu_s() -> float:
    """User+sys CPU of this worker process so far; importing this module warms the worker up."""
    import psutil

    from .. import asyncio_engine  # noqa: F401  (imported now rather than in the first task)

    times = psutil.Process().cpu_times()
    return times.user + times.system


_gates: collections.OrderedDict = collections.OrderedDict()  # run token -> HostGate, in this worker process
_gates_lock = threading.Lock()


def _worker_gate(token: str, crawl_delay_share: int, settings: crawler.Settings):
    """The run's gate in this worker process, shared by its tasks here; made by the first of them."""
    with _gates_lock:
        gate = _gates.get(token)
        if gate is None:
            gate = _gates[token] = _ClusterGate(
                settings.per_host, settings.delay, settings.robots, settings.user_agent or _default_agent(), crawl_delay_share
            )
            while len(_gates) > KEEP_GATES:
                _gates.popitem(last=False)
        else:
            _gates.move_to_end(token)
        return gate


def _default_agent() -> str:
    from crawler.fetching import default_user_agent

    return default_user_agent()


def _worker_after_run(token: str, drop: bool = True) -> tuple[float, dict | None]:
    """At the end of a run: this worker's CPU so far and its gate's figures (the gate dropped unless a session keeps it)."""
    with _gates_lock:
        gate = _gates.pop(token, None) if drop else _gates.get(token)
    return _worker_cpu_s(), gate.stats() if gate is not None else None


def _drop_gate(token: str) -> None:
    """At the end of a session: its gate in this worker process goes."""
    with _gates_lock:
        _gates.pop(token, None)


class _ClusterGate(HostGate):
    """A HostGate whose robots.txt ``Crawl-delay`` is spread over ``share`` worker processes.

    When a host's URLs may go to any of N worker processes, each keeps N ×
    the Crawl-delay between its own requests to it, so that the host sees
    about one request per Crawl-delay from the cluster as a whole.
    """

    def __init__(self, per_host, delay, robots, user_agent, share: int):
        super().__init__(per_host, delay, robots, user_agent)
        self.share = max(1, int(share))

    def learn_robots(self, key, status, text):
        super().learn_robots(key, status, text)
        if self.share > 1 and status is not None and 200 <= status < 300:
            with self._lock:
                host = self._host(key)
                crawl_delay = getattr(host.robots, "crawl_delay", None)
                seconds = crawl_delay(self.user_agent) if crawl_delay else None
                if seconds:
                    host.delay = max(host.delay, float(seconds) * self.share)


_ca_paths: dict[str, str] = {}
_ca_lock = threading.Lock()


def _ca_path(pem: bytes) -> str:
    """A file holding ``pem`` on this worker (ssl wants a path), written once per content."""
    digest = hashlib.sha256(pem).hexdigest()
    with _ca_lock:
        path = _ca_paths.get(digest)
        if path is None or not os.path.exists(path):
            handle, path = tempfile.mkstemp(prefix="crawler-ca-", suffix=".pem")
            with os.fdopen(handle, "wb") as out:
                out.write(pem)
            _ca_paths[digest] = path
    return path


def _run_batch(
    batch_id: int,
    urls: list[str],
    settings: crawler.Settings,
    parse: tuple[bool, bool],
    ca_pem: bytes | None,
    gate_spec: tuple[str, int] | None = None,
) -> dict:
    """One task: fetch ``urls`` here, parse each HTML page as it arrives, send back no body."""
    from crawler.parse import is_html, parse_batch

    from ..asyncio_engine import AsyncioEngine

    started = time.process_time()
    parse_pages, want_links = parse
    parse_cpu = 0.0
    if ca_pem:
        settings = settings.replace(ca_file=_ca_path(ca_pem))
    if gate_spec is not None:
        token, share = gate_spec
        settings = settings.replace(gate=_worker_gate(token, share, settings))
    results = []
    # The engine's event loop fetches in its own thread while this one parses.
    for result in AsyncioEngine().fetch(urls, settings):
        body = result.body
        error, detail = result.error, result.detail
        fields = None
        if parse_pages and result.ok and is_html(result.content_type, body):
            item = (result.final_url or result.url, body, result.content_type)
            [outcome], cpu = parse_batch([item], None, True) if want_links else parse_batch([item])
            parse_cpu += cpu
            if isinstance(outcome, dict):
                fields = outcome  # sha256 included
            else:  # the local parse stage writes such a page as error "parse", the message as detail
                error, detail = "parse", outcome
        if fields is None:  # not parsed: the fields the client's make_record would give it
            fields = unparsed_fields(body if has_body(result) else None)
        results.append(
            dataclasses.replace(
                result,
                body=body if settings.want_bodies else b"",  # the client reads them (sitemaps), else they stay here
                size=len(body),
                parsed=fields,
                error=error,
                detail=detail,
                headers=dict(result.headers),
            )
        )
    return {
        "id": batch_id,
        "results": results,
        "worker": _worker_address(),
        "cpu_s": time.process_time() - started,
        "parse_cpu_s": parse_cpu,
    }


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # run outside a worker (a test calling the task directly)
        return f"pid:{os.getpid()}"


@crawler.hookimpl
def crawler_engines():
    return [DaskEngine()]
