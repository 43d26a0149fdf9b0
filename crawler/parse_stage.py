"""The parse stage: pages parsed in worker processes while fetching goes on.

A :class:`ParseStage` is a ``ProcessPoolExecutor`` fed in batches through a
bounded hand-off: when it is full, :meth:`ParseStage.submit` waits, so the
pipeline stops pulling results and the engine slows down instead of memory
growing (Scrapy's ``Slot.needs_backout``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable

from . import parse
from .engines import FetchResult
from .processes import start_context


Done = Callable[[FetchResult, "dict | None", "str | None"], None]


@dataclass
class _Flight:
    batch: list[FetchResult]
    size: int


class ParseStage:
    """Parses pages in worker processes, in batches, with bounded work in flight.

    ``done(result, parsed, error)`` is called once per submitted page, from
    the executor's result thread (or the caller's, when recovering).  A batch
    goes out when it is full, or at once when a worker is idle, so batching
    never delays an idle stage.

    Faults: a page over ``timeout`` seconds is stopped inside its worker
    (SIGALRM); a worker stuck where no signal reaches it is killed by a
    watchdog.  When a worker dies, the pool is rebuilt and the pages of the
    batches it took down are parsed again one at a time, so that only the
    page that kills a worker gets ``error: "parse"``.
    """

    def __init__(
        self,
        workers: int,
        done: Done,
        batch_size: int,
        bytes_in_flight: int,
        timeout: float | None = None,
        parse_batch: Callable = parse.parse_batch,  # replaceable for fault-injection tests
    ):
        self.parse_batch = parse_batch
        self.want_links = False  # return each page's link URLs too (for following links)
        self.workers = workers
        self.done = done
        self.batch_size = batch_size
        self.bytes_limit = bytes_in_flight
        self.timeout = timeout
        self.parse_cpu_s = 0.0
        self.peak_backlog = 0  # pages handed over and not yet parsed
        self.wait_s = 0.0  # time the fetch side stood still waiting for room
        self._pages_in_flight = 0
        self.restarts = 0
        self.watchdog_kills = 0
        self._batch: list[FetchResult] = []
        self._flights: dict[int, _Flight] = {}
        self._in_flight_bytes = 0
        self._orphans: list[FetchResult] = []  # pages of batches whose worker died
        self._cond = threading.Condition()
        self._executor: ProcessPoolExecutor | None = None
        self._watchdog: threading.Thread | None = None
        self._clock = None
        self._closing = threading.Event()

    # --- life cycle -----------------------------------------------------------------

    def start(self) -> None:
        if self.workers <= 0:
            return
        self._executor = self._new_executor()
        if self.timeout:
            self._watchdog = threading.Thread(target=self._watch, name="crawl-parse-watchdog", daemon=True)
            self._watchdog.start()

    def _new_executor(self) -> ProcessPoolExecutor:
        context = start_context()
        self._clock = context.Array("d", 2 * self.workers)  # per worker: page started at, pid
        slots = context.Value("i", 0)
        executor = ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=parse.init_worker, initargs=(self._clock, slots)
        )
        # Start every worker now, so that process start-up is not timed as parsing.
        for future in [executor.submit(self.parse_batch, []) for _ in range(self.workers)]:
            future.result()
        return executor

    def close(self, cancel: bool = False) -> None:
        self._closing.set()
        if self._executor is None:
            return
        if cancel:  # an interrupt must not wait for pages being parsed
            self._executor.shutdown(wait=False, cancel_futures=True)
            _kill_workers(self._executor)
        else:
            self._executor.shutdown(wait=True)
        self._executor = None

    # --- feeding --------------------------------------------------------------------

    def submit(self, result: FetchResult) -> None:
        if self._executor is None:
            self._parse_here(result)
            return
        self._batch.append(result)
        with self._cond:
            idle = len(self._flights) < self.workers
        if idle or len(self._batch) >= self.batch_size:
            self._send()

    def _parse_here(self, result: FetchResult) -> None:
        [outcome], cpu = self.parse_batch([_item(result)], None, self.want_links)
        self.parse_cpu_s += cpu
        self._deliver(result, outcome)

    def _send(self) -> None:
        batch, self._batch = self._batch, []
        size = sum(len(r.body) for r in batch)
        with self._cond:
            if self._flights and self._full(size):
                waited = time.perf_counter()
                while self._flights and self._full(size):
                    self._cond.wait()
                self.wait_s += time.perf_counter() - waited
            if self._orphans:
                self._recover_locked()
            flight = _Flight(batch, size)
            try:
                future = self._executor.submit(self.parse_batch, [_item(r) for r in batch], self.timeout, self.want_links)
            except BrokenProcessPool:  # a worker died since the last batch came back
                self._orphans.extend(batch)
                return
            self._flights[id(future)] = flight
            self._in_flight_bytes += size
            self._pages_in_flight += len(batch)
            self.peak_backlog = max(self.peak_backlog, self._pages_in_flight)
        future.add_done_callback(self._finished)

    def _full(self, size: int) -> bool:
        return self._in_flight_bytes + size > self.bytes_limit or len(self._flights) >= 2 * self.workers

    def _finished(self, future: Future) -> None:
        with self._cond:
            flight = self._flights[id(future)]
        try:
            outcomes, cpu = future.result()
        except BrokenProcessPool:
            outcomes, cpu = None, 0.0
        except BaseException as exc:  # cancelled by an interrupt, or unpicklable
            outcomes, cpu = [f"{type(exc).__name__}: {exc}"[:200]] * len(flight.batch), 0.0
        try:
            if outcomes is not None:
                for result, outcome in zip(flight.batch, outcomes):
                    self._deliver(result, outcome)
        finally:
            # Only now: drain() must not return before these pages are delivered.
            with self._cond:
                del self._flights[id(future)]
                self._in_flight_bytes -= flight.size
                self._pages_in_flight -= len(flight.batch)
                self.parse_cpu_s += cpu
                if outcomes is None and not self._closing.is_set():
                    self._orphans.extend(flight.batch)
                self._cond.notify_all()

    def _deliver(self, result: FetchResult, outcome: "dict | str") -> None:
        if isinstance(outcome, dict):
            self.done(result, outcome, None)
        else:
            self.done(result, None, outcome)

    def drain(self, wake: Callable[[], bool] = lambda: False) -> bool:
        """Send the partial batch and wait until every page is delivered: True.

        Returns False early, with pages still in flight, once ``wake()`` is
        true (checked as each batch comes back): the caller can hand out the
        records delivered so far, and drain again.
        """
        if self._executor is None:
            return True
        if self._batch:
            self._send()
        with self._cond:
            while self._flights or self._orphans:
                if wake():
                    return False
                if self._orphans and not self._flights:
                    self._recover_locked()
                else:
                    self._cond.wait()
        return True

    # --- faults ---------------------------------------------------------------------

    def _recover_locked(self) -> None:
        """Rebuild the pool and re-parse orphaned pages one by one (called with the lock held)."""
        while self._flights:  # every batch of the broken pool must have come back first
            self._cond.wait()
        orphans, self._orphans = self._orphans, []
        self._replace_executor()  # the old one is broken, or about to be marked so
        for result in orphans:
            future = self._executor.submit(self.parse_batch, [_item(result)], self.timeout, self.want_links)
            kills = self.watchdog_kills
            try:
                [outcome], cpu = future.result(timeout=(self.timeout or 60) + 2)
                self.parse_cpu_s += cpu
            except BrokenProcessPool:
                if self.watchdog_kills > kills:
                    outcome = f"parse timed out after {self.timeout:g} s (worker killed)"
                else:
                    outcome = "parse worker died on this page"
                self._replace_executor()
            except TimeoutError:
                outcome = f"parse timed out after {self.timeout:g} s (worker killed)"
                _kill_workers(self._executor)
                self._replace_executor()
            self._deliver(result, outcome)

    def _replace_executor(self) -> None:
        self.restarts += 1
        old, self._executor = self._executor, self._new_executor()
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    def _watch(self) -> None:
        """Kill a worker whose page runs past the timeout where SIGALRM cannot stop it (C code)."""
        while not self._closing.wait(0.25):
            clock = self._clock
            now = time.monotonic()
            with clock.get_lock():
                posts = clock[:]
            for started, pid in zip(posts[0::2], posts[1::2]):
                if started and pid and now - started > self.timeout + 1:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                        self.watchdog_kills += 1
                    except ProcessLookupError:
                        pass


def _item(result: FetchResult) -> tuple[str, bytes, str | None]:
    return result.final_url or result.url, result.body, result.content_type


def _kill_workers(executor: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor has no public way to stop a worker mid-task before
    # Python 3.14's terminate_workers(); its process table is the only handle.
    if hasattr(executor, "terminate_workers"):
        executor.terminate_workers()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.join(timeout=2)
