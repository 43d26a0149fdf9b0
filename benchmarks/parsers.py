"""Why the parse stage uses selectolax and numpy: the measurements.

Runs on the same realistic pages (the synthetic site's, or look-alikes made
here if ``crawler.site`` is unavailable) and prints per-page CPU times for

* title + link count + visible text, written three times, with the stdlib
  ``html.parser``, ``lxml.html`` and ``selectolax`` (lexbor), checked to
  agree with each other (same title, links and ``\\w+`` word list);
* splitting the visible text into words: ``re.findall(r"\\w+")`` versus
  ``crawler.parse``'s translate-and-split tokenizer;
* the simhash of the visible words: the plain per-shingle Python loop of the
  contract versus ``crawler.parse``'s numpy version;
* the whole ``crawler.parse.parse_page``;

and the throughput of ``parse_batch`` through a ``ProcessPoolExecutor(2)``
with one page per task versus batches of 8 and 32 pages.

Usage: ``python benchmarks/parsers.py [--pages N] [--rounds R]`` from the
repository root.  Takes well under a minute with the defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import os
import random
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urldefrag, urljoin, urlsplit

# Run as a script from anywhere: the repository root holds the crawler package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lxml.html  # noqa: E402
import numpy as np  # noqa: E402
from lxml import etree  # noqa: E402
from selectolax.lexbor import LexborHTMLParser  # noqa: E402

from crawler import parse, simhash  # noqa: E402

NON_VISIBLE = ("script", "style", "noscript", "template")
WORD_RE = re.compile(r"\w+")
BASE_URL = "http://127.0.0.1:8000"

Extraction = tuple[str | None, int, str]  # title, distinct links, visible text


# --------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------


def synthetic_site_pages(count: int) -> tuple[list[bytes], str]:
    try:
        from crawler.site import SyntheticSite
    except ImportError as exc:
        return fallback_pages(count), f"generated here (crawler.site unavailable: {exc})"
    site = SyntheticSite(pages=1000, seed=0)
    return [site.page(n) for n in range(count)], "crawler.site.SyntheticSite(pages=1000, seed=0)"


def fallback_pages(count: int, seed: int = 0) -> list[bytes]:
    """Look-alikes of the synthetic site's pages: ~30 KB, 20-60 links."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = [
        "".join(rng.choice(letters) for _ in range(rng.randint(1, 10))) for _ in range(4000)
    ] + ["café", "naïve", "façade"]
    weights = [1 / (i + 2.7) for i in range(len(vocabulary))]

    def sentence() -> str:
        words = rng.choices(vocabulary, weights, k=rng.randint(5, 20))
        return " ".join(words).capitalize() + rng.choice(".?!")

    pages = []
    for n in range(count):
        target = int(min(80_000, max(5_000, rng.lognormvariate(10.1, 0.55))))
        parts = [
            "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>",
            f"<title>{sentence()} \u2014 page {n}</title>",
            "<style>body{margin:0;font-family:serif} p{margin:0 0 1rem} a{color:#2a6f97}</style>",
            "<script>window.dataLayer=[];function track(e){dataLayer.push(e)}</script>",
            "</head><body><header><nav>",
        ]
        for _ in range(rng.randint(20, 60)):
            target_page = rng.randrange(1000)
            fragment = rng.choice(["", "", "", "#top"])
            parts.append(f"<a href='/page/{target_page}{fragment}'>{rng.choice(vocabulary)}</a> ")
        parts.append("<a href='mailto:editor@example.invalid'>Contact</a></nav></header><main>")
        size = sum(map(len, parts))
        while size < target:
            paragraph = "<p>" + " ".join(sentence() for _ in range(rng.randint(2, 8))) + "</p>\n"
            parts.append(paragraph)
            size += len(paragraph)
        parts.append("</main><footer>Generated text.</footer></body></html>")
        pages.append("".join(parts).encode("utf-8"))
    return pages


# --------------------------------------------------------------------------
# The same extraction, three parsers
# --------------------------------------------------------------------------


def resolve_links(page_url: str, base_href: str | None, hrefs: Iterable[str | None]) -> int:
    base = page_url
    if base_href and base_href.strip():
        try:
            base = urljoin(page_url, base_href.strip())
        except ValueError:
            pass
    targets = set()
    for href in {(h or "").strip() for h in hrefs}:
        try:
            absolute = urldefrag(urljoin(base, href)).url
            parts = urlsplit(absolute)
        except ValueError:
            continue
        if parts.scheme in ("http", "https") and parts.netloc:
            targets.add(absolute)
    return len(targets)


def collapse(text: str | None) -> str | None:
    return None if text is None else " ".join(text.split())


class _StdlibExtractor(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self.base_href: str | None = None
        self.hrefs: list[str | None] = []
        self.body_text: list[str] = []
        self.other_text: list[str] = []
        self._title_parts: list[str] | None = None
        self._hidden_depth = 0
        self._in_body = False
        self._seen_body = False

    def handle_starttag(self, tag, attrs):
        if tag in NON_VISIBLE:
            self._hidden_depth += 1
        elif tag == "title" and self.title is None and self._title_parts is None:
            self._title_parts = []
        elif tag == "body":
            self._in_body = self._seen_body = True
        elif tag == "a":
            attributes = dict(attrs)
            if "href" in attributes:
                self.hrefs.append(attributes["href"])
        elif tag == "base" and self.base_href is None:
            self.base_href = dict(attrs).get("href")

    def handle_endtag(self, tag):
        if tag in NON_VISIBLE and self._hidden_depth:
            self._hidden_depth -= 1
        elif tag == "title" and self._title_parts is not None:
            self.title = "".join(self._title_parts)
            self._title_parts = None
        elif tag == "body":
            self._in_body = False

    def handle_data(self, data):
        if self._title_parts is not None:
            self._title_parts.append(data)
        elif not self._hidden_depth:
            (self.body_text if self._in_body else self.other_text).append(data)


def extract_stdlib(url: str, body: bytes) -> Extraction:
    parser = _StdlibExtractor()
    parser.feed(parse.decode_html(body, "text/html"))
    parser.close()
    text = parser.body_text if parser._seen_body else parser.other_text
    return (
        collapse(parser.title),
        resolve_links(url, parser.base_href, parser.hrefs),
        " ".join(text),
    )


def extract_lxml(url: str, body: bytes) -> Extraction:
    document = lxml.html.document_fromstring(parse.decode_html(body, "text/html"))
    title = document.find(".//title")
    base = document.find(".//base[@href]")
    hrefs = [a.get("href") for a in document.iterfind(".//a[@href]")]
    links = resolve_links(url, base.get("href") if base is not None else None, hrefs)
    etree.strip_elements(document, *NON_VISIBLE, with_tail=False)
    scope = document.find("body")
    scope = document if scope is None else scope
    return (
        collapse(title.text_content()) if title is not None else None,
        links,
        " ".join(scope.itertext()),
    )


def extract_selectolax(url: str, body: bytes) -> Extraction:
    tree = LexborHTMLParser(parse.decode_html(body, "text/html"))
    title = tree.css_first("title")
    base = tree.css_first("base[href]")
    hrefs = [a.attributes.get("href") for a in tree.css("a[href]")]
    links = resolve_links(url, base.attributes.get("href") if base is not None else None, hrefs)
    tree.strip_tags(list(NON_VISIBLE))
    scope = tree.body if tree.body is not None else tree.root
    return (
        collapse(title.text()) if title is not None else None,
        links,
        scope.text(separator=" "),
    )


EXTRACTORS: dict[str, Callable[[str, bytes], Extraction]] = {
    "html.parser (stdlib)": extract_stdlib,
    "lxml.html": extract_lxml,
    "selectolax (lexbor)": extract_selectolax,
}


def _feed_stdlib(text: str) -> None:
    parser = html.parser.HTMLParser(convert_charrefs=True)
    parser.feed(text)
    parser.close()


# Building the tree (or, for html.parser, one tokenising pass with no-op
# handlers) from the decoded text: the parser's own share of the extraction.
TREE_BUILDERS: dict[str, Callable[[str], object]] = {
    "html.parser (stdlib)": _feed_stdlib,
    "lxml.html": lxml.html.document_fromstring,
    "selectolax (lexbor)": LexborHTMLParser,
}


# --------------------------------------------------------------------------
# Simhash, the contract's plain loop
# --------------------------------------------------------------------------

MASK64 = (1 << 64) - 1


def _rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & MASK64


def _mix(a: int, b: int, c: int) -> int:
    z = (a ^ _rotl(b, 21) ^ _rotl(c, 42)) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def simhash_naive(raw_words: list[str]) -> str:
    words = [w.lower() for w in raw_words]
    if not words:
        return "0" * 16
    hashes = [
        int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
        for w in words
    ]
    if len(hashes) < 3:
        shingles = [_mix(*(hashes + [0] * (3 - len(hashes))))]
    else:
        shingles = [_mix(hashes[i], hashes[i + 1], hashes[i + 2]) for i in range(len(hashes) - 2)]
    votes = [0] * 64
    for shingle in shingles:
        for bit in range(64):
            votes[bit] += 1 if shingle >> bit & 1 else -1
    return format(sum(1 << bit for bit in range(64) if votes[bit] > 0), "016x")


def simhash_numpy_cold(raw_words: list[str]) -> str:
    # A fresh word-hash cache each time: the cost on a page of unseen words.
    simhash._word_hashes = simhash._WordHashCache()
    return parse.simhash_words(raw_words)


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def cpu_ms_per_call(function: Callable, args_list: list[tuple], rounds: int) -> float:
    """Best-of-``rounds`` CPU milliseconds per call over all ``args_list``."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for args in args_list:
            function(*args)
        best = min(best, time.process_time() - started)
    return best / len(args_list) * 1000


def pool_throughput(
    items: list[tuple[str, bytes, str]], batch_size: int, rounds: int
) -> tuple[float, float, float]:
    """Best pages/s through ProcessPoolExecutor(2); worker and parent CPU ms/page."""
    best_rate, cpu_ms, parent_ms = 0.0, 0.0, 0.0
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with ProcessPoolExecutor(2) as pool:
        # Start both workers and import the parse stage before timing.
        list(pool.map(parse.parse_batch, [items[:1], items[1:2]]))
        for _ in range(rounds):
            started, parent_started = time.perf_counter(), time.process_time()
            results = list(pool.map(parse.parse_batch, batches))
            elapsed = time.perf_counter() - started
            parent_cpu = time.process_time() - parent_started
            rate = len(items) / elapsed
            if rate > best_rate:
                best_rate = rate
                cpu_ms = sum(cpu for _, cpu in results) / len(items) * 1000
                parent_ms = parent_cpu / len(items) * 1000
    return best_rate, cpu_ms, parent_ms


def print_table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    cells = [header] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> None:
    options = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    options.add_argument("--pages", type=int, default=200, help="pages per measurement (default 200)")
    options.add_argument("--pool-pages", type=int, default=800, help="pages per pool run (default 800)")
    options.add_argument("--rounds", type=int, default=3, help="best of this many rounds (default 3)")
    args = options.parse_args(argv)

    started = time.perf_counter()
    pages, source = synthetic_site_pages(max(args.pages, 1))
    urls = [f"{BASE_URL}/page/{n}" for n in range(len(pages))]
    sizes = [len(p) for p in pages]
    print(f"pages: {len(pages)} from {source}")
    print(
        f"sizes: mean {statistics.mean(sizes) / 1024:.1f} KB, "
        f"min {min(sizes) / 1024:.1f} KB, max {max(sizes) / 1024:.1f} KB; "
        f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs"
    )

    # Parsers: same answers first, then speed.
    url_pages = list(zip(urls, pages))
    answers = {
        name: [(title, links, WORD_RE.findall(text)) for title, links, text in (extract(u, p) for u, p in url_pages)]
        for name, extract in EXTRACTORS.items()
    }
    reference = answers["selectolax (lexbor)"]
    decoded = [(parse.decode_html(p, "text/html"),) for p in pages]
    rows = []
    for name, extract in EXTRACTORS.items():
        agree = sum(a == r for a, r in zip(answers[name], reference))
        ms = cpu_ms_per_call(extract, url_pages, args.rounds)
        tree_ms = cpu_ms_per_call(TREE_BUILDERS[name], decoded, args.rounds)
        rows.append((name, ms, tree_ms, f"{agree}/{len(pages)}"))
    fastest = min(row[1] for row in rows)
    print_table(
        "title + links + visible text (decode and link resolution included), CPU ms/page",
        ("parser", "ms/page", "vs best", "of which parsing", "same title/links/words as selectolax"),
        [(name, f"{ms:.3f}", f"{ms / fastest:.1f}x", f"{tree_ms:.3f}", agree) for name, ms, tree_ms, agree in rows],
    )
    mean_words = statistics.mean(len(r[2]) for r in reference)
    mean_links = statistics.mean(r[1] for r in reference)

    texts = [(extract_selectolax(u, p)[2],) for u, p in url_pages]
    assert all(parse._words(t) == WORD_RE.findall(t) for (t,) in texts), "tokenizer mismatch"
    regex_ms = cpu_ms_per_call(WORD_RE.findall, texts, args.rounds)
    split_ms = cpu_ms_per_call(parse._words, texts, args.rounds)
    print_table(
        f"visible text -> word list ({mean_words:.0f} words/page mean), CPU ms/page",
        ("tokenizer", "ms/page", "speedup"),
        [
            ('re.findall(r"\\w+")', f"{regex_ms:.3f}", "1.0x"),
            ("crawler.parse._words (translate + split)", f"{split_ms:.3f}", f"{regex_ms / split_ms:.1f}x"),
        ],
    )

    # Simhash over each page's visible words.
    word_lists = [(r[2],) for r in reference]
    assert all(simhash_naive(*w) == parse.simhash_words(*w) for w in word_lists), "simhash mismatch"
    naive_ms = cpu_ms_per_call(simhash_naive, word_lists, 1)
    cold_ms = cpu_ms_per_call(simhash_numpy_cold, word_lists, args.rounds)
    simhash._word_hashes = simhash._WordHashCache()
    warm_ms = cpu_ms_per_call(parse.simhash_words, word_lists, args.rounds)
    print_table(
        "simhash of the visible words, CPU ms/page",
        ("implementation", "ms/page", "speedup"),
        [
            ("per-shingle Python loop", f"{naive_ms:.3f}", "1.0x"),
            ("numpy, empty word-hash cache", f"{cold_ms:.3f}", f"{naive_ms / cold_ms:.0f}x"),
            ("numpy, warm word-hash cache", f"{warm_ms:.3f}", f"{naive_ms / warm_ms:.0f}x"),
        ],
    )

    # The whole parse stage, in this process.
    page_args = [(u, p, "text/html; charset=utf-8") for u, p in url_pages]
    simhash._word_hashes = simhash._WordHashCache()
    first_ms = cpu_ms_per_call(parse.parse_page, page_args, 1)
    page_ms = cpu_ms_per_call(parse.parse_page, page_args, args.rounds)
    print_table(
        f"parse_page, CPU ms/page ({mean_links:.0f} distinct links/page mean)",
        ("run", "ms/page"),
        [("first pass (caches filling)", f"{first_ms:.3f}"), (f"best of {args.rounds}, warm", f"{page_ms:.3f}")],
    )

    # Through a process pool: task granularity.
    pool_items = [page_args[n % len(page_args)] for n in range(args.pool_pages)]
    rows = []
    baseline = None
    for batch_size in (1, 8, 32):
        rate, cpu_ms, parent_ms = pool_throughput(pool_items, batch_size, args.rounds)
        baseline = baseline or rate
        rows.append(
            (str(batch_size), f"{rate:.0f}", f"{rate / baseline:.2f}x", f"{cpu_ms:.3f}", f"{parent_ms:.3f}")
        )
    print_table(
        f"parse_batch through ProcessPoolExecutor(2), {len(pool_items)} pages, best of {args.rounds}",
        ("pages/task", "pages/s", "vs 1/task", "worker CPU ms/page", "parent CPU ms/page"),
        rows,
    )
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
