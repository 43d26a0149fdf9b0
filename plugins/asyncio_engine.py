"""``asyncio``: aiohttp on one event loop, ``--concurrency`` worker coroutines.

Coroutines switch only where they await, so thousands of waits cost one
thread; like threads, the client's Python work runs on one core.
The loop runs in a helper thread so that the pipeline's own work (handing
pages to the parse stage, writing records) never stalls the network.
"""

from __future__ import annotations

import asyncio
import queue
import ssl
import threading
from typing import Iterable, Iterator

import aiohttp

import crawler
from crawler.fetching import (
    READ_CHUNK,
    BodyDecoder,
    Exchange,
    FetchError,
    Response,
    describe,
    fetch_plan,
    join_headers,
    run_async,
)

_DONE = object()


class AsyncioEngine:
    name = "asyncio"
    description = "aiohttp ClientSession, asyncio.gather over worker coroutines fed by a queue"

    def fetch(self, urls: Iterable[str], settings: crawler.Settings) -> Iterator[crawler.FetchResult]:
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        handoff = _Handoff(loop, limit=max(settings.concurrency * 2, 64))

        async def main() -> None:
            try:
                await _crawl(urls, settings, handoff, stop)
            finally:
                handoff.results.put(_DONE)

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="crawl-asyncio", daemon=True)
        thread.start()
        try:
            while True:
                item = handoff.results.get()
                if item is _DONE:
                    break
                handoff.took()
                yield item
        finally:
            if thread.is_alive():
                loop.call_soon_threadsafe(stop.set)
                thread.join(timeout=5)
            if not thread.is_alive():
                loop.close()


class _Handoff:
    """Results from the loop thread to the caller's, at most ``limit`` waiting.

    Each counter has one writer (``put``: the loop thread, ``taken``: the
    caller's), so no lock is needed; the loop is woken only when workers
    actually wait for room, not once per result.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int):
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.loop = loop
        self.limit = limit
        self.put = 0
        self.taken = 0
        self.waiting = False
        self.room = asyncio.Event()

    async def give(self, result: crawler.FetchResult) -> None:
        while self.put - self.taken >= self.limit:
            self.room.clear()
            self.waiting = True
            if self.put - self.taken >= self.limit:
                await self.room.wait()
        self.put += 1
        self.results.put(result)

    def took(self) -> None:
        self.taken += 1
        if self.waiting and self.put - self.taken < self.limit:
            self.waiting = False
            self.loop.call_soon_threadsafe(self.room.set)


async def _crawl(urls, settings, handoff: _Handoff, stop: asyncio.Event) -> None:
    ssl_context = ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else True
    connector = aiohttp.TCPConnector(limit=settings.concurrency, limit_per_host=0, ssl=ssl_context, ttl_dns_cache=300)
    url_queue: asyncio.Queue = asyncio.Queue(maxsize=settings.concurrency)
    async with aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # BodyDecoder decodes, so every engine caps bodies alike
        timeout=aiohttp.ClientTimeout(total=None),  # the shared deadline rules instead
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:

        async def exchange(step: Exchange) -> Response:
            got: list[Response] = []  # the status line, once it has arrived
            try:
                async with asyncio.timeout(max(step.remaining(), 0)):
                    return await _exchange(session, step, got)
            except TimeoutError:
                raise FetchError("timeout", "no complete response within the deadline", response=got[0] if got else None) from None

        async def worker() -> None:
            while True:
                url = await url_queue.get()
                if url is _DONE:
                    return
                try:
                    result = await run_async(fetch_plan(url, settings), exchange)
                except Exception as exc:  # a bug must not lose the URL's record
                    result = crawler.FetchResult(url=url, error="other", detail=f"{type(exc).__name__}: {exc}")
                await handoff.give(result)

        async def producer() -> None:
            for url in urls:
                await url_queue.put(url)
            for _ in range(settings.concurrency):
                await url_queue.put(_DONE)

        tasks = [asyncio.ensure_future(producer())] + [asyncio.ensure_future(worker()) for _ in range(settings.concurrency)]
        stopper = asyncio.ensure_future(stop.wait())
        work = asyncio.gather(*tasks)
        await asyncio.wait([work, stopper], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            work.cancel()
        stopper.cancel()
        try:
            await work
        except asyncio.CancelledError:
            pass


async def _exchange(session: aiohttp.ClientSession, step: Exchange, status_line: list[Response]) -> Response:
    try:
        async with session.get(step.url, headers=step.headers, allow_redirects=False) as resp:
            headers = join_headers(resp.raw_headers)
            got = Response(resp.status, headers)
            status_line.append(got)
            try:
                decoder = BodyDecoder(headers.get("content-encoding"), step.max_bytes)
                async for chunk in resp.content.iter_any():
                    decoder.feed(chunk)
                return Response(resp.status, headers, decoder.finish())
            except FetchError as exc:
                exc.response = got
                raise
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
                raise FetchError("protocol", describe(exc), response=got) from None
    except FetchError:
        raise
    except aiohttp.ClientConnectorDNSError as exc:
        raise FetchError("dns", describe(exc)) from None
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ssl.SSLError, ConnectionError) as exc:
        raise FetchError("connect", describe(exc)) from None
    except aiohttp.ClientResponseError as exc:  # malformed status line or headers
        raise FetchError("protocol", describe(exc)) from None
    except aiohttp.InvalidURL as exc:
        raise FetchError("invalid_url", describe(exc)) from None
    except aiohttp.ClientError as exc:
        raise FetchError("other", describe(exc)) from None


@crawler.hookimpl
def crawler_engines():
    return [AsyncioEngine()]
