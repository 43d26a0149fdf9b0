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

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from bare_common import arg_parser, cpu_seconds, report, urls_from


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], timeout_help="seconds per socket operation")
    parser.add_argument("--trust-env", action="store_true", help="leave Session.trust_env on (requests' default)")
    args, urls = urls_from(parser)
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
    report("bare_threads", args, urls, pages, errors, nbytes, seconds, cpu, trust_env=args.trust_env)


if __name__ == "__main__":
    main()
