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

import argparse
import asyncio
import json
import resource
import sys
import time

import aiohttp


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def read_urls(args: argparse.Namespace) -> list[str]:
    if args.base:
        return [f"{args.base.rstrip('/')}/page/{n}" for n in range(args.count)]
    with open(args.urls, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="?", help="file with one URL per line")
    parser.add_argument("--base", help="base URL of the synthetic site (instead of a file)")
    parser.add_argument("--count", type=int, default=1000, help="with --base: URLs /page/0 .. /page/COUNT-1")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    args = parser.parse_args()
    if not args.urls and not args.base:
        parser.error("give URLFILE or --base")
    urls = read_urls(args)

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    pages, errors, nbytes = asyncio.run(crawl(urls, args.concurrency, args.timeout))
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    print(json.dumps({
        "loop": "bare_aiohttp", "concurrency": args.concurrency, "urls": len(urls),
        "pages": pages, "errors": errors, "bytes": nbytes,
        "seconds": round(seconds, 3), "pages_per_s": round(pages / seconds, 1),
        "cpu_s": round(cpu, 3), "cpu_ms_per_page": round(1000 * cpu / max(pages, 1), 3),
    }))
    sys.exit(0 if pages else 1)


if __name__ == "__main__":
    main()
