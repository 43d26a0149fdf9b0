"""``yield``: generator coroutines on one thread — no asyncio, no threads.

After the 500lines crawler chapter ("A Web Crawler With asyncio Coroutines"),
in three parts that can be read separately:

1. **The scheduler** (:class:`.loop.Loop`).  A coroutine is a plain generator that
   ``yield``\\ s what it waits for — :class:`Readable`, :class:`Writable` (a
   socket, with a deadline) or :class:`Timer` — and is resumed with ``send()``
   when that happens, or has ``FetchError("timeout")`` thrown in when the
   deadline passes first.  One ``selectors`` selector and one heap of timers.
2. **The HTTP exchange** (:func:`.loop.exchange`).  One GET over a pooled keep-alive
   connection, framed by h11 (sans-IO: it never touches the socket, so the
   same code runs over plain and TLS sockets), read top to bottom: it picks a
   connection, :func:`.loop._attempt` sends and reads the head, :func:`.loop._read_body`
   the body.
3. **Producer and consumers** (:func:`.loop.fetch`).  A producer
   generator hands out URLs; ``--concurrency`` consumer coroutines each drive
   :func:`crawler.fetching.fetch_plan` with ``yield from``.  ``fetch`` runs the
   loop in the caller's thread and yields each result as soon as it is done.

The lesson this engine shows rather than hides: everything shares one
thread, so any call that blocks stops *every* coroutine.  Name resolution is
such a call here (``socket.getaddrinfo`` has no non-blocking form in the
standard library; asyncio hides it in a thread pool, which this engine has
none of).  Each host is resolved once and cached, so the stall happens once per
host — but on a list of many slow-to-resolve hosts it shows in the numbers.
Reading the URL list is another: a slow stdin stalls the crawl the same way.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import crawler


class YieldEngine:
    name = "yield"
    description = "generator coroutines on one thread: selectors, non-blocking sockets and ssl, h11"
    options: dict[str, str] = {}  # reads no --engine-opt key: any is a usage error
    # h11, ssl and the rest, imported before the run's clock; not by listing engines
    imports = (f"{__name__}.loop",)

    def fetch(self, urls: Iterable[str], settings: crawler.Settings) -> Iterator[crawler.FetchResult]:
        from . import loop

        return (yield from loop.fetch(urls, settings))


@crawler.hookimpl
def crawler_engines():
    return [YieldEngine()]
