"""``threads``: a ThreadPoolExecutor of blocking requests, one Session per thread.

Threads overlap their waiting; the GIL lets one run Python at a time, so
the client's CPU work (parsing HTTP, decoding) is serialised on one core.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Iterable, Iterator

import crawler


class ThreadsEngine:
    name = "threads"
    description = "ThreadPoolExecutor + requests, a Session per thread"
    options: dict[str, str] = {}  # reads no --engine-opt key: any is a usage error
    imports = ("crawler.requests_exchange", "crawler.fetching")  # requests; see crawler.engines.OptionalEngineParts

    def fetch(self, urls: Iterable[str], settings: crawler.Settings) -> Iterator[crawler.FetchResult]:
        # Here, not at the top: every crawl and `crawl --list-engines` import this module.
        from crawler import requests_exchange
        from crawler.fetching import InFlight, fetch_plan, run_blocking

        local = threading.local()
        sessions: list = []  # one per thread, to wake them when the crawl stops early
        stopping = threading.Event()  # backoff sleeps wait on it, so a stop cuts them short
        in_flight = InFlight()
        verify = settings.ca_file or True

        def fetch_one(url: str) -> crawler.FetchResult:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = requests_exchange.new_session()
                sessions.append(session)
            return run_blocking(
                fetch_plan(url, settings),
                lambda step: requests_exchange.exchange(session, step, verify),
                sleep=stopping.wait,
                in_flight=in_flight,
            )

        limit = settings.concurrency * 2  # futures in flight: enough to keep every thread busy
        pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="crawl-fetch")
        pending: set = set()
        try:
            for url in urls:
                pending.add(pool.submit(fetch_one, url))
                if len(pending) >= limit:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (future.result() for future in done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
            return {"peak_in_flight": in_flight.peak}
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            if pending:  # stopped early (Ctrl-C, close()): wake the threads still waiting on a server
                stopping.set()
                for session in sessions:
                    requests_exchange.abort(session)


@crawler.hookimpl
def crawler_engines():
    return [ThreadsEngine()]
