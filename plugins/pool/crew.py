"""One ``multiprocessing.Pool`` as the run uses it: its task feed, its results, its shared state, its deaths.

A :class:`Crew` is what :class:`~.run.Run` starts, feeds, retires and stops:
a :class:`~.cpython_internals.TrackedPool` running
:func:`~.worker.fetch_batch` over a feed the run fills, the array in which
workers mark the task they are on, and the list of workers that died.
Stopping it never hangs on a dead worker: what Pool cannot do by itself for
that is done through :mod:`.cpython_internals`.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
import time

import crawler
from crawler.errors import CrawlerError

from . import cpython_internals, worker
from .cpython_internals import TrackedPool

# Pool.close()/terminate() + join() take milliseconds; taking longer than this,
# they are stuck on something a dead worker left behind (see Crew.stop).
STOP_GRACE_S = 1.0


def died(code: int) -> str:
    """A dead worker's exit code, as a record's ``detail``."""
    if code < 0:
        try:
            return f"pool worker died (exit code {code}, {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"pool worker died (exit code {code})"


class Crew:
    """One ``multiprocessing.Pool`` with its task feed, its results and its shared state array.

    ``state[0]`` is the "retired" flag; ``state[slot]`` says which worker is
    on the task in that slot: ``+pid`` while fetching, ``-pid`` once the
    fetch is done and the result is being sent, ``0`` before a worker took it.
    Writes of one aligned int are atomic, so no lock is needed: each slot has
    one writer at a time.

    Raises :class:`CrawlerError` when this Python lacks the Pool internals
    that stopping a broken pool needs (:func:`.cpython_internals.missing`).
    """

    def __init__(self, ctx, settings: crawler.Settings, processes: int, slots: int):
        self.state = ctx.RawArray("i", slots + 1)
        self.feed: queue.SimpleQueue = queue.SimpleQueue()
        self.pool = TrackedPool(processes, worker.init_worker, (settings, self.state), context=ctx)
        gaps = cpython_internals.missing(self.pool)
        if gaps:
            self.pool.terminate()
            self.pool.join()
            raise CrawlerError(cpython_internals.unsupported(gaps))
        # The feed is read lazily by the pool's task-handler thread; None ends it.
        self.results = self.pool.imap_unordered(worker.fetch_batch, iter(self.feed.get, None))
        self.dead: dict[int, tuple[int, float]] = {}  # pid -> (exit code, when seen)
        self.broken = False  # a worker died: the pool's queues may be jammed
        self.completed = 0
        self.batches_out = 0  # batches submitted whose results have not come back
        self.retired_at: float | None = None
        self.last_result_at = time.monotonic()
        self.stopped = False

    def submit(self, tasks: list) -> None:
        """Send ``tasks`` (:class:`~.run.Task`) to the pool as one batch; they are this crew's from now on."""
        for task in tasks:
            task.crew = self
            self.state[task.slot] = 0
        self.feed.put([(task.seq, task.slot, task.url) for task in tasks])
        self.batches_out += 1

    def take(self, timeout: float) -> list[tuple[int, crawler.FetchResult | None]]:
        """One batch of results, or [] when none came within ``timeout``."""
        try:
            batch = self.results.next(timeout)
        except (multiprocessing.TimeoutError, StopIteration):
            return []
        self.completed += len(batch)
        self.batches_out -= 1
        self.last_result_at = time.monotonic()
        return batch

    def look_for_deaths(self) -> int:
        """Note workers that exited (they only exit by dying while the pool runs); how many are new."""
        now = time.monotonic()
        found = 0
        for process in list(self.pool.workers_started):
            code = process.exitcode
            if code is not None:
                self.dead[process.pid] = (code, now)
                self.pool.workers_started.remove(process)
                self.broken = True
                found += 1
        return found

    def retire(self) -> None:
        """No new work: tasks a worker takes from now on are handed back unrun."""
        self.state[0] = 1
        self.feed.put(None)
        self.retired_at = time.monotonic()

    def stop(self, graceful: bool) -> None:
        """Close (``graceful``: all results are in) or terminate the pool; never hang on a dead worker."""
        if self.stopped:
            return
        self.stopped = True
        if self.retired_at is None:
            self.feed.put(None)  # the task-handler thread must end: close/terminate join it
        self.look_for_deaths()
        if self.broken:
            self._kill_workers()
        finish = self._close if graceful and not self.broken else self._terminate
        finisher = threading.Thread(target=finish, name="crawl-pool-stop", daemon=True)
        finisher.start()
        finisher.join(STOP_GRACE_S if self.broken else 5 * STOP_GRACE_S)
        if finisher.is_alive():
            # Stuck: a worker died holding a queue lock (Pool.terminate() waits
            # for it forever), or in the middle of writing a result, so the
            # pool's result thread waits for the rest of a message that never
            # comes.  Kill every worker, free the locks, and let the result
            # pipe see its end, so that terminate/join can finish.
            self._kill_workers()
            cpython_internals.unjam_result_pipe(self.pool)
            finisher.join(STOP_GRACE_S)

    def _close(self) -> None:
        self.pool.close()
        self.pool.join()

    def _terminate(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def _kill_workers(self) -> None:
        """Stop replacing workers, kill them all, free the queue locks the dead may hold."""
        cpython_internals.stop_replacing_workers(self.pool)
        # A worker that never started (its start failed) has no process to kill or join.
        processes = [p for p in cpython_internals.all_workers(self.pool) if p.pid is not None]
        for process in processes:
            if process.exitcode is None:
                process.kill()
        for process in processes:
            process.join(1.0)
        cpython_internals.free_orphaned_locks(self.pool)
