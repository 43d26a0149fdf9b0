"""The worker side: what runs in each pool process.

:func:`init_worker` is the pool's initializer: it makes the process's one
``requests.Session`` (so a worker keeps its connections alive from one URL
to the next), ignores SIGINT (the parent alone acts on Ctrl-C) and has the
process exit when the parent dies without stopping it.  :func:`fetch_batch`
is the function every task runs: it fetches a batch of URLs one after
another, marking in the crew's shared state array which task it is on, so
that the parent can tell a task that died with its worker from one whose
result was on its way (see :class:`~.crew.Crew`).

requests is imported here, in the worker (and once by the forkserver for all
of them, see :mod:`.engine`), never by the parent listing engines.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from dataclasses import dataclass

import crawler
from crawler.fetching import describe, fetch_plan, run_blocking
from crawler.processes import follow_parent
from crawler.records import has_body, unparsed_fields


@dataclass
class WorkerState:
    settings: crawler.Settings
    session: object
    exchange: object  # crawler.requests_exchange.exchange
    verify: "bool | str"
    state: object  # the crew's shared array: [retired flag, one int per task slot]
    pid: int


_worker: WorkerState | None = None  # this process's; set by the pool initializer


def init_worker(settings: crawler.Settings, state) -> None:
    # Ctrl-C reaches the whole process group; only the parent acts on it (it
    # then terminates the pool), so a worker does not die with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _worker
    from crawler import requests_exchange

    _worker = WorkerState(
        settings, requests_exchange.new_session(), requests_exchange.exchange, settings.ca_file or True, state, os.getpid()
    )
    follow_parent()  # exit when the parent dies without terminating the pool (SIGKILL, a crash)


def _fetch_one(worker: WorkerState, url: str) -> crawler.FetchResult:
    started = time.monotonic()
    try:
        result = run_blocking(
            fetch_plan(url, worker.settings),
            lambda step: worker.exchange(worker.session, step, worker.verify),
        )
    except Exception as exc:  # a bug must cost one record, not the task's place in the pool
        return crawler.FetchResult(url=url, error="other", detail=describe(exc), elapsed=time.monotonic() - started)
    run = worker.settings.run
    if result.body and not run.parse and not run.want_bodies:
        # Nobody in the parent reads the body: its record's fields are made here, and the
        # body's size crosses the pipe instead of its bytes (with 30 KB pages, most of the
        # parent's work per URL was unpickling bodies only to hash them).
        fields = unparsed_fields(result.body if has_body(result) else None)
        result = dataclasses.replace(result, body=b"", size=len(result.body), parsed=fields)
    return result


def fetch_batch(batch: list[tuple[int, int, str]]) -> list[tuple[int, crawler.FetchResult | None]]:
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
