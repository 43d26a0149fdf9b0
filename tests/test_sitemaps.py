"""``--sitemap`` input (crawler.sitemaps): sitemaps read through every real engine, on loopback.

The engine tests build one aiohttp site and run :func:`expand_sitemaps` with
``fetch`` = the engine's own ``fetch`` (parsing off), as the CLI does; the
unit tests at the end read documents directly (memory, namespaces, gzip).
"""

from __future__ import annotations

import gzip
import tracemalloc
from collections import Counter

import pytest
from aiohttp import web

import crawler
from crawler.plugins import engines as registered_engines
from crawler.plugins import get_plugin_manager
from crawler.sitemaps import PageURL, SitemapError, SitemapFailure, URLSpool, expand_sitemaps, gunzip, read_document

from conftest import ENGINE_NAMES, ENGINE_SETTINGS, LocalServer

N = 40  # page URLs behind the index: half in a plain urlset, half in a gzipped one
MAX_BYTES = 1024 * 1024
NS = "http://www.sitemaps.org/schemas/sitemap/0.9"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>http://x/&lol9;</loc></url></urlset>
"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE urlset [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<urlset><url><loc>&xxe;</loc></url></urlset>
"""
GZIP_BOMB = gzip.compress(b"\0" * (16 * 1024 * 1024), compresslevel=9)  # ~16 KB, 16 MB inflated


def urlset(locs, ns: str | None = NS) -> bytes:
    xmlns = f' xmlns="{ns}"' if ns else ""
    entries = "".join(f"<url><loc>{loc}</loc><lastmod>2024-01-01</lastmod></url>" for loc in locs)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset{xmlns}>{entries}</urlset>'.encode()


def index(locs, ns: str | None = NS) -> bytes:
    xmlns = f' xmlns="{ns}"' if ns else ""
    entries = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locs)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<sitemapindex{xmlns}>{entries}</sitemapindex>'.encode()


def build_site(hits: Counter) -> web.Application:
    """Every document is made per request from the request's own host, so absolute <loc>s point back here."""

    def base(request) -> str:
        return f"http://{request.host}"

    def docs(request) -> dict[str, tuple[bytes, dict]]:
        b = base(request)
        xml = {"Content-Type": "application/xml"}
        gz = {"Content-Type": "application/gzip"}
        return {
            "/sitemap_index.xml": (index([f"{b}/sitemaps/plain.xml", f"{b}/sitemaps/packed.xml.gz"]), xml),
            "/sitemaps/plain.xml": (urlset(f"{b}/page/p{i}" for i in range(N // 2)), xml),
            "/sitemaps/packed.xml.gz": (gzip.compress(urlset(f"{b}/page/g{i}" for i in range(N // 2))), gz),
            "/robots.txt": (
                f"User-agent: *\nDisallow: /private/\n\nSitemap: {b}/sitemaps/plain.xml\nsitemap: /robots-only.xml # relative\n".encode(),
                {"Content-Type": "text/plain"},
            ),
            "/robots-only.xml": (urlset([f"{b}/page/r1", "not a url", "/relative"], ns=None), xml),
            "/urls.txt": (f"{b}/page/t1\n\n  {b}/page/t2  \r\n".encode(), {"Content-Type": "text/plain"}),
            "/laughs.xml": (BILLION_LAUGHS, xml),
            "/xxe.xml": (EXTERNAL_ENTITY, xml),
            "/bomb.xml.gz": (GZIP_BOMB, gz),
            "/bomb-encoded.xml": (GZIP_BOMB, {"Content-Type": "application/xml", "Content-Encoding": "gzip"}),
            "/encoded.xml.gz": (gzip.compress(urlset([f"{b}/page/e1"])), {"Content-Type": "application/xml", "Content-Encoding": "gzip"}),
            "/fake.xml.gz": (b"this is not gzip, nor xml", gz),
            "/html.xml": (b"<!doctype html><html><body>hello</body></html>", {"Content-Type": "text/html"}),
            "/notes.xml": (b"<html><body>hello</body></html>", {"Content-Type": "text/html"}),
            "/broken.xml": (urlset([f"{b}/page/k1", f"{b}/page/k2"])[:-20], xml),
            "/loop/a.xml": (index([f"{b}/loop/b.xml"]), xml),
            "/loop/b.xml": (index([f"{b}/loop/a.xml", f"{b}/loop/c.xml", f"{b}/loop/b.xml"]), xml),
            "/loop/c.xml": (urlset([f"{b}/page/c1"]), xml),
            "/many.xml": (index([f"{b}/many/{i}.xml" for i in range(10)]), xml),
            **{f"/many/{i}.xml": (urlset([f"{b}/page/m{i}"]), xml) for i in range(10)},
            **{f"/deep/{i}.xml": (index([f"{b}/deep/{i + 1}.xml"]), xml) for i in range(10)},
        }

    async def handle(request):
        hits[request.path] += 1
        found = docs(request).get(request.path)
        if found is None:
            raise web.HTTPNotFound()
        body, headers = found
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


@pytest.fixture(scope="module")
def site():
    hits: Counter = Counter()
    srv = LocalServer(build_site(hits))
    srv.hits = hits
    yield srv
    srv.close()


def engine_fetch(engine_name: str, want_bodies: bool = True, **overrides):
    """The pipeline's ``fetch``: the registered engine, parsing off, bodies asked for, the test suite's short timeouts."""
    engine = registered_engines(get_plugin_manager())[engine_name]
    extra = ENGINE_SETTINGS.get(engine_name, {})
    settings = crawler.Settings(
        **{"timeout": 5.0, "concurrency": 8, "backoff_base": 0.05, "max_bytes": MAX_BYTES, **extra, **overrides}
    ).with_run(parse=False, want_links=False, want_bodies=want_bodies)
    return lambda urls: engine.fetch(urls, settings)


def expand(engine_name: str, sources, want_bodies: bool = True, **limits):
    events = list(expand_sitemaps(sources, engine_fetch(engine_name, want_bodies), max_bytes=MAX_BYTES, **limits))
    pages = [event.url for event in events if isinstance(event, PageURL)]
    failures = {event.result.url: event for event in events if isinstance(event, SitemapFailure)}
    assert len(failures) == len(events) - len(pages), "one failure per sitemap URL"
    return pages, failures


@pytest.fixture
def bodies_engine(engine_name):
    """The engine's name: every engine hands bodies back when asked (``Settings.run.want_bodies``; dask keeps them otherwise)."""
    return engine_name


def test_index_of_plain_and_gzipped_urlsets_robots_and_text(site, bodies_engine):
    before = site.hits.copy()
    sources = [site.url("/sitemap_index.xml"), site.url("/robots.txt"), site.url("/urls.txt"), site.url("/encoded.xml.gz")]
    pages, failures = expand(bodies_engine, sources)
    assert failures == {}
    b = site.base
    # each document's URLs in document order; documents in whatever order the engine finished them
    assert sorted(pages) == sorted(
        [f"{b}/page/p{i}" for i in range(N // 2)]
        + [f"{b}/page/g{i}" for i in range(N // 2)]
        + [f"{b}/page/r1", "not a url", "/relative", f"{b}/page/t1", f"{b}/page/t2", f"{b}/page/e1"]
    )
    plain = [url for url in pages if "/page/p" in url]
    assert plain == [f"{b}/page/p{i}" for i in range(N // 2)]
    packed = [url for url in pages if "/page/g" in url]
    assert packed == [f"{b}/page/g{i}" for i in range(N // 2)]
    # plain.xml is listed by both the index and robots.txt: fetched once
    fetched = site.hits - before
    assert fetched["/sitemaps/plain.xml"] == 1
    assert fetched["/sitemaps/packed.xml.gz"] == 1
    assert fetched["/robots-only.xml"] == 1


def test_hostile_and_broken_sitemaps_end_as_one_failure_each(site, bodies_engine):
    tracemalloc.start()
    try:
        sources = ["/laughs.xml", "/xxe.xml", "/missing.xml", "/bomb.xml.gz", "/bomb-encoded.xml", "/fake.xml.gz",
                   "/html.xml", "/notes.xml", "/broken.xml"]  # fmt: skip
        pages, failures = expand(bodies_engine, [site.url(path) for path in sources])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # measured 1-4 MB; unbounded, the gzip bomb alone inflates to 16 MB and the entities to 3 GB
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MB"
    verdict = {url.removeprefix(site.base): (f.result.error, f.result.status, f.result.detail) for url, f in failures.items()}
    assert set(verdict) == set(sources)
    assert verdict["/laughs.xml"][:2] == ("parse", 200) and "DTDForbidden" in verdict["/laughs.xml"][2]
    assert verdict["/xxe.xml"][:2] == ("parse", 200) and "DTDForbidden" in verdict["/xxe.xml"][2]
    assert verdict["/missing.xml"][:2] == ("http_status", 404)
    assert verdict["/bomb.xml.gz"][:2] == ("too_large", 200) and verdict["/bomb.xml.gz"][2].startswith("sitemap: gzip larger")
    assert verdict["/bomb-encoded.xml"][0] == "too_large"  # the engine's own Content-Encoding limit
    assert verdict["/fake.xml.gz"][:2] == ("parse", 200) and "named .gz but not gzip" in verdict["/fake.xml.gz"][2]
    assert verdict["/html.xml"][0] == "parse" and "sitemap: " in verdict["/html.xml"][2]
    assert verdict["/notes.xml"][0] == "parse" and "<html>" in verdict["/notes.xml"][2]
    assert verdict["/broken.xml"][0] == "parse" and "bad XML" in verdict["/broken.xml"][2]
    assert all(detail.startswith("sitemap: ") for error, _, detail in verdict.values() if error == "parse")
    # a document that breaks off keeps the URLs read before the break
    assert pages == [site.url("/page/k1"), site.url("/page/k2")]


def test_loops_limits_and_depth(site, bodies_engine):
    before = site.hits.copy()
    pages, failures = expand(bodies_engine, [site.url("/loop/a.xml"), site.url("/loop/a.xml")])
    assert pages == [site.url("/page/c1")] and failures == {}
    fetched = site.hits - before
    assert {path: fetched[path] for path in ("/loop/a.xml", "/loop/b.xml", "/loop/c.xml")} == {
        "/loop/a.xml": 1, "/loop/b.xml": 1, "/loop/c.xml": 1,
    }  # fmt: skip

    # 4 documents in all: the index and 3 of its 10 urlsets; the 7 others are failures, not silence
    before = site.hits.copy()
    pages, failures = expand(bodies_engine, [site.url("/many.xml")], max_sitemaps=4)
    assert len(pages) == 3 and len(failures) == 7
    assert sum(count for path, count in (site.hits - before).items() if path.startswith("/many")) == 4
    for failure in failures.values():
        assert failure.result.error == "other" and failure.result.status is None
        assert failure.result.detail == "sitemap: not fetched: the limit of 4 sitemap documents is reached"
        assert failure.parent == site.url("/many.xml") and failure.depth == 1

    # an endless chain of indexes: levels 0, 1 and 2 fetched, level 3 refused
    before = site.hits.copy()
    pages, failures = expand(bodies_engine, [site.url("/deep/0.xml")], max_depth=2)
    assert pages == [] and list(failures) == [site.url("/deep/3.xml")]
    assert failures[site.url("/deep/3.xml")].result.detail == "sitemap: not fetched: more than 2 levels of sitemap indexes"
    assert sorted(path for path in site.hits - before if path.startswith("/deep")) == ["/deep/0.xml", "/deep/1.xml", "/deep/2.xml"]


@pytest.mark.skipif("dask" not in ENGINE_NAMES, reason="the dask engine is not registered")
def test_an_engine_that_sends_no_body_back_fails_each_sitemap_clearly(site, dask_settings):
    ENGINE_SETTINGS["dask"] = dask_settings
    pages, failures = expand("dask", [site.url("/sitemaps/plain.xml")], want_bodies=False)  # not asked: dask keeps them
    assert pages == []
    [failure] = failures.values()
    assert failure.result.error == "other" and "handed back no body" in failure.result.detail


# --- documents read directly ----------------------------------------------------------


def doc(body: bytes, url: str = "http://example.test/sitemap.xml") -> crawler.FetchResult:
    return crawler.FetchResult(url=url, status=200, body=body, final_url=url)


def read(body: bytes, url: str = "http://example.test/sitemap.xml", max_bytes: int = MAX_BYTES):
    return list(read_document(doc(body, url), max_bytes))


def test_namespaces_prefixes_and_other_locs():
    body = b"""<?xml version="1.0" encoding="UTF-8"?>
<sm:urlset xmlns:sm="http://www.sitemaps.org/schemas/sitemap/0.9" xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">
  <sm:url><sm:loc>  http://a.test/1
  </sm:loc><image:image><image:loc>http://a.test/img.png</image:loc></image:image></sm:url>
  <sm:url><sm:loc></sm:loc></sm:url>
  <sm:url><sm:loc>http://a.test/2?x=1&amp;y=2</sm:loc></sm:url>
  <sm:sitemap><sm:loc>http://a.test/not-in-a-urlset.xml</sm:loc></sm:sitemap>
</sm:urlset>"""
    assert read(body) == [("page", "http://a.test/1"), ("page", "http://a.test/2?x=1&y=2")]
    assert read(index(["http://a.test/s.xml"], ns=None)) == [("sitemap", "http://a.test/s.xml")]
    assert read(b"\xef\xbb\xbf \n" + urlset(["http://a.test/bom"])) == [("page", "http://a.test/bom")]
    assert read(urlset(["http://a.test/utf16"]).replace(b"UTF-8", b"UTF-16").decode().encode("utf-16")) == [
        ("page", "http://a.test/utf16")
    ]


def test_documents_that_are_not_sitemaps():
    for body, words in [
        (b"", "empty document"),
        (b"just some words", "neither XML"),
        (b"<urlset><url><loc>http://a.test/1</loc>", "bad XML"),
        (b'<?xml version="1.0"?><rss><channel/></rss>', "root element <rss>"),
        (BILLION_LAUGHS, "DTDForbidden"),
        (b"\x1f\x8b\x07\x00" + b"\x00" * 20, "bad gzip"),
        (gzip.compress(urlset(["http://a.test/1"]))[:-12], "truncated gzip"),
    ]:
        with pytest.raises(SitemapError, match=words) as caught:
            read(body)
        assert caught.value.code == "parse" and caught.value.detail.startswith("sitemap: ")
    with pytest.raises(SitemapError, match="no Sitemap: lines"):
        read(b"User-agent: *\nDisallow:\n", "http://a.test/robots.txt")


def test_gzip_members_and_bound():
    body = urlset([f"http://a.test/{i}" for i in range(100)])
    assert gunzip(gzip.compress(body[:500]) + gzip.compress(body[500:]), len(body)) == body
    with pytest.raises(SitemapError) as caught:
        gunzip(gzip.compress(body), len(body) - 1)
    assert caught.value.code == "too_large"
    tracemalloc.start()
    try:
        with pytest.raises(SitemapError):
            gunzip(GZIP_BOMB, MAX_BYTES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_BYTES


def test_a_50000_url_sitemap_is_read_streaming():
    body = urlset(f"https://www.example.test/articles/{i:06d}/some-long-slug-for-the-article" for i in range(50_000))
    entries = read_document(doc(body), 64 * 2**20)
    tracemalloc.start()
    try:
        count = 0
        for kind, url in entries:
            count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 50_000
    assert peak < 2 * 2**20, f"peak {peak / 2**20:.1f} MB for a {len(body) / 2**20:.1f} MB sitemap"  # no tree, no list


def test_url_spool_reads_back_every_url_lazily_and_repeatedly(tmp_path):
    urls = [f"http://a.test/{i}" for i in range(5000)] + ["http://a.test/with\nnewline", "  spaced  ", "ünïcode"]
    with URLSpool(str(tmp_path)) as spool:
        for url in urls:
            spool.add(url)
        assert spool.count == len(urls)
        assert list(spool) == urls
        assert list(spool) == urls


def test_robots_by_path_or_by_its_sitemap_lines():
    robots = b"User-agent: *\nDisallow: /x\nSitemap: http://a.test/one.xml\n  SITEMAP : two.xml.gz  # relative\n"
    expected = [("sitemap", "http://a.test/one.xml"), ("sitemap", "http://a.test/dir/two.xml.gz")]
    assert read(robots, "http://a.test/dir/robots.txt") == expected
    assert read(robots, "http://a.test/dir/sitemaps-here") == expected
    assert read(b"http://a.test/1\n\nhttp://a.test/2\r\n", "http://a.test/list.txt") == [
        ("page", "http://a.test/1"), ("page", "http://a.test/2"),
    ]  # fmt: skip


def test_closing_early_closes_the_engine_run_and_counts_are_returned():
    closed = []

    def fetch(urls):
        try:
            for url in urls:
                yield doc(urlset([f"{url}/page{i}" for i in range(3)]), url)
        finally:
            closed.append(list(urls))

    events = expand_sitemaps(["http://a.test/s1.xml", "http://a.test/s2.xml"], fetch, max_bytes=MAX_BYTES)
    assert next(events) == PageURL("http://a.test/s1.xml/page0", "http://a.test/s1.xml")
    events.close()
    assert closed == [["http://a.test/s1.xml", "http://a.test/s2.xml"]]

    events = expand_sitemaps(["http://a.test/s1.xml", " http://a.test/s1.xml ", "http://a.test/404"], lambda urls: (
        doc(urlset(["http://a.test/p"]), url) if "404" not in url else crawler.FetchResult(url, status=404) for url in urls
    ), max_bytes=MAX_BYTES)  # fmt: skip
    with pytest.raises(StopIteration) as stop:
        while True:
            event = next(events)
            if isinstance(event, SitemapFailure):
                assert event.result.error == "http_status" and event.result.detail == "HTTP 404"
    assert stop.value.value == {"sitemaps": 2, "pages": 1, "failures": 1}
