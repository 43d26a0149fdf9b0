"""Following links: a small site with cycles, duplicates and other hosts, crawled to depth 2."""

from __future__ import annotations

import pytest
from aiohttp import web
from conftest import LocalServer, run_records

from crawler.frontier import normalize


def site_with(links: dict[str, list[str]]) -> LocalServer:
    """Pages whose links are read from ``links`` at request time (so they may name the port)."""

    async def page(request):
        hrefs = links.get(request.path_qs, links.get(request.path))
        if hrefs is None:
            raise web.HTTPNotFound()
        body = "".join(f'<a href="{h}">x</a>' for h in hrefs)
        return web.Response(text=f"<html><title>{request.path}</title><body>{body}</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return LocalServer(app)


@pytest.fixture(scope="module")
def sites():
    other_links, main_links = {}, {}
    other, main = site_with(other_links), site_with(main_links)
    other_links.update({"/elsewhere": ["/further"], "/further": []})
    main_links.update(
        {
            "/": ["/a", "/a#x", "/a/../a", f"HTTP://127.0.0.1:{main.port}/a", "/b", other.url("/elsewhere"), "mailto:x@y.test"],
            "/a": ["/", "/c", "/a"],  # a cycle back to the start, and a self-link
            "/b": ["/c", "/d?q=1", "./b/../d?q=1"],
            "/c": ["/deep"],  # three levels from "/": beyond depth 2
            "/d": [],
            "/deep": [],
        }
    )
    yield main, other
    main.close()
    other.close()


def test_depth_two_same_host_gives_exactly_the_expected_records(engine_name, sites):
    main, other = sites
    records = run_records(engine_name, [main.url("/")], follow_depth=2)
    got = {r["url"]: (r["depth"], r["parent"]) for r in records}
    assert len(records) == len(got) == 5  # "/a" four ways, "/d?q=1" twice, "/" again: each once
    assert got[main.url("/")] == (0, None)
    assert got[main.url("/a")] == (1, main.url("/"))
    assert got[main.url("/b")] == (1, main.url("/"))
    assert got[main.url("/d?q=1")] == (2, main.url("/b"))
    # "/c" is linked from both "/a" and "/b": its parent is whichever was parsed first
    assert got[main.url("/c")][0] == 2 and got[main.url("/c")][1] in (main.url("/a"), main.url("/b"))
    assert all(r["ok"] for r in records)


def test_any_host_follows_other_hosts(engine_name, sites):
    main, other = sites
    records = run_records(engine_name, [main.url("/")], follow_depth=2, same_host=False)
    urls = {r["url"]: r for r in records}
    assert urls[other.url("/elsewhere")]["depth"] == 1
    assert urls[other.url("/further")]["depth"] == 2 and urls[other.url("/further")]["parent"] == other.url("/elsewhere")
    assert len(records) == 7


def test_max_pages_bounds_what_is_queued(engine_name, sites):
    main, _ = sites
    records = run_records(engine_name, [main.url("/"), main.url("/d")], follow_depth=2, max_pages=3)
    assert len(records) == 3  # the two list lines always; one link
    assert sum(r["depth"] == 0 for r in records) == 2


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("HTTP://Example.TEST:80/a/./b/../c#frag", "http://example.test/a/c"),
        ("https://example.test:443", "https://example.test/"),
        ("https://example.test:8443/x?b=2&a=1", "https://example.test:8443/x?b=2&a=1"),
        ("http://example.test/a/..", "http://example.test/"),
        ("ftp://example.test/", None),
    ],
)
def test_normalize(raw, canonical):
    assert normalize(raw) == canonical


def test_report_counts_discovered_queued_and_deduplicated(sites, tmp_path):
    import json
    import subprocess
    import sys

    main, _ = sites
    urls = tmp_path / "urls.txt"
    urls.write_text(main.url("/") + "\n")
    report, out = tmp_path / "r.json", tmp_path / "r.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "crawler", str(urls), "--depth", "2", "-q", "--report", str(report), "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [engine] = json.loads(report.read_text())["engines"]
    assert engine["urls"] == 5 and engine["lines_read"] == 1 and engine["accounting_error"] is None
    links = engine["links"]
    # each page's links arrive distinct (the parse stage merges "/a", "/a#x", "/a/../a"...):
    # "/" and "/a" again on "/a", "/c" again on whichever of "/a" and "/b" came second
    assert links["queued"] == 4 and links["off_host"] == 1 and links["deduplicated"] == 3
    assert links["discovered"] == links["queued"] + links["deduplicated"] + links["off_host"] + links["over_max_pages"]
    assert len(out.read_text().splitlines()) == 5


def test_depth_without_parsing_is_a_usage_error(tmp_path):
    import subprocess
    import sys

    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    result = subprocess.run([sys.executable, "-m", "crawler", str(urls), "--depth", "1", "--no-parse"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
