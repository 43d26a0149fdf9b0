"""Politeness, measured at the server, for every engine: per-host limits, delays, robots.txt."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web
from conftest import LocalServer, by_url, html_page, run_records


class Watcher:
    """A site that notes when each request starts and how many are in flight, and serves a robots.txt."""

    def __init__(self, robots: tuple[int, str] | None = None):
        self.robots = robots
        self.starts: list[float] = []
        self.in_flight = 0
        self.peak = 0
        self.robots_agents: list[str] = []
        app = web.Application()
        app.router.add_get("/robots.txt", self.robots_txt)
        app.router.add_get("/{tail:.*}", self.page)
        self.server = LocalServer(app)

    async def robots_txt(self, request):
        self.robots_agents.append(request.headers.get("User-Agent", ""))
        if self.robots is None:
            raise web.HTTPNotFound()
        status, text = self.robots
        return web.Response(status=status, text=text)

    async def page(self, request):
        self.starts.append(time.monotonic())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(float(request.query.get("s", "0.05")))
        finally:
            self.in_flight -= 1
        return web.Response(body=html_page(request.path), content_type="text/html")

    def url(self, path: str) -> str:
        return self.server.url(path)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def watcher():
    made = []

    def make(robots=None) -> Watcher:
        made.append(Watcher(robots))
        return made[-1]

    yield make
    for w in made:
        w.close()


def test_per_host_limit_holds_at_the_server(engine_name, watcher):
    site = watcher()
    urls = [site.url(f"/p{i}?s=0.1") for i in range(16)]
    records = run_records(engine_name, urls, concurrency=8, per_host=2)
    assert all(r["ok"] for r in records)
    assert site.peak == 2  # never more, and the limit is used


def test_delay_spaces_request_starts(engine_name, watcher):
    site = watcher()
    urls = [site.url(f"/p{i}?s=0") for i in range(5)]
    records = run_records(engine_name, urls, concurrency=4, delay=0.25)
    assert all(r["ok"] for r in records)
    gaps = [b - a for a, b in zip(site.starts, site.starts[1:])]
    assert len(gaps) == 4 and min(gaps) >= 0.24


def test_robots_disallow_and_user_agent(engine_name, watcher):
    site = watcher((200, "User-agent: *\nDisallow: /private\n"))
    urls = [site.url("/public"), site.url("/private/x"), site.url("/private")]
    records = by_url(run_records(engine_name, urls, user_agent="polite-test/1.0"))
    assert records[site.url("/public")]["ok"]
    for path in ("/private/x", "/private"):
        assert records[site.url(path)]["error"] == "robots" and records[site.url(path)]["status"] is None
    assert site.robots_agents == ["polite-test/1.0"]  # fetched once, with our user agent
    assert len(site.starts) == 1  # the disallowed pages were never requested


def test_robots_crawl_delay_is_honoured(engine_name, watcher):
    site = watcher((200, "User-agent: *\nCrawl-delay: 0.3\n"))
    records = run_records(engine_name, [site.url(f"/p{i}?s=0") for i in range(3)], concurrency=4)
    assert all(r["ok"] for r in records)
    gaps = [b - a for a, b in zip(site.starts, site.starts[1:])]
    assert min(gaps) >= 0.29


@pytest.mark.parametrize("status, allowed", [(404, True), (410, True), (503, False), (500, False)])
def test_robots_4xx_allows_5xx_disallows(engine_name, watcher, status, allowed):
    site = watcher((status, "User-agent: *\nDisallow: /\n"))
    [record] = run_records(engine_name, [site.url("/page")])
    if allowed:
        assert record["ok"]
    else:
        assert record["error"] == "robots" and str(status) in record["detail"]


def test_no_robots_never_asks(engine_name, watcher):
    site = watcher((200, "User-agent: *\nDisallow: /\n"))
    [record] = run_records(engine_name, [site.url("/page")], robots=False)
    assert record["ok"] and site.robots_agents == []


def test_limits_hold_per_host_not_globally(engine_name, watcher):
    one, two = watcher(), watcher()
    urls = [site.url(f"/p{i}?s=0.15") for i in range(6) for site in (one, two)]
    started = time.monotonic()
    records = run_records(engine_name, urls, concurrency=8, per_host=1)
    assert all(r["ok"] for r in records)
    assert one.peak == 1 and two.peak == 1
    assert time.monotonic() - started < 6 * 0.15 * 2 * 0.9  # the two hosts went side by side
