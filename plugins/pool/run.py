"""One ``fetch()`` of the pool engine, on the parent's side: hand out batches, collect results, record the dead's tasks.

:class:`Run` reads the URL list lazily, sends URLs to the current
:class:`~.crew.Crew` one per task or in adaptive batches, yields results as
they come, and every ``POLL_S`` looks for dead workers: a task a dead worker
held is recorded as failed, and a pool that lost a worker is retired and
replaced, so that the run ends with exactly one record per URL.
"""

from __future__ import annotations

import collections
import itertools
import operator
import time
from dataclasses import dataclass
from typing import Generator, Iterable

import crawler
from crawler.errors import CrawlerError

from .crew import Crew, died

# CHUNKSIZE, the largest number of URLs per task, is 8 (defined with the engine's options
# it defaults), for these reasons.  Our own batches (with Pool's chunksize > 1,
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
# workers idle.  Hence batches are adaptive (Run._batch_size): up to 8 URLs,
# only as many as fetch in about BATCH_S, only when every worker already has
# a task, never for the end of the list.  On real sites (fetches of 0.1 s and
# more) every URL goes alone; a server with 1 URL in 25 taking 0.5 s, the rest
# 10 ms, ran 1000 URLs at -c 8 in 4.4-5.3 s whatever the chunksize, and 50 URLs
# of 0.2 s at -c 32 took 0.8-1.2 s whatever the chunksize.
# A batch holds as many URLs as the average fetch time says take this long
# (up to CHUNKSIZE); slower fetches go one per task (see Run._batch_size).
BATCH_S = 0.1
# Longest wait for a result before looking for dead workers again.
POLL_S = 0.1
# A dead worker's task whose fetch had finished (its result was being sent)
# may still arrive through the pipe: wait this long for it before recording it lost.
SENDING_GRACE_S = 0.5
# A retired pool whose results have been waiting this long without one
# arriving has a jammed result pipe (a worker died while writing to it).
JAMMED_S = 5.0
# Pools in a row whose workers all died before finishing a single URL: the
# workers cannot start (import error, broken environment); give up.
MAX_BARREN_POOLS = 3


@dataclass(eq=False)
class Task:
    seq: int
    slot: int  # index in the crews' shared arrays; unique among tasks in flight
    url: str
    crew: Crew
    queued_at: float
    sending_since: float | None = None  # retired crews: when its result was first seen on its way


def _max_fetch_s(settings: crawler.Settings) -> float:
    """The longest one URL can take: every redirect hop, every try, every backoff."""
    one_hop = (settings.retries + 1) * settings.timeout + settings.retries * settings.backoff_max
    return (settings.max_redirects + 1) * one_hop + 5.0


class Run:
    """One ``fetch``: reads the URLs lazily, hands them to the pool, yields results.

    Bounded memory: at most ``2 * concurrency * batch size`` URLs are read
    and not yet answered (so at most that many bodies wait in the parent when
    the pipeline is slow to take them); the list is read only as results
    come back (``Pool.imap_unordered`` itself would consume the whole
    iterable at once).

    Dead workers: each task has a slot in the pool's shared array
    (:class:`Crew`) where the worker that takes it writes its pid.  Every
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

    def __init__(self, urls: Iterable[str], settings: crawler.Settings, ctx, chunk: int):
        """``ctx``: the multiprocessing context to start pools with; ``chunk``: most URLs per task."""
        self.settings = settings
        self.ctx = ctx
        self.chunk = chunk
        # one process per request in flight, but no more than the list has URLs, when it says (PEP 424)
        listed = operator.length_hint(urls, 0)
        self.processes = max(1, min(settings.concurrency, listed) if listed > 0 else settings.concurrency)
        # Most URLs ever read and not yet answered (see _limit): enough to keep
        # every worker busy with a batch while another waits for it.
        self.limit = 2 * self.processes * self.chunk
        self.free_slots = list(range(self.limit, 0, -1))  # slot 0 of a state array is the retired flag
        self.pending: dict[int, Task] = {}  # sent to a worker, not yet answered
        self.unsent: collections.deque[str] = collections.deque()  # read, waiting to fill a batch
        self.source = iter(urls)
        self.exhausted = False
        self.numbers = itertools.count()
        self.fetch_s: float | None = None  # moving average of fetch times
        self.max_fetch_s = _max_fetch_s(settings)
        self.current: Crew | None = None
        self.retiring: list[Crew] = []
        self.barren = 0
        self.next_check = 0.0
        self.pools = self.workers_died = self.tasks = self.urls_sent = 0
        self.peak_in_flight = 0  # most workers seen fetching at once (sampled as results come)

    def results(self) -> Generator[crawler.FetchResult, None, dict]:
        """Each URL's result as it comes; returns (``StopIteration.value``) the figures for ``engine_stats``."""
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
            "processes": self.processes,
            "pools": self.pools,
            "workers_died": self.workers_died,
            "tasks": self.tasks,
            "urls_per_task": round(self.urls_sent / self.tasks, 2) if self.tasks else None,
            "peak_in_flight": self.peak_in_flight,
        }

    def _new_crew(self) -> Crew:
        self.pools += 1
        return Crew(self.ctx, self.settings, self.processes, self.limit)

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
                task = Task(next(self.numbers), self.free_slots.pop(), self.unsent.popleft(), current, time.monotonic())
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

    def _done(self, task: Task) -> None:
        del self.pending[task.seq]
        self.free_slots.append(task.slot)

    def _lost(self, task: Task, detail: str) -> crawler.FetchResult:
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
                    ready.append(self._lost(task, died(death[0])))
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
            raise CrawlerError(f"pool: worker processes keep dying before fetching anything ({died(code)})")
        old.retire()
        self.retiring.append(old)
        self.current = self._new_crew()
        for task in [t for t in self.pending.values() if t.crew is old and old.state[t.slot] == 0]:
            self.current.submit([task])

    def _settle_retired(self, crew: Crew, now: float) -> list[crawler.FetchResult]:
        """Record as lost what a retired pool can no longer deliver."""
        mine = [t for t in self.pending.values() if t.crew is crew]
        if not mine:
            return []
        detail = died(next(iter(crew.dead.values()))[0]) + "; result lost"
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
