"""Bare reference loop: ThreadPoolExecutor + requests, one Session per thread.

What the ``threads`` engine is measured against.  Each session has
``trust_env = False``, as the engine's do: with it on, requests looks up
proxy settings and .netrc for every request (``--trust-env`` shows that
cost: about 840 instead of 1,190 pages/s in the issue's measurements).

    python benchmarks/bare_threads.py URLFILE -c 64
    python benchmarks/bare_threads.py --base http://127.0.0.1:8080 --count 5000 -c 64

Prints one JSON line like the other bare loops (see bare_aiohttp.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def read_urls(args: argparse.Namespace) -> list[str]:
    if args.base:
        return [f"{args.base.rstrip('/')}/page/{n}" for n in range(args.count)]
    with open(args.urls, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="?", help="file with one URL per line")
    parser.add_argument("--base", help="base URL of the synthetic site (instead of a file)")
    parser.add_argument("--count", type=int, default=1000, help="with --base: URLs /page/0 .. /page/COUNT-1")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per socket operation")
    parser.add_argument("--trust-env", action="store_true", help="leave Session.trust_env on (requests' default)")
    args = parser.parse_args()
    if not args.urls and not args.base:
        parser.error("give URLFILE or --base")
    urls = read_urls(args)
    local = threading.local()

    def fetch(url: str) -> tuple[int, int]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.trust_env = args.trust_env
        try:
            response = session.get(url, timeout=args.timeout)
            return response.status_code, len(response.content)
        except requests.RequestException:
            return 0, 0

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    pages = errors = nbytes = 0
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for status, size in pool.map(fetch, urls):
            if 200 <= status < 300:
                pages, nbytes = pages + 1, nbytes + size
            else:
                errors += 1
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    print(json.dumps({
        "loop": "bare_threads", "concurrency": args.concurrency, "urls": len(urls), "trust_env": args.trust_env,
        "pages": pages, "errors": errors, "bytes": nbytes,
        "seconds": round(seconds, 3), "pages_per_s": round(pages / seconds, 1),
        "cpu_s": round(cpu, 3), "cpu_ms_per_page": round(1000 * cpu / max(pages, 1), 3),
    }))
    sys.exit(0 if pages else 1)


if __name__ == "__main__":
    main()
