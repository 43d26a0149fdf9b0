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

import multiprocessing
import time

import requests

from bare_common import arg_parser, cpu_seconds, report, urls_from

_session: requests.Session | None = None
_timeout = 10.0


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
    parser = arg_parser(__doc__.splitlines()[0], 8, concurrency_help="worker processes",
                        timeout_help="seconds per socket operation")
    args, urls = urls_from(parser)

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
    report("bare_pool", args, urls, pages, errors, nbytes, seconds, cpu)


if __name__ == "__main__":
    main()
