"""``python -m crawler.site``: the synthetic site served alone, for other tools.

Other tools (wrk, Scrapy, ...) can then be measured on the very pages the
engines crawl.  It prints a first line
``# crawler site http://127.0.0.1:PORT pages=N seed=S delay=D`` once it
listens, then every page URL, one per line; lines starting with ``#`` are
skipped by the crawler's URL-file reader, so
``python -m crawler.site > urls.txt`` gives a usable URL file.

:func:`crawler.site.serve_in_subprocess` runs it too, with ``--no-urls
--exit-on-stdin-eof`` (hidden from ``--help``): a child that exits as soon as
its parent is gone.
"""

from __future__ import annotations

import argparse
import sys

from .server import serve

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m crawler.site",
        description="Serve a deterministic synthetic website on loopback and print its page URLs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 = a free one (default: %(default)s)")
    parser.add_argument("--pages", type=int, default=1000, help="number of pages (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="content seed (default: %(default)s)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each page response (default: %(default)s)")
    parser.add_argument("--mean-kb", type=float, default=30.0, help="mean page size in KB (default: %(default)s)")
    parser.add_argument("--no-urls", action="store_true", help="print only the first line, not the URL list")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pages < 1:
        parser.error("--pages must be at least 1")
    if args.mean_kb <= 0:
        parser.error("--mean-kb must be positive")
    if args.delay < 0:
        parser.error("--delay must not be negative")
    if args.exit_on_stdin_eof and sys.stdin is not None:
        # From the start, page generation included (the loop watches stdin
        # too, but only once it runs): a parent killed with SIGKILL leaves
        # no server behind.
        from ..processes import exit_on_eof

        exit_on_eof(sys.stdin.fileno(), code=0)
    serve(
        host=args.host,
        port=args.port,
        pages=args.pages,
        seed=args.seed,
        delay=args.delay,
        mean_kb=args.mean_kb,
        print_urls=not args.no_urls,
        exit_on_stdin_eof=args.exit_on_stdin_eof,
    )


if __name__ == "__main__":
    main()
