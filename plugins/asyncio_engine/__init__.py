"""``asyncio``: aiohttp on one event loop, ``--concurrency`` worker coroutines.

Coroutines switch only where they await, so thousands of waits cost one
thread; like threads, the client's Python work runs on one core.  The loop
runs in the caller's thread, whenever the caller waits for results: no
second thread contends for the GIL and no result crosses threads (measured:
a helper-thread loop reached a third of a bare aiohttp loop's pages/s).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import crawler


class AsyncioEngine:
    name = "asyncio"
    description = "aiohttp ClientSession, asyncio.gather over worker coroutines fed by a queue"
    options: dict[str, str] = {}  # reads no --engine-opt key: any is a usage error
    # aiohttp and the rest, imported before the run's clock; not by listing engines
    imports = (f"{__name__}.client",)

    def fetch(self, urls: Iterable[str], settings: crawler.Settings) -> Iterator[crawler.FetchResult]:
        from . import client

        return (yield from client.fetch(urls, settings))


@crawler.hookimpl
def crawler_engines():
    return [AsyncioEngine()]
