"""``pool``: a ``multiprocessing.Pool`` of worker processes, one ``requests.Session`` each.

``--concurrency`` processes each run one blocking request at a time.  Every
process has its own interpreter and GIL, so the client's Python work (HTTP
parsing, decompression) spreads over cores; the price is process start-up and
pickling every result, body included, once across a pipe.  The session is
made in the pool initializer, so each worker keeps its connections alive from
one URL to the next.  Results stream back through ``imap_unordered``.

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
  process (shared with the parse stage's pool), which imports this module
  (and so requests) once, because it is listed in
  ``set_forkserver_preload`` below, and then forks each worker from itself.
  32 workers fetch their first page about 0.25 s after the pool is created
  (spawn: 2.5-5 s; both measured on 2 busy cores), with the same behaviour
  from the CLI and from tests.

``--engine-opt start_method=spawn|forkserver|fork`` and
``--engine-opt chunksize=N`` override the defaults, for measurements.

Stopping: closing the generator (Ctrl-C, an exception, an early ``close()``)
terminates the pool and joins its processes; a normal end closes and joins
it.  Workers ignore SIGINT, so a terminal's Ctrl-C, which reaches the whole
process group, is handled once, by the parent.  A worker also exits by
itself when the parent dies without stopping it (SIGKILL, a crash).

A dead worker (killed, segfault, out of memory) must not hang the run:
``multiprocessing.Pool`` replaces it and silently loses its task, and a
worker killed inside the pool's queue code can leave a queue lock held
forever.  See :class:`_Run` and :class:`_Crew` for how this engine notices,
records and works around it.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import multiprocessing.pool
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Generator, Iterable, Iterator

import crawler
from crawler.errors import CrawlerError
from crawler.fetching import describe, fetch_plan, run_blocking
from crawler.processes import follow_parent

# requests (through crawler.requests_exchange) is imported by the workers,
# where it is used, and once by the forkserver for all of them
# (_preload_in_forkserver): not by `crawl --list-engines`.
_CLIENT_MODULE = "crawler.requests_exchange"

# Largest number of URLs per task (our own batches: with Pool's chunksize > 1,
# imap_unordered returns a plain generator, without the next(timeout) that the
# dead-worker check needs).  Measured on 2 cores shared with other jobs (so
# wall times are noisy; CPU times less so), Python 3.11, forkserver, 2000 demo
# pages of ~30 KB from ``python -m crawler.site`` on loopback, -c 8, medians of
# 4 runs; A: fixed batches, load average 6-9; B: the adaptive batches below,
# load average 3-7:
#
#     chunksize                     1      2      4      8     16
#     pages/s                A   1272   1366   1438   1572   1595
#                            B    617    757    802    772    997
#     parent CPU us/page     A    303    241    190    155    126
#                            B    465    346    292    226    173
#
# ``crawl --demo -e pool --no-parse -q --demo-pages 2000 -c 8 --engine-opt
# chunksize=N`` (4 runs each, load average 8): medians 457 / 497 / 540 pages/s
# and 5.6 / 5.4 / 4.7 CPU seconds for N = 1 / 4 / 8.  A bare Pool returning
# 30 KB per task costs its parent 229 us of CPU per task at chunksize 1, 44 at
# 4, 10 at 16: three threads hand each task on (feeder, pipe, result thread).
# So chunksize 1 costs the parent about twice the IPC work, which shows on a
# fast local site where the client is CPU-bound.  Batches have a price too:
# a batch returns when its last URL is done, its URLs wait for each other on
# one worker, and the last ones of a list can sit in a batch while other
# workers idle.  Hence batches are adaptive (_Run._batch_size): up to 8 URLs,
# only as many as fetch in about BATCH_S, only when every worker already has
# a task, never for the end of the list.  On real sites (fetches of 0.1 s and
# more) every URL goes alone; a server with 1 URL in 25 taking 0.5 s, the rest
# 10 ms, ran 1000 URLs at -c 8 in 4.4-5.3 s whatever the chunksize, and 50 URLs
# of 0.2 s at -c 32 took 0.8-1.2 s whatever the chunksize.
CHUNKSIZE = 8
# A batch holds as many URLs as the average fetch time says take this long
# (up to CHUNKSIZE); slower fetches go one per task (see _Run._batch_size).
BATCH_S = 0.1
# Longest wait for a result before looking for dead workers again.
POLL_S = 0.1
# A dead worker's task whose fetch had finished (its result was being sent)
# may still arrive through the pipe: wait this long for it before recording it lost.
SENDING_GRACE_S = 0.5
# A retired pool whose results have been waiting this long without one
# arriving has a jammed result pipe (a worker died while writing to it).
JAMMED_S = 5.0
# Pool.close()/terminate() + join() take milliseconds; taking longer than this,
# they are stuck on something a dead worker left behind (see _Crew.stop).
STOP_GRACE_S = 1.0
# Pools in a row whose workers all died before finishing a single URL: the
# workers cannot start (import error, broken environment); give up.
MAX_BARREN_POOLS = 3


def _preload_in_forkserver() -> None:
    """Have the forkserver import this module (and requests) once, for every worker it forks.

    Added to whatever is already listed (``__main__`` by default), at import
    time, because the preload list only counts when the server starts, and
    the parse stage may start it before this engine runs.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods() or __name__ == "__main__":
        return
    from multiprocessing import forkserver

    current = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["__main__"])
    wanted = current + [name for name in [__name__, _CLIENT_MODULE] if name not in current]
    if wanted != current:
        multiprocessing.get_context("forkserver").set_forkserver_preload(wanted)


_preload_in_forkserver()


# --- the worker side: runs in each pool process --------------------------------------


@dataclass
class _WorkerState:
    settings: crawler.Settings
    session: object
    exchange: object  # crawler.requests_exchange.exchange
    verify: "bool | str"
    state: object  # the pool's shared array: [retired flag, one int per task slot]
    pid: int


_worker: _WorkerState | None = None  # this process's; set by the pool initializer


def _init_worker(settings: crawler.Settings, state) -> None:
    # Ctrl-C reaches the whole process group; only the parent acts on it (it
    # then terminates the pool), so a worker does not die with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _worker
    from crawler import requests_exchange

    _worker = _WorkerState(
        settings, requests_exchange.new_session(), requests_exchange.exchange, settings.ca_file or True, state, os.getpid()
    )
    follow_parent()  # exit when the parent dies without terminating the pool (SIGKILL, a crash)


def _fetch_one(worker: _WorkerState, url: str) -> crawler.FetchResult:
    started = time.monotonic()
    try:
        return run_blocking(
            fetch_plan(url, worker.settings),
            lambda step: worker.exchange(worker.session, step, worker.verify),
        )
    except Exception as exc:  # a bug must cost one record, not the task's place in the pool
        return crawler.FetchResult(url=url, error="other", detail=describe(exc), elapsed=time.monotonic() - started)


def _fetch_batch(batch: list[tuple[int, int, str]]) -> list[tuple[int, crawler.FetchResult | None]]:
    """Fetch each ``(seq, slot, url)``; ``None`` for a task handed back unrun (retired pool)."""
    worker = _worker
    state = worker.state
    done: list[tuple[int, crawler.FetchResult | None]] = []
    for seq, slot, url in batch:
        state[slot] = worker.pid  # "this process is working on the task in this slot"
        if state[0]:
            state[slot] = 0
            done.append((seq, None))
            continue
        done.append((seq, _fetch_one(worker, url)))
        state[slot] = -worker.pid  # "finished; the result is on its way"
    return done


# --- the parent side ----------------------------------------------------------------


class _TrackedPool(multiprocessing.pool.Pool):
    """A Pool that remembers every worker process it starts, replacements included.

    ``Pool._pool`` forgets a dead worker within 0.1 s (and starts another); a
    list of our own lets the engine find every dead worker, its pid and its
    exit code, however soon the pool replaced it.
    """

    def __init__(self, *args, **kwargs):
        self.workers_started: list = []
        super().__init__(*args, **kwargs)

    def Process(self, ctx, *args, **kwds):  # noqa: N802 (Pool's name)
        process = super().Process(ctx, *args, **kwds)
        self.workers_started.append(process)
        return process


@dataclass(eq=False)
class _Task:
    seq: int
    slot: int  # index in the crews' shared arrays; unique among tasks in flight
    url: str
    crew: "_Crew"
    queued_at: float
    sending_since: float | None = None  # retired crews: when its result was first seen on its way


def _died(code: int) -> str:
    if code < 0:
        try:
            return f"pool worker died (exit code {code}, {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"pool worker died (exit code {code})"


class _Crew:
    """One ``multiprocessing.Pool`` with its task feed, its results and its shared state array.

    ``state[0]`` is the "retired" flag; ``state[slot]`` says which worker is
    on the task in that slot: ``+pid`` while fetching, ``-pid`` once the
    fetch is done and the result is being sent, ``0`` before a worker took it.
    Writes of one aligned int are atomic, so no lock is needed: each slot has
    one writer at a time.
    """

    def __init__(self, ctx, settings: crawler.Settings, processes: int, slots: int):
        self.state = ctx.RawArray("i", slots + 1)
        self.feed: queue.SimpleQueue = queue.SimpleQueue()
        self.pool = _TrackedPool(processes, _init_worker, (settings, self.state), context=ctx)
        # The feed is read lazily by the pool's task-handler thread; None ends it.
        self.results = self.pool.imap_unordered(_fetch_batch, iter(self.feed.get, None))
        self.dead: dict[int, tuple[int, float]] = {}  # pid -> (exit code, when seen)
        self.broken = False  # a worker died: the pool's queues may be jammed
        self.completed = 0
        self.batches_out = 0  # batches submitted whose results have not come back
        self.retired_at: float | None = None
        self.last_result_at = time.monotonic()
        self.stopped = False

    def submit(self, tasks: list[_Task]) -> None:
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
            # pipe see its end: with the workers dead, our end is its last
            # writer; once that is pointed at /dev/null the read ends (EOF),
            # the result thread exits, and terminate/join can finish (their own
            # last write then goes to /dev/null).
            self._kill_workers()
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(devnull, self.pool._outqueue._writer.fileno())
                finally:
                    os.close(devnull)
            except (OSError, ValueError):
                pass
            finisher.join(STOP_GRACE_S)

    def _close(self) -> None:
        self.pool.close()
        self.pool.join()

    def _terminate(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def _kill_workers(self) -> None:
        """Stop replacing workers, kill them all, free the queue locks the dead may hold."""
        pool = self.pool
        handler = pool._worker_handler
        handler._state = multiprocessing.pool.TERMINATE
        pool._change_notifier.put(None)
        handler.join(1.0)
        # A worker that never started (its start failed) has no process to kill or join.
        processes = [p for p in list(pool.workers_started) + list(pool._pool) if p.pid is not None]
        for process in processes:
            if process.exitcode is None:
                process.kill()
        for process in processes:
            process.join(1.0)
        # SimpleQueue.get() holds the inqueue's read lock while it waits for a
        # task, put() the outqueue's write lock while it writes a result: a
        # worker killed there never releases it.  With every worker gone, a
        # lock that stays taken is such an orphan.
        for lock in (pool._inqueue._rlock, pool._outqueue._wlock):
            lock.acquire(timeout=0.1)  # now ours, or still an orphan's: free it either way
            try:
                lock.release()
            except ValueError:  # released meanwhile by a thread of ours
                pass


def _max_fetch_s(settings: crawler.Settings) -> float:
    """The longest one URL can take: every redirect hop, every try, every backoff."""
    one_hop = (settings.retries + 1) * settings.timeout + settings.retries * settings.backoff_max
    return (settings.max_redirects + 1) * one_hop + 5.0


def _context(settings: crawler.Settings):
    methods = multiprocessing.get_all_start_methods()
    method = settings.engine_options.get("start_method") or ("forkserver" if "forkserver" in methods else "spawn")
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


class PoolEngine:
    name = "pool"
    description = "multiprocessing.Pool + requests, a Session per worker process, imap_unordered"
    fetches_in_processes = True  # so the per-host gate is shared through a manager process

    def fetch(self, urls: Iterable[str], settings: crawler.Settings) -> Iterator[crawler.FetchResult]:
        # Returns (StopIteration.value) a few figures for the report's engine_stats.
        return (yield from _Run(urls, settings).results())


class _Run:
    """One ``fetch``: reads the URLs lazily, hands them to the pool, yields results.

    Bounded memory: at most ``2 * concurrency * batch size`` URLs are read
    and not yet answered (so at most that many bodies wait in the parent when
    the pipeline is slow to take them); the list is read only as results
    come back (``Pool.imap_unordered`` itself would consume the whole
    iterable at once).

    Dead workers: each task has a slot in the pool's shared array
    (:class:`_Crew`) where the worker that takes it writes its pid.  Every
    ``POLL_S`` the parent looks for exited processes among all the workers
    the pool ever started; a task whose slot holds a dead worker's pid is
    recorded as ``error="other", detail="pool worker died (exit code -9,
    SIGKILL)"``.  The pool is then *retired*: a worker killed inside the
    pool's queue code can leave a queue lock held forever (the pool would
    then never start another task, and ``Pool.terminate()`` would wait for
    that lock), so it gets no new work; tasks it has not started move to a
    fresh pool, tasks running on its live workers finish there, and once it
    has none left it is torn down (workers killed, orphaned locks freed).
    A retired pool whose result pipe stays jammed, or that outlives the
    longest possible fetch, has its remaining tasks recorded as lost.  So the
    run always finishes with exactly one record per URL (a late result for a
    task already recorded is dropped).
    """

    def __init__(self, urls: Iterable[str], settings: crawler.Settings):
        self.settings = settings
        self.ctx = _context(settings)
        self.chunk = _chunksize(settings)
        self.processes = max(1, settings.concurrency)
        # Most URLs ever read and not yet answered (see _limit): enough to keep
        # every worker busy with a batch while another waits for it.
        self.limit = 2 * self.processes * self.chunk
        self.free_slots = list(range(self.limit, 0, -1))  # slot 0 of a state array is the retired flag
        self.pending: dict[int, _Task] = {}  # sent to a worker, not yet answered
        self.unsent: collections.deque[str] = collections.deque()  # read, waiting to fill a batch
        self.source = iter(urls)
        self.exhausted = False
        self.numbers = itertools.count()
        self.fetch_s: float | None = None  # moving average of fetch times
        self.max_fetch_s = _max_fetch_s(settings)
        self.current: _Crew | None = None
        self.retiring: list[_Crew] = []
        self.barren = 0
        self.next_check = 0.0
        self.pools = self.workers_died = self.tasks = self.urls_sent = 0
        self.peak_in_flight = 0  # most workers seen fetching at once (sampled as results come)

    def results(self) -> Generator[crawler.FetchResult, None, dict]:
        finished = False
        try:
            self.current = self._new_crew()
            self.next_check = time.monotonic() + POLL_S
            while True:
                self._top_up()
                if self.exhausted and not self.pending and not self.unsent:
                    break
                ready = self._collect()
                now = time.monotonic()
                if now >= self.next_check:
                    self.next_check = now + POLL_S
                    ready.extend(self._check_workers(now))
                yield from ready
            finished = True
        finally:
            for crew in [self.current, *self.retiring]:
                if crew is not None:
                    crew.stop(graceful=finished and crew is self.current)
        return {
            "start_method": self.ctx.get_start_method(),
            "pools": self.pools,
            "workers_died": self.workers_died,
            "tasks": self.tasks,
            "urls_per_task": round(self.urls_sent / self.tasks, 2) if self.tasks else None,
            "peak_in_flight": self.peak_in_flight,
        }

    def _new_crew(self) -> _Crew:
        self.pools += 1
        return _Crew(self.ctx, self.settings, self.processes, self.limit)

    # -- feeding ----------------------------------------------------------------

    def _top_up(self) -> None:
        """Read the list lazily, no further than ``limit`` URLs ahead of their results."""
        self._dispatch()
        while not self.exhausted and len(self.pending) + len(self.unsent) < self._limit():
            try:
                self.unsent.append(next(self.source))
            except StopIteration:
                self.exhausted = True
            self._dispatch()

    def _dispatch(self) -> None:
        """Send read URLs to the pool, one per task or in batches (see ``CHUNKSIZE``)."""
        current = self.current
        while self.unsent:
            size = self._batch_size()
            if len(self.unsent) < size:
                return
            batch = []
            for _ in range(size):
                task = _Task(next(self.numbers), self.free_slots.pop(), self.unsent.popleft(), current, time.monotonic())
                self.pending[task.seq] = task
                batch.append(task)
            current.submit(batch)
            self.tasks += 1
            self.urls_sent += size

    def _batch_size(self) -> int:
        """URLs for the next task.

        A batch saves the parent IPC work per URL, but it comes back only when
        its last URL is done, and its URLs wait for each other on one worker.
        So: one URL per task while some worker may have nothing queued, and
        for the end of the list, so that no worker idles while URLs wait in
        another's batch; otherwise :meth:`_batch_target`.
        """
        if self.exhausted or self.current.batches_out < self.processes:
            return 1
        return self._batch_target()

    def _batch_target(self) -> int:
        """As many URLs as the average fetch time says take about ``BATCH_S``, at most ``chunk``.

        Slow fetches (real sites) go one per task: there IPC costs next to nothing.
        """
        if self.fetch_s is None:
            return 1
        return max(1, min(self.chunk, int(BATCH_S / max(self.fetch_s, 0.001))))

    def _limit(self) -> int:
        """URLs read and not yet answered: two tasks' worth per worker (as the threads engine)."""
        return 2 * self.processes * self._batch_target()

    # -- results ----------------------------------------------------------------

    def _collect(self) -> list[crawler.FetchResult]:
        """Results that came back, waiting up to ``POLL_S`` for the first."""
        arrived = [(self.current, item) for item in self.current.take(POLL_S / 5 if self.retiring else POLL_S)]
        for crew in self.retiring:
            while got := crew.take(0):
                arrived.extend((crew, item) for item in got)
        if arrived:  # each worker fetches one URL at a time: its slot holds +pid meanwhile
            fetching = sum(1 for task in self.pending.values() if task.crew.state[task.slot] > 0)
            self.peak_in_flight = max(self.peak_in_flight, fetching)
        ready = []
        for crew, (seq, result) in arrived:
            task = self.pending.get(seq)
            if task is None or task.crew is not crew:
                continue  # already recorded as lost, or moved to another pool
            if result is None:  # a retired pool handed it back unrun
                self.current.submit([task])
                continue
            self._done(task)
            self.fetch_s = result.elapsed if self.fetch_s is None else 0.9 * self.fetch_s + 0.1 * result.elapsed
            ready.append(result)
        return ready

    def _done(self, task: _Task) -> None:
        del self.pending[task.seq]
        self.free_slots.append(task.slot)

    def _lost(self, task: _Task, detail: str) -> crawler.FetchResult:
        self._done(task)
        return crawler.FetchResult(url=task.url, error="other", detail=detail, elapsed=time.monotonic() - task.queued_at)

    # -- dead workers -----------------------------------------------------------

    def _check_workers(self, now: float) -> list[crawler.FetchResult]:
        ready = []
        for crew in (self.current, *self.retiring):
            self.workers_died += crew.look_for_deaths()
            if not crew.dead:
                continue
            for task in [t for t in self.pending.values() if t.crew is crew]:
                holder = crew.state[task.slot]
                death = crew.dead.get(abs(holder)) if holder else None
                # +pid: it died fetching.  -pid: it died after the fetch, maybe
                # while sending the result; give the pipe a moment to deliver it.
                if death and (holder > 0 or now - death[1] >= SENDING_GRACE_S):
                    ready.append(self._lost(task, _died(death[0])))
        if self.current.broken:
            self._retire_current()
        for crew in list(self.retiring):
            ready.extend(self._settle_retired(crew, now))
            if not any(t.crew is crew for t in self.pending.values()):
                self.retiring.remove(crew)
                crew.stop(graceful=False)
        return ready

    def _retire_current(self) -> None:
        old = self.current
        self.barren = self.barren + 1 if old.completed == 0 else 0
        if self.barren >= MAX_BARREN_POOLS:
            code = next(iter(old.dead.values()))[0]
            raise CrawlerError(f"pool: worker processes keep dying before fetching anything ({_died(code)})")
        old.retire()
        self.retiring.append(old)
        self.current = self._new_crew()
        for task in [t for t in self.pending.values() if t.crew is old and old.state[t.slot] == 0]:
            self.current.submit([task])

    def _settle_retired(self, crew: _Crew, now: float) -> list[crawler.FetchResult]:
        """Record as lost what a retired pool can no longer deliver."""
        mine = [t for t in self.pending.values() if t.crew is crew]
        if not mine:
            return []
        detail = _died(next(iter(crew.dead.values()))[0]) + "; result lost"
        if now - crew.retired_at > self.max_fetch_s:
            return [self._lost(t, detail) for t in mine]
        running = {crew.state[t.slot] for t in mine if crew.state[t.slot] > 0}
        jammed = False
        for task in mine:
            holder = crew.state[task.slot]
            if holder < 0 and -holder not in running:  # fetched; only sending it is left
                task.sending_since = task.sending_since or now
                jammed = jammed or now - max(crew.last_result_at, task.sending_since) > JAMMED_S
            else:
                task.sending_since = None
        if jammed:  # a worker died mid-write: nothing more comes out of this pipe
            return [self._lost(t, detail) for t in mine]
        return []


@crawler.hookimpl
def crawler_engines():
    return [PoolEngine()]
