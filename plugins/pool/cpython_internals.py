"""Every CPython-private part of ``multiprocessing`` that the pool engine uses: here, and nowhere else.

``multiprocessing.Pool`` has no public way to do what this engine needs when
a worker dies (see :mod:`.crew`): list every worker it ever started, stop it
from starting replacements, free a queue lock that a killed worker held, and
end a read of a result that a killed worker left half-written.
:data:`POOL_INTERNALS` and :data:`MODULE_INTERNALS` list what this module
reads or writes for that, and why; they were read in the sources of CPython
3.11 and of CPython's main branch of 2026 (3.15 in development), where they
are the same: :data:`VERIFIED` is that range.

Guards, so that a Python without them fails clearly instead of hanging on
the first dead worker:

* :func:`missing` names each of them that this Python lacks, on a pool just
  started, and a Python outside :data:`VERIFIED` (another implementation, or
  a CPython whose sources nobody has read for this); :class:`~.crew.Crew`
  calls it on every pool and, when anything is missing, stops the pool and
  ends the run with a one-line error naming it (before any URL is fetched).
* Each helper below still looks its attributes up with ``getattr`` and
  skips what is absent, so that a stop never raises ``AttributeError``.
* ``tests/test_pool_internals.py`` checks on the Python that runs the tests
  that nothing is missing, and the pool engine's tests that each repair works.

A design that needs none of this would manage its own worker processes
instead of ``multiprocessing.Pool``: one pipe per worker, so that a dead
worker's pipe reads as EOF and no other worker's lock or pipe is shared.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import sys

_MISSING = object()

# The Pool's private parts the engine relies on (dotted from the pool), and what for.
POOL_INTERNALS = {
    "_pool": "the workers alive now, all killed when a broken pool is torn down",
    "_worker_handler._state": "set to TERMINATE, so that the pool stops replacing the workers being killed",
    "_change_notifier": "woken, so that the worker handler sees its new state at once",
    "_inqueue._rlock": "the task queue's lock, held by a worker waiting for a task: freed when a killed worker held it",
    "_outqueue._wlock": "the result queue's lock, held by a worker writing a result: likewise",
    "_outqueue._writer": "the result pipe's write end, pointed at /dev/null so that a half-written result ends",
}

# Module-level parts (dotted from ``multiprocessing``), and what for.
MODULE_INTERNALS = {
    "pool.TERMINATE": "the worker handler's state that stops it",
    "pool.Pool.Process": "the method Pool starts every worker through, replacements included (TrackedPool records them)",
}

# The CPython versions (major, minor) whose multiprocessing sources were read for
# the parts above: a Python outside them is refused, whatever it has.
VERIFIED = ((3, 11), (3, 15))


def _lookup(obj, dotted: str):
    for name in dotted.split("."):
        obj = getattr(obj, name, _MISSING)
        if obj is _MISSING:
            break
    return obj


def missing(pool: multiprocessing.pool.Pool, python: tuple[str, tuple[int, int]] | None = None) -> list[str]:
    """The private parts the engine relies on that this Python's ``pool`` (a :class:`TrackedPool`) lacks.

    ``python`` is (implementation, (major, minor)), this Python's by default.
    """
    implementation, version = python or (sys.implementation.name, sys.version_info[:2])
    gaps = []
    if implementation != "cpython" or not VERIFIED[0] <= version <= VERIFIED[1]:
        first, last = (".".join(map(str, v)) for v in VERIFIED)
        gaps.append(f"CPython {first} to {last} (the versions whose sources were checked)")
    gaps += [f"Pool.{name}" for name in POOL_INTERNALS if _lookup(pool, name) is _MISSING]
    gaps += [f"multiprocessing.{name}" for name in MODULE_INTERNALS if _lookup(multiprocessing, name) is _MISSING]
    if "multiprocessing.pool.Pool.Process" not in gaps and not getattr(pool, "workers_started", None):
        gaps.append("multiprocessing.pool.Pool.Process (the pool started its workers without it)")
    return gaps


def unsupported(gaps: list[str]) -> str:
    """The one-line error for a Python that lacks ``gaps`` (from :func:`missing`)."""
    version = ".".join(map(str, sys.version_info[:3]))
    return (
        f"pool: this Python ({sys.implementation.name} {version}) lacks multiprocessing internals the pool engine "
        f"needs to survive a dead worker: {', '.join(gaps)}; use another engine (e.g. -e threads)"
    )


class TrackedPool(multiprocessing.pool.Pool):
    """A Pool that remembers every worker process it starts, replacements included.

    ``Pool._pool`` forgets a dead worker within 0.1 s (and starts another); a
    list of our own lets the engine find every dead worker, its pid and its
    exit code, however soon the pool replaced it.  Relies on Pool starting
    each worker through ``self.Process`` (checked by :func:`missing`).
    """

    def __init__(self, *args, **kwargs):
        self.workers_started: list = []
        super().__init__(*args, **kwargs)

    def Process(self, ctx, *args, **kwds):  # noqa: N802 (Pool's name)
        process = super().Process(ctx, *args, **kwds)
        self.workers_started.append(process)
        return process


def all_workers(pool: TrackedPool) -> list:
    """Every worker process of ``pool`` not yet reaped: those we saw start, and those the pool holds now."""
    alive_now = _lookup(pool, "_pool")
    return list(pool.workers_started) + ([] if alive_now is _MISSING else list(alive_now))


def stop_replacing_workers(pool: multiprocessing.pool.Pool) -> None:
    """Tell the pool's worker handler to stop starting replacements, and wait (1 s at most) for it to end.

    What ``Pool.terminate()`` does first, without the rest of it, which can
    wait forever for a lock a killed worker held.
    """
    handler = _lookup(pool, "_worker_handler")
    notifier = _lookup(pool, "_change_notifier")
    terminate = _lookup(multiprocessing, "pool.TERMINATE")
    if _MISSING in (handler, notifier, terminate):
        return
    handler._state = terminate
    notifier.put(None)
    handler.join(1.0)


def free_orphaned_locks(pool: multiprocessing.pool.Pool) -> None:
    """Release the task and result queues' locks, once every worker is dead.

    ``SimpleQueue.get()`` holds the inqueue's read lock while it waits for a
    task, ``put()`` the outqueue's write lock while it writes a result: a
    worker killed there never releases it.  With every worker gone, a lock
    that stays taken is such an orphan.
    """
    for name in ("_inqueue._rlock", "_outqueue._wlock"):
        lock = _lookup(pool, name)
        if lock is _MISSING or lock is None:  # None: no write lock (Windows)
            continue
        lock.acquire(timeout=0.1)  # now ours, or still an orphan's: free it either way
        try:
            lock.release()
        except ValueError:  # released meanwhile by a thread of ours
            pass


def unjam_result_pipe(pool: multiprocessing.pool.Pool) -> None:
    """Point our end of the result pipe at /dev/null, so that a half-written result reads as its end.

    With the workers dead, our end is the pipe's last writer: the pool's
    result thread then sees EOF instead of waiting for the rest of a message
    that never comes (and ``terminate``'s own last write goes to /dev/null).
    """
    writer = _lookup(pool, "_outqueue._writer")
    if writer is _MISSING:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, writer.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):
        pass
