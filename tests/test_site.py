"""The synthetic site: deterministic pages of a realistic shape, served on loopback."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from crawler.site import SiteProcess, SyntheticSite, serve_in_subprocess

ROOT = Path(__file__).resolve().parent.parent
KB = 1024

# Loopback only, whatever *_proxy variables the environment has.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with _opener.open(url, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


class _Shape(HTMLParser):
    """Collects what the tests check: tag nesting, title, hrefs, tag counts."""

    VOID = {"meta", "link", "br", "hr", "img", "input", "source", "area", "base", "col", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.counts: dict[str, int] = {}
        self.hrefs: list[str] = []
        self.title = ""
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag == "a":
            if "a" in self.stack:
                self.errors.append("nested <a>")
            self.hrefs.extend(v for k, v in attrs if k == "href")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "title":
            self.title += data


def shape(page: bytes) -> _Shape:
    p = _Shape()
    p.feed(page.decode("utf-8"))
    p.close()
    return p


@pytest.fixture(scope="module")
def site200() -> SyntheticSite:
    site = SyntheticSite(pages=200, seed=0)
    site.generate_all()
    return site


# -- pages -------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_different():
    a, b = SyntheticSite(pages=50, seed=1), SyntheticSite(pages=50, seed=1)
    for n in (0, 7, 49):
        assert a.page(n) == b.page(n)
    c = SyntheticSite(pages=50, seed=2)
    assert all(a.page(n) != c.page(n) for n in (0, 7, 49))
    assert len({a.page(n) for n in range(10)}) == 10  # pages differ from one another
    assert a.page(7) is a.page(7)  # cached


def test_same_bytes_in_another_process():
    """Nothing depends on hash() randomisation or on process state."""
    code = (
        "import hashlib; from crawler.site import SyntheticSite; "
        "print(hashlib.sha256(SyntheticSite(pages=50, seed=1).page(7)).hexdigest())"
    )
    env = _env()
    env["PYTHONHASHSEED"] = "12345"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(SyntheticSite(pages=50, seed=1).page(7)).hexdigest()


def test_sizes_within_bounds_and_mean_near_mean_kb(site200):
    sizes = [len(site200.page(n)) for n in range(200)]
    assert min(sizes) >= 5 * KB and max(sizes) <= 80 * KB
    assert abs(statistics.mean(sizes) / KB - 30) <= 0.2 * 30
    assert statistics.pstdev(sizes) > 5 * KB  # a spread, not one size


def test_mean_kb_is_honoured():
    site = SyntheticSite(pages=150, seed=4, mean_kb=12)
    sizes = [len(site.page(n)) for n in range(150)]
    assert abs(statistics.mean(sizes) / KB - 12) <= 0.2 * 12
    assert max(sizes) <= 12 * 8 / 3 * KB


def test_links_per_page_and_their_targets(site200):
    counts, ratios = [], []
    for n in range(200):
        page = site200.page(n)
        s = shape(page)
        assert len(s.hrefs) == page.count(b"<a href")
        counts.append(len(s.hrefs))
        for href in s.hrefs:
            assert href == "/" or href.startswith(("/page/", "#", "mailto:")), href
            m = re.fullmatch(r"/page/(\d+)(#[\w-]+)?", href)
            if href.startswith("/page/"):
                assert m and int(m.group(1)) < 200, href
        site_links = sum(h.startswith("/page/") for h in s.hrefs)
        assert site_links >= 0.6 * len(s.hrefs)  # mostly to other pages of the site
        ratios.append(site_links / len(s.hrefs))
        assert f"/page/{(n + 1) % 200}" in s.hrefs  # every page reachable
    assert min(counts) >= 20 and max(counts) <= 60
    assert max(counts) - min(counts) >= 20  # varies between pages
    assert statistics.mean(ratios) >= 0.8
    assert b"http://" not in b"".join(site200.page(n) for n in range(200))  # nothing absolute


def test_valid_ish_html_with_title(site200):
    for n in (0, 1, 99, 199):
        page = site200.page(n)
        assert page.startswith(b"<!doctype html>\n<html lang=\"en\">")
        assert b'<meta charset="utf-8">' in page
        s = shape(page)
        assert s.errors == [] and s.stack == []
        assert s.doctype.lower() == "doctype html"
        assert s.counts["title"] == 1 and f"page {n}" in s.title and len(s.title) > 20
        for tag in ("html", "head", "body", "style", "script", "h1", "nav", "main", "footer"):
            assert s.counts.get(tag) == 1, tag
        assert s.counts.get("h2", 0) >= 1 and s.counts["p"] >= 3


def test_text_looks_like_words(site200):
    text = re.sub(rb"<[^>]+>", b" ", site200.page(3).split(b"<body>")[1]).decode()
    words = re.findall(r"[a-zéïöç']+", text.lower())
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    ranked = sorted(counts.values(), reverse=True)
    assert 100 <= len(counts) <= 600  # a fixed vocabulary of a few hundred words
    assert ranked[0] > 10 * ranked[len(ranked) // 2]  # Zipf-ish: a few very common words


def test_paths_urls_and_range():
    site = SyntheticSite(pages=3)
    assert list(site.paths()) == ["/page/0", "/page/1", "/page/2"]
    assert list(site.urls("http://127.0.0.1:8080")) == [
        "http://127.0.0.1:8080/page/0",
        "http://127.0.0.1:8080/page/1",
        "http://127.0.0.1:8080/page/2",
    ]
    with pytest.raises(IndexError):
        site.page(3)
    with pytest.raises(ValueError):
        SyntheticSite(pages=0)


# -- serving -------------------------------------------------------------------


@pytest.fixture(scope="module")
def served():
    with serve_in_subprocess(pages=20, seed=3, mean_kb=10) as sp:
        yield sp


def test_serves_the_same_bytes(served: SiteProcess):
    assert isinstance(served, SiteProcess)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", served.base_url)
    site = SyntheticSite(pages=20, seed=3, mean_kb=10)
    status, headers, body = fetch(served.base_url + "/page/0")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert body == site.page(0)
    assert fetch(served.base_url + "/page/19")[2] == site.page(19)


def test_page_numbers_wrap(served: SiteProcess):
    site = SyntheticSite(pages=20, seed=3, mean_kb=10)
    assert fetch(served.base_url + "/page/25")[2] == site.page(5)
    assert fetch(served.base_url + "/page/1000000000000000000000")[2] == site.page(0)
    urls = list(served.urls(45))
    assert len(urls) == 45 and urls[-1] == served.base_url + "/page/44"


def test_index_urls_txt_robots_and_404(served: SiteProcess):
    status, _, body = fetch(served.base_url + "/")
    assert status == 200 and b'<a href="/page/0">' in body
    status, headers, body = fetch(served.base_url + "/urls.txt")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert body.decode().splitlines() == list(served.urls())
    assert fetch(served.base_url + "/robots.txt")[0] == 200
    assert fetch(served.base_url + "/page/abc")[0] == 404
    assert fetch(served.base_url + "/nothing")[0] == 404


def test_delay_is_honoured():
    with serve_in_subprocess(pages=3, delay=0.3, mean_kb=8) as sp:
        t = time.perf_counter()
        status, _, _ = fetch(sp.base_url + "/page/1")
        assert status == 200
        assert time.perf_counter() - t >= 0.3


def test_child_is_gone_after_exit_even_on_keyboard_interrupt():
    with serve_in_subprocess(pages=2, mean_kb=8) as sp:
        pid = sp.pid
        assert sp.process.poll() is None
    assert sp.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    with pytest.raises(KeyboardInterrupt):
        with serve_in_subprocess(pages=2, mean_kb=8) as sp:
            pid = sp.pid
            raise KeyboardInterrupt
    assert sp.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_startup_failure_raises_with_stderr():
    # 192.0.2.1 (TEST-NET-1) is no local address: the child cannot bind it.
    with pytest.raises(RuntimeError, match="synthetic site"):
        with serve_in_subprocess(pages=2, mean_kb=8, host="192.0.2.1"):
            pass


def test_cli_prints_header_and_urls_then_exits_cleanly_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "crawler.site", "--pages", "3", "--seed", "5", "--mean-kb", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        text=True,
    )
    try:
        header = proc.stdout.readline()
        m = re.fullmatch(r"# crawler site (http://127\.0\.0\.1:\d+) pages=3 seed=5 delay=0\n", header)
        assert m, header
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        assert lines == [f"{m.group(1)}/page/{n}" for n in range(3)]
        assert fetch(lines[2])[2] == SyntheticSite(pages=3, seed=5, mean_kb=8).page(2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_child_exits_when_its_parent_is_gone_even_while_generating_pages():
    # serve_in_subprocess's child holds a pipe on stdin whose other end only the
    # parent has: a parent killed with SIGKILL closes it.  Closed here while the
    # child is still generating its pages (before its server loop runs).
    proc = subprocess.Popen(
        [sys.executable, "-m", "crawler.site", "--pages", "1000000", "--no-urls", "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
    )  # fmt: skip
    try:
        time.sleep(1.0)  # importing, then generating: a million pages take minutes
        assert proc.poll() is None
        proc.stdin.close()
        proc.wait(timeout=10)  # seconds at most, not the minutes the pages would take
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
