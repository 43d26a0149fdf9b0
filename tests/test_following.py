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


# --- --record-links: the page's links in the record (SPEC §6 link_urls) ------------------


def run_with_links(engine_name: str, urls: list[str], **options) -> list[dict]:
    """run_records() with RunOptions(record_links=True)."""
    import crawler
    from conftest import ENGINE_SETTINGS

    from crawler.pipeline import RunOptions, run_engine
    from crawler.plugins import engines as registered_engines
    from crawler.plugins import get_plugin_manager

    engine = registered_engines(get_plugin_manager())[engine_name]
    settings = crawler.Settings(timeout=5.0, concurrency=8, backoff_base=0.05, **ENGINE_SETTINGS.get(engine_name, {}))
    records: list[dict] = []
    run_engine(engine, urls, settings, RunOptions(parse_workers=0, record_links=True, **options), records.append)
    return records


def test_record_links_gives_each_page_its_distinct_links_in_document_order(engine_name, sites):
    main, other = sites
    records = run_with_links(engine_name, [main.url("/"), main.url("/missing")], depth=1)
    got = {r["url"]: r for r in records}
    # "/a" four ways (fragment, dot segments, upper-case scheme) is one link; mailto: is none
    assert got[main.url("/")]["link_urls"] == [main.url("/a"), main.url("/b"), other.url("/elsewhere")]
    assert got[main.url("/")]["links"] == 3
    assert got[main.url("/a")]["link_urls"] == [main.url("/"), main.url("/c"), main.url("/a")]
    assert got[main.url("/missing")]["link_urls"] is None and got[main.url("/missing")]["links"] is None  # not parsed
    assert all(len(r["link_urls"]) == r["links"] for r in records if r["ok"])


def test_record_links_in_every_output_format(sites, tmp_path):
    import json
    import sqlite3
    import subprocess
    import sys

    from crawler.outputs import RECORD_KEYS, read_records

    main, other = sites
    urls = tmp_path / "urls.txt"
    urls.write_text(main.url("/") + "\n")
    expected = [main.url("/a"), main.url("/b"), other.url("/elsewhere")]
    for name in ("r.jsonl", "r.csv", "r.sqlite"):
        out = tmp_path / name
        result = subprocess.run(
            [sys.executable, "-m", "crawler", str(urls), "--record-links", "--out", str(out), "-q", "--parse-workers", "0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        [record] = read_records(str(out))
        assert tuple(record) == RECORD_KEYS + ("link_urls",), name
        value = record["link_urls"]
        assert (value if name.endswith(".jsonl") else json.loads(value)) == expected, name
        # resuming under the other key set is refused before anything is fetched (so no parse workers either)
        again = subprocess.run(
            [sys.executable, "-m", "crawler", str(urls), "--out", str(out), "--resume", "-q", "--parse-workers", "0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if name.endswith(".jsonl"):
            assert again.returncode == 0  # JSON Lines: each line has its own keys
        else:
            assert again.returncode == 2 and "written with --record-links" in again.stderr, again.stderr
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        assert [row[1] for row in db.execute("PRAGMA table_info(records)")][-1] == "link_urls"
    # without the option, the key is absent
    plain = tmp_path / "plain.jsonl"
    subprocess.run([sys.executable, "-m", "crawler", str(urls), "--out", str(plain), "-q", "--parse-workers", "0"], check=True, timeout=60)
    assert "link_urls" not in json.loads(plain.read_text())


def test_readme_edge_list_example_runs(sites, tmp_path):
    """README's snippet that turns --record-links records into an edge list."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    main, other = sites
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    [code] = re.findall(r"```python\n(# edges\.py:.*?)```", readme, re.S)
    (tmp_path / "edges.py").write_text(code)
    urls = tmp_path / "urls.txt"
    urls.write_text(main.url("/") + "\n")
    subprocess.run(
        [sys.executable, "-m", "crawler", str(urls), "--depth", "2", "--record-links", "--out", "crawl.jsonl", "-q", "--parse-workers", "0"],
        check=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    result = subprocess.run([sys.executable, "edges.py", "crawl.jsonl"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    edges = {tuple(line.split("\t")) for line in result.stdout.splitlines()}
    assert (main.url("/"), main.url("/a")) in edges and (main.url("/b"), main.url("/d?q=1")) in edges
    assert (main.url("/"), other.url("/elsewhere")) in edges  # links off the host are edges too
    assert len(edges) == len(result.stdout.splitlines()) == 3 + 3 + 2 + 1 + 0  # from /, /a, /b, /c and /d?q=1
