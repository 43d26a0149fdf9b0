"""The ``asyncio`` engine's work, imported when a run starts (not by ``crawl --list-engines``): aiohttp on one event loop."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Iterable, Iterator

import aiohttp

import crawler
from crawler.fetching import (
    MAX_HEADER_SECTION,
    BodyDecoder,
    Exchange,
    FetchError,
    InFlight,
    Response,
    check_head,
    describe,
    fetch_plan,
    join_headers,
    run_async,
)

_DONE = object()


def fetch(urls: Iterable[str], settings: crawler.Settings) -> Iterator[crawler.FetchResult]:
    """What :meth:`AsyncioEngine.fetch` does: the loop runs in the caller's thread while it waits for results."""
    loop = asyncio.new_event_loop()
    ready: deque = deque()
    arrived = asyncio.Event()
    in_flight = InFlight()

    async def give(result: crawler.FetchResult) -> None:
        ready.append(result)
        arrived.set()

    crawl = loop.create_task(_crawl(urls, settings, give, in_flight))
    crawl.add_done_callback(lambda _: arrived.set())
    try:
        while True:
            if not ready:
                if crawl.done():
                    crawl.result()  # an engine bug surfaces here, not as lost records
                    return {"peak_in_flight": in_flight.peak}
                arrived.clear()
                # The loop runs while the caller waits for results: at most one
                # pass of every worker's results piles up, so memory stays bounded.
                loop.run_until_complete(arrived.wait())
            while ready:
                yield ready.popleft()
    finally:
        if not crawl.done():
            crawl.cancel()
            try:
                loop.run_until_complete(crawl)
            except BaseException:
                pass  # cancelled, as asked
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _crawl(urls, settings, give, in_flight: InFlight) -> None:
    ssl_context = ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else True
    connector = aiohttp.TCPConnector(limit=settings.concurrency, limit_per_host=0, ssl=ssl_context, ttl_dns_cache=300)
    url_queue: asyncio.Queue = asyncio.Queue(maxsize=settings.concurrency)
    async with aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # BodyDecoder decodes, so every engine caps bodies alike
        timeout=aiohttp.ClientTimeout(total=None),  # the shared deadline rules instead
        cookie_jar=aiohttp.DummyCookieJar(),
        # aiohttp's own header limits are lower than SPEC's in places (8190
        # bytes per field, 128 fields): set them out of the way, check_head decides.
        max_line_size=MAX_HEADER_SECTION,
        max_field_size=MAX_HEADER_SECTION,
        max_headers=MAX_HEADER_SECTION // 4,
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
                    result = await run_async(fetch_plan(url, settings), exchange, in_flight)
                except Exception as exc:  # a bug must not lose the URL's record
                    result = crawler.FetchResult(url=url, error="other", detail=f"{type(exc).__name__}: {exc}")
                await give(result)

        async def producer() -> None:
            for url in urls:
                await url_queue.put(url)
            for _ in range(settings.concurrency):
                await url_queue.put(_DONE)

        await asyncio.gather(producer(), *(worker() for _ in range(settings.concurrency)))


async def _exchange(session: aiohttp.ClientSession, step: Exchange, status_line: list[Response]) -> Response:
    try:
        async with session.get(step.url, headers=step.headers, allow_redirects=False) as resp:
            check_head(resp.raw_headers)
            headers = join_headers(resp.raw_headers)
            got = Response(resp.status, headers, first_byte_s=step.since_start())
            status_line.append(got)
            try:
                decoder = BodyDecoder(headers.get("content-encoding"), step.max_bytes, step.deadline)
                async for chunk in resp.content.iter_any():
                    decoder.feed(chunk)
                return Response(resp.status, headers, decoder.finish(), got.first_byte_s)
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
