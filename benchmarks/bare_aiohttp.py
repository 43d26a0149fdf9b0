"""Bare reference loop: asyncio + aiohttp, N worker coroutines under gather, fed by a queue.

What the ``asyncio`` engine is measured against: the same client library with
none of the crawler around it (no retries, deadlines, body cap, records).

    python benchmarks/bare_aiohttp.py URLFILE -c 64
    python benchmarks/bare_aiohttp.py --base http://127.0.0.1:8080 --count 5000 -c 64

Prints one JSON line: pages (2xx responses read in full), errors, bytes,
seconds, pages_per_s, cpu_s (user+sys of this process and its reaped
children, from getrusage) and cpu_ms_per_page.  Only the fetch loop is timed,
not the interpreter start-up or imports.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bare_common import arg_parser, cpu_seconds, report, urls_from


async def crawl(urls: list[str], concurrency: int, timeout: float) -> tuple[int, int, int]:
    queue: asyncio.Queue = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    counts = [0, 0, 0]  # pages, errors, bytes
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:

        async def worker() -> None:
            while not queue.empty():
                url = queue.get_nowait()
                try:
                    async with session.get(url) as response:
                        body = await response.read()
                        if 200 <= response.status < 300:
                            counts[0] += 1
                            counts[2] += len(body)
                        else:
                            counts[1] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    counts[1] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts[0], counts[1], counts[2]


def main() -> None:
    args, urls = urls_from(arg_parser(__doc__.splitlines()[0]))

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    pages, errors, nbytes = asyncio.run(crawl(urls, args.concurrency, args.timeout))
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    report("bare_aiohttp", args, urls, pages, errors, nbytes, seconds, cpu)


if __name__ == "__main__":
    main()
