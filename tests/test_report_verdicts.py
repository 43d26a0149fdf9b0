"""The verdict on real runs built to be limited by one thing each (the rules: crawler/verdict.py)."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiohttp import web
from conftest import LocalServer, html_page

import crawler
from crawler.pipeline import RunOptions, run_engine
from crawler.plugins import engines as registered_engines
from crawler.plugins import get_plugin_manager
from crawler.verdict import judge

ENGINE = "asyncio"  # any engine would do: the rules read figures every engine gives


@pytest.fixture(scope="module")
def site():
    async def slow(request):  # 0.2 s before the status line: the server's time
        await asyncio.sleep(0.2)
        return web.Response(body=html_page("slow"), content_type="text/html")

    async def trickle(request):  # the status line at once, then the body over 0.2 s
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        await response.prepare(request)
        for _ in range(4):
            await response.write(b"<p>" + b"x" * 1000 + b"</p>")
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    async def fast(request):
        return web.Response(body=html_page("fast"), content_type="text/html")

    app = web.Application()
    app.router.add_get("/slow/{n}", slow)
    app.router.add_get("/trickle/{n}", trickle)
    app.router.add_get("/fast/{n}", fast)
    server = LocalServer(app)
    yield server
    server.close()


def verdict_of(urls, **settings) -> str:
    engine = registered_engines(get_plugin_manager())[ENGINE]
    settings.setdefault("robots", False)
    settings.setdefault("timeout", 5.0)
    stats = run_engine(engine, urls, crawler.Settings(**settings), RunOptions(parse=False), lambda record: None)
    return judge(stats.summary(), os.cpu_count() or 1)


def test_too_short_to_judge(site):
    assert verdict_of([site.url("/fast/1")]).startswith("too short to judge: 1 ok page in")


def test_every_fetch_failed_names_the_codes(refused_port):
    line = verdict_of([f"http://127.0.0.1:{refused_port}/{i}" for i in range(5)], retries=0)
    assert line == "every fetch failed: 5 × connect"


def test_a_slow_server_is_server_bound(site):
    line = verdict_of([site.url(f"/slow/{i}") for i in range(60)], concurrency=4)
    assert line.startswith("server-bound: fetches waited"), line


def test_slow_bodies_are_latency_bound(site):
    line = verdict_of([site.url(f"/trickle/{i}") for i in range(60)], concurrency=4)
    assert line.startswith("latency-bound: "), line
