"""One ``fetch()`` on the client: the URL list cut into batches, a bounded window of tasks, faults.

Bounded and streaming: the URL iterable is read lazily, one batch at a time,
and at most ``2 × (worker threads)`` batches are submitted and not yet taken
back; each finished batch is yielded at once and replaced by the next
(``distributed.as_completed``).  The client holds the URLs of the batches in
flight and nothing that grows with the list.

Faults: a worker that dies mid-batch has its task re-run on another worker
by the scheduler (``distributed.scheduler.allowed-failures``, 3 by default).
A batch that still ends in ``KilledWorker`` is split and its URLs re-run one
per task, so that only a URL that kills workers by itself gets an error
record (``other``).  A task dropped or whose result is lost is run again, at
most :data:`MAX_LOST` times.  Results are taken once per batch id: nothing
is lost, nothing doubled.  The scheduler gone, or no worker for
``worker_wait`` seconds, ends the run with a :class:`CrawlerError`.

Politeness: with ``--per-host`` or ``--delay``, each host's URLs go to one
worker (:meth:`Run._partition`), whose gate is then that host's only one.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import itertools
import math
import time
import uuid
import zlib
from typing import Iterator

import crawler
from crawler.errors import CrawlerError

from .accounting import Figures
from .cluster import Connection, one_line
from .options import Options

# Longest wait for a finished batch before checking the cluster's health.
POLL_S = 1.0
# Longest wait for the result of a task reported finished (a few KB) before running it again.
RESULT_TIMEOUT_S = 30.0
# Times a batch is run again after its task was dropped or its result lost, before its URLs get errors.
MAX_LOST = 3
# How often the client refreshes its view of the workers (for the window and the host partition).
WORKERS_REFRESH_S = 2.0


@dataclasses.dataclass
class Batch:
    id: int
    urls: list[str]
    worker: str | None = None  # the worker its hosts belong to, when limits partition the crawl
    kills: int = 0  # times its URLs' task ended in KilledWorker
    lost: int = 0  # times its task was dropped or its result lost


class Run:
    """One engine run on the client: submission window, bookkeeping (on its own connection or a session's)."""

    def __init__(self, options: Options, settings: crawler.Settings, connection: Connection | None = None):
        self.options = options
        self.settings = settings
        self.connection = connection
        self.own_connection = connection is None  # else a session's: kept open after this run
        self.client = None
        self.own_cluster = options.scheduler is None
        self.token = uuid.uuid4().hex[:12]
        self.ids = itertools.count()
        self.submissions = itertools.count()
        self.in_flight: dict[int, tuple[Batch, object]] = {}  # batch id -> (batch, its current future)
        self.retry: collections.deque[Batch] = collections.deque()  # URLs to run again, before new input
        self.ca_pem: bytes | None = None
        # Politeness: limits pin each host to one worker; robots.txt alone does not.
        self.partition = bool(settings.per_host or settings.delay)
        self.polite = bool(settings.robots or self.partition)
        self.workers: list[str] = []  # addresses, sorted
        self.threads = 1
        self._workers_checked = 0.0
        self.no_workers_since: float | None = None
        self.figures = Figures()

    # --- life cycle ---

    def start(self) -> None:
        from .worker import ready

        if self.settings.ca_file:
            try:
                with open(self.settings.ca_file, "rb") as handle:
                    self.ca_pem = handle.read()  # the workers may not have the file: send its contents
            except OSError as exc:
                raise CrawlerError(f"cannot read CA file {self.settings.ca_file}: {exc}") from None
        started = time.perf_counter()
        if self.connection is None:
            self.connection = Connection(self.options, self.settings)
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
            self.figures.started(self.client.run(ready))
        except Exception as exc:
            self._check_health()  # the scheduler went away: say that, not the below
            raise CrawlerError(
                f"the Dask workers at {self._where()} cannot run the crawler ({one_line(exc)}); "
                "install this crawler, with the same version, on every worker"
            ) from None
        self._refresh_workers(force=True)
        # a session's runs all report the one start-up of its cluster
        self.figures.cluster_start_s = time.perf_counter() - started if self.own_connection else self.connection.start_s

    def close(self) -> None:
        from .worker import after_run

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
                    after = client.run(after_run, connection.gate_token, self.own_connection)
                except Exception:
                    after = {}
                self.figures.ended(after, self.own_cluster)
        if self.own_connection and connection is not None:
            connection.close()
        self.figures.close_s = time.perf_counter() - closing

    def engine_stats(self) -> dict:
        return self.figures.engine_stats(
            self.options, threads=self.threads, partition=self.partition, session=not self.own_connection
        )

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
                    self.figures.batches += 1
                for worker, part in self._partition(chunk):
                    completed.add(self._submit(Batch(next(self.ids), part, worker, kills, lost)))
            self.figures.peak_batches_in_flight = max(self.figures.peak_batches_in_flight, len(self.in_flight))
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
            parts.setdefault(self.workers[host_hash(url) % len(self.workers)], []).append(url)
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
        self.figures.workers_seen.update(counts)
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
                self.figures.resubmitted += 1

    def _submit(self, batch: Batch):
        from .worker import run_batch

        settings = self.settings.replace(
            concurrency=max(1, min(len(batch.urls), math.ceil(self.settings.concurrency / max(self.threads, 1)))),
            engine_options={},
            ca_file=None,  # its contents travel instead
        ).with_run(gate=None)  # the client's gate stays here: workers keep their own (see worker.gate_for)
        gate_spec = None
        if self.polite:
            gate_spec = (self.connection.gate_token, 1 if self.partition else max(len(self.workers), 1))
        # Strict: a loosely restricted task may be stolen by another worker, and a host would have two gates.
        restriction = {"workers": [batch.worker], "allow_other_workers": False} if batch.worker else {}
        future = self.client.submit(
            run_batch,
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
        self.figures.tasks += 1
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
                self.figures.resubmitted += 1
                self.retry.appendleft(batch)
            else:
                detail = f"dask task lost {batch.lost} times: {type(exc).__name__} {one_line(exc)}"[:200]
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
            detail = f"dask task failed: {one_line(exc)}"[:200]
            yield from (crawler.FetchResult(url=url, error="other", detail=detail) for url in batch.urls)
            return
        future.release()
        self.figures.took(outcome)
        yield from outcome["results"]

    def _killed(self, batch: Batch, exc: BaseException) -> Iterator[crawler.FetchResult]:
        """Workers kept dying while running this batch (KilledWorker): re-run its URLs one per task.

        Only a URL that still kills workers on its own gets a record, error ``other``.
        """
        if len(batch.urls) > 1:
            self.figures.split += 1
            self.retry.extend(Batch(-1, [url], kills=batch.kills + 1) for url in batch.urls)
        else:
            detail = f"Dask workers died running this URL: {one_line(exc)}"[:200]
            yield crawler.FetchResult(url=batch.urls[0], error="other", detail=detail)


def host_hash(url: str) -> int:
    """A stable hash of the URL's host:port (the key politeness gates on); lines without a host all hash alike."""
    from crawler.urls import host_key

    try:
        key = host_key(url.strip())
    except ValueError:
        return 0
    return zlib.crc32(key.encode("utf-8", "replace"))
