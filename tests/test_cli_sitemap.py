"""``crawl --sitemap``: a generated sitemap index on loopback feeds the crawl, through every engine (issue 12)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter

import pytest
from aiohttp import web
from conftest import ENGINE_SETTINGS, LocalServer

PAGES = 24  # /page/0 ... /page/23 are in the sitemaps; each links to /page/(i + 100), which is not


def urlset(locs) -> bytes:
    entries = "".join(f"<url><loc>{loc}</loc></url>" for loc in locs)
    return f'<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>'.encode()


def build_site(hits: Counter) -> web.Application:
    async def handle(request):
        hits[request.path] += 1
        b = f"http://{request.host}"
        path = request.path
        if path == "/sitemap_index.xml":
            entries = "".join(f"<sitemap><loc>{b}{p}</loc></sitemap>" for p in ("/maps/a.xml", "/maps/b.xml.gz", "/maps/gone.xml"))
            body = f'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</sitemapindex>'
            return web.Response(body=body.encode(), content_type="application/xml")
        if path == "/maps/a.xml":
            return web.Response(body=urlset(f"{b}/page/{i}" for i in range(0, PAGES, 2)), content_type="application/xml")
        if path == "/maps/b.xml.gz":
            return web.Response(body=gzip.compress(urlset(f"{b}/page/{i}" for i in range(1, PAGES, 2))), content_type="application/gzip")
        if path == "/robots.txt":
            return web.Response(text=f"User-agent: *\nAllow: /\nSitemap: {b}/maps/a.xml\n")
        if path.startswith("/page/"):
            i = int(path.rsplit("/", 1)[1])
            links = f'<a href="/page/{i + 100}">deeper</a> <a href="/page/{(i + 1) % PAGES}">next</a>' if i < 100 else ""
            return web.Response(text=f"<html><title>{i}</title><body>{links}</body></html>", content_type="text/html")
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


@pytest.fixture(scope="module")
def sitemap_site():
    hits: Counter = Counter()
    srv = LocalServer(build_site(hits))
    srv.hits = hits
    yield srv
    srv.close()


def crawl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crawler", *args], capture_output=True, text=True, timeout=timeout)


def engine_args(engine: str) -> list[str]:
    scheduler = ENGINE_SETTINGS.get(engine, {}).get("engine_options", {}).get("scheduler")
    return ["--engine-opt", f"scheduler={scheduler}"] if scheduler else []


def test_a_sitemap_index_feeds_the_crawl_and_a_failed_sitemap_is_one_record(engine_name, sitemap_site, tmp_path):
    out, report = tmp_path / "r.jsonl", tmp_path / "r.json"
    site = sitemap_site
    result = crawl(
        "--sitemap", site.url("/sitemap_index.xml"), "--sitemap", site.url("/robots.txt"), "--sitemap", site.url("/missing.xml"),
        "-e", engine_name, "--depth", "1", "--out", str(out), "--report", str(report), "-q", "-c", "4",
        "--parse-workers", "0", *engine_args(engine_name),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    by_url = {r["url"]: r for r in records}
    assert len(by_url) == len(records), "each URL once"
    pages = {site.url(f"/page/{i}") for i in range(PAGES)}
    deeper = {site.url(f"/page/{i + 100}") for i in range(PAGES)}
    failed = {site.url("/maps/gone.xml"), site.url("/missing.xml")}
    assert set(by_url) == pages | deeper | failed
    assert all(by_url[url]["depth"] == 0 and by_url[url]["ok"] for url in pages)
    assert all(by_url[url]["depth"] == 1 and by_url[url]["ok"] for url in deeper)
    for url in failed:
        assert (by_url[url]["error"], by_url[url]["status"], by_url[url]["depth"]) == ("http_status", 404, 0)
    assert by_url[site.url("/maps/gone.xml")]["parent"] == site.url("/sitemap_index.xml")
    # one stderr line per failed sitemap document, and what the sitemaps gave
    lines = result.stderr.splitlines()
    assert f"crawl: {engine_name}: sitemap {site.url('/maps/gone.xml')}: http_status (HTTP 404)" in lines
    assert f"crawl: {engine_name}: sitemaps: 6 documents read, {PAGES} page URLs, 2 failed" in lines
    [summary] = json.loads(report.read_text())["engines"]
    # a.xml is listed by the index and by robots.txt but read once; its pages come once from it
    assert summary["lines_read"] == PAGES + 2 and summary["urls"] == len(records) and summary["accounting_error"] is None
    assert summary["errors"] == {"http_status": 2}


def test_a_file_and_sitemaps_together_and_resume_skips_what_is_done(sitemap_site, tmp_path):
    site = sitemap_site
    urls, out = tmp_path / "urls.txt", tmp_path / "r.csv"
    urls.write_text(site.url("/page/200") + "\n")  # the file's lines come first
    args = [str(urls), "--sitemap", site.url("/maps/a.xml"), "--sitemap", site.url("/missing.xml"), "--out", str(out),
            "-q", "--parse-workers", "0"]  # fmt: skip
    result = crawl(*args)
    assert result.returncode == 0, result.stderr
    first = out.read_text().splitlines()
    assert len(first) == 1 + 1 + PAGES // 2 + 1  # header, the file's line, a.xml's pages, missing.xml's record
    # the failed sitemap's record comes first (the sitemaps are read before the crawl), then the list in order
    assert [line.split(",")[1] for line in first[1:4]] == [site.url("/missing.xml"), site.url("/page/200"), site.url("/page/0")]
    before = sum(site.hits.values())
    again = crawl(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert out.read_text().splitlines() == first  # nothing new: the failed sitemap already has its record
    assert sum(site.hits.values()) - before == 3  # robots.txt and the two sitemaps read again, no page


def test_no_url_file_and_no_sitemap_is_a_usage_error(tmp_path):
    result = crawl("-q")
    assert result.returncode == 2
    assert "give a URLS_FILE (or --sitemap URL) or --demo" in result.stderr
