"""Bare reference loop: multiprocessing.Pool(N) + requests, bodies returned to the parent.

What the ``pool`` engine is measured against: N worker processes (the
platform's default start method), each with one ``requests.Session``
(``trust_env = False``, as in the engine) made by the pool initializer;
``imap_unordered`` one URL per task; every body is pickled back to the
parent, as the engine must do to hand it to the parse stage.  Pool start-up
and shutdown are inside the timed window, and the workers' CPU is counted
(they are joined before the final getrusage).

    python benchmarks/bare_pool.py URLFILE -c 8
    python benchmarks/bare_pool.py --base http://127.0.0.1:8080 --count 5000 -c 8

Prints one JSON line like the other bare loops (see bare_aiohttp.py).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time

import requests

_session: requests.Session | None = None
_timeout = 10.0


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def read_urls(args: argparse.Namespace) -> list[str]:
    if args.base:
        return [f"{args.base.rstrip('/')}/page/{n}" for n in range(args.count)]
    with open(args.urls, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]


def init(timeout: float) -> None:
    global _session, _timeout
    _session = requests.Session()
    _session.trust_env = False
    _timeout = timeout


def fetch(url: str) -> tuple[int, bytes]:
    try:
        response = _session.get(url, timeout=_timeout)
        return response.status_code, response.content
    except requests.RequestException:
        return 0, b""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="?", help="file with one URL per line")
    parser.add_argument("--base", help="base URL of the synthetic site (instead of a file)")
    parser.add_argument("--count", type=int, default=1000, help="with --base: URLs /page/0 .. /page/COUNT-1")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="worker processes")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per socket operation")
    args = parser.parse_args()
    if not args.urls and not args.base:
        parser.error("give URLFILE or --base")
    urls = read_urls(args)

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    pages = errors = nbytes = 0
    pool = multiprocessing.Pool(args.concurrency, initializer=init, initargs=(args.timeout,))
    try:
        for status, body in pool.imap_unordered(fetch, urls):
            if 200 <= status < 300:
                pages, nbytes = pages + 1, nbytes + len(body)
            else:
                errors += 1
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    print(json.dumps({
        "loop": "bare_pool", "concurrency": args.concurrency, "urls": len(urls),
        "pages": pages, "errors": errors, "bytes": nbytes,
        "seconds": round(seconds, 3), "pages_per_s": round(pages / seconds, 1),
        "cpu_s": round(cpu, 3), "cpu_ms_per_page": round(1000 * cpu / max(pages, 1), 3),
    }))
    sys.exit(0 if pages else 1)


if __name__ == "__main__":
    main()
