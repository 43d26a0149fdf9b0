"""A deterministic synthetic website, served on loopback.

The engines are compared on the same pages, and nothing real is crawled
for it.  It is used three ways:

* ``crawl --demo`` starts it (:func:`serve_in_subprocess`) and crawls all of
  its pages with several engines to compare them;
* the benchmarks do the same with their own page counts, sizes and delays;
* ``python -m crawler.site`` runs it alone, so that other tools (wrk, Scrapy,
  ...) can be measured on the very same pages.

Modules: :mod:`.pages` generates the pages (:class:`SyntheticSite`),
:mod:`.server` serves them with aiohttp (:func:`make_app`, :func:`serve`),
:mod:`.process` runs the server in a child process
(:func:`serve_in_subprocess`) and :mod:`.__main__` is the command line.
"""

from __future__ import annotations

from .pages import SyntheticSite
from .process import SiteProcess, demo_port_to_resume, serve_in_subprocess
from .server import make_app, serve

__all__ = [
    "SyntheticSite",
    "SiteProcess",
    "make_app",
    "serve",
    "serve_in_subprocess",
    "demo_port_to_resume",
    "main",
]


def __getattr__(name: str):
    # Loaded on first use: importing crawler.site.__main__ here would make
    # `python -m crawler.site` warn that the module it runs was already imported.
    if name == "main":
        from .__main__ import main

        return main
    raise AttributeError(f"module 'crawler.site' has no attribute {name!r}")
