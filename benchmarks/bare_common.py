"""What the bare reference loops share: URL list, command line, CPU clock, report line.

Used by ``bare_aiohttp.py``, ``bare_h11.py``, ``bare_threads.py``,
``bare_pool.py`` and ``scrapy_bench.py``, each run as a script from this
folder (so ``import bare_common`` finds it on ``sys.path[0]``).  The command
line and the JSON report line are what ``run.py`` relies on: keep them as
they are.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from typing import NoReturn


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (getrusage)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def read_urls(args: argparse.Namespace) -> list[str]:
    """``--base``: /page/0 .. /page/COUNT-1 of it; else the lines of the URL file (blank and # lines skipped)."""
    if args.base:
        return [f"{args.base.rstrip('/')}/page/{n}" for n in range(args.count)]
    with open(args.urls, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]


def arg_parser(description: str, default_concurrency: int = 64, *, concurrency_help: str | None = None,
               timeout_help: str = "seconds per request") -> argparse.ArgumentParser:
    """The options every loop takes: urls / --base / --count / -c / --timeout (add your own after)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("urls", nargs="?", help="file with one URL per line")
    parser.add_argument("--base", help="base URL of the synthetic site (instead of a file)")
    parser.add_argument("--count", type=int, default=1000, help="with --base: URLs /page/0 .. /page/COUNT-1")
    parser.add_argument("-c", "--concurrency", type=int, default=default_concurrency, help=concurrency_help)
    parser.add_argument("--timeout", type=float, default=10.0, help=timeout_help)
    return parser


def urls_from(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[str]]:
    """Parse the command line; exits with a usage error unless a URL file or --base is given."""
    args = parser.parse_args()
    if not args.urls and not args.base:
        parser.error("give URLFILE or --base")
    return args, read_urls(args)


def report(loop: str, args: argparse.Namespace, urls: list[str], pages: int, errors: int, nbytes: int,
           seconds: float, cpu: float, *, lead: dict | None = None, **extra) -> NoReturn:
    """Print the one JSON line and exit: 0 if any page was fetched, else 1.

    ``lead`` keys come right after ``loop``, ``extra`` keys right after ``urls``.
    """
    print(json.dumps({
        "loop": loop, **(lead or {}), "concurrency": args.concurrency, "urls": len(urls), **extra,
        "pages": pages, "errors": errors, "bytes": nbytes,
        "seconds": round(seconds, 3), "pages_per_s": round(pages / seconds, 1),
        "cpu_s": round(cpu, 3), "cpu_ms_per_page": round(1000 * cpu / max(pages, 1), 3),
    }))
    sys.exit(0 if pages else 1)
