"""A deterministic synthetic website, served on loopback.

The engines are compared on the same pages, and nothing real is crawled
for it: :class:`SyntheticSite` makes ``pages`` HTML pages from a seed, the
same bytes in every process and on every run, shaped like real pages (a
``<head>`` with title, style and script; headings, paragraphs of English-like
text, a nav bar and a footer; 20-60 links each, almost all to other pages of
the site as relative ``/page/N`` paths, plus a few ``#fragment`` and
``mailto:`` ones).  Sizes are 5-80 KB, about ``mean_kb`` KB on average.

It is used three ways:

* ``crawl --demo`` starts it (:func:`serve_in_subprocess`) and crawls all of
  its pages with several engines to compare them;
* the benchmarks do the same with their own page counts, sizes and delays;
* ``python -m crawler.site`` runs it alone, so that other tools (wrk, Scrapy,
  ...) can be measured on the very same pages.  It prints a first line
  ``# crawler site http://127.0.0.1:PORT pages=N seed=S delay=D`` once it
  listens, then every page URL, one per line; lines starting with ``#`` are
  skipped by the crawler's URL-file reader, so
  ``python -m crawler.site > urls.txt`` gives a usable URL file.

Routes: ``GET /page/{n}`` (``n >= pages`` serves page ``n % pages``, so URL
lists of any length can be made of one site), ``GET /`` (a small index),
``GET /urls.txt`` (the URL list) and ``GET /robots.txt`` (allows all).
``delay`` seconds are slept before each page response, to model a slow
server: that is what makes concurrency pay off.

The server shares the CPU with the client under test (often on two cores),
so it must cost as little as possible: every page is generated once, before
the server listens, and the handlers only hand out prebuilt bytes; access
logging is off.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import bisect
import contextlib
import math
import operator
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "SyntheticSite",
    "SiteProcess",
    "make_app",
    "serve",
    "serve_in_subprocess",
    "demo_port_to_resume",
    "main",
]

# ---------------------------------------------------------------------------
# Text material
# ---------------------------------------------------------------------------

# A fixed vocabulary, roughly in order of frequency: word i is drawn with a
# weight of 1 / (i + 2.7), a Zipf-like law, so that a few words are very
# common and most are rare, as in real text (which matters for the parse
# stage's shingles and near-duplicate detection).  A few non-ASCII words keep
# the UTF-8 decoding honest.
_WORDS = """
the of and to in a is that for it as was with be by on not he this are or his
from at which but have an they you were her she there been one all we their
has would when if so no will more can its some time two may first into only
new other these than could then them our most over very also any after years
made many before must through back where much your way well down should
because each just those people how too little state good world very make still
own see men work long get here between both life being under never day same
another know while last might us great old year off come since against go
came right used take three states himself few house use during without again
place around however home small found thought went say part once general high
upon school every does got united left number course war until always away
something fact though water less public put think almost hand enough far took
head yet government system better set told nothing night end why called
didn't eyes find going look asked later knew point next program city business
give group toward young days let room president side social given present
several order national possible rather second face per among form important
often things looked early white case john become large big need four within
felt children along saw best church ever least power development light thing
seemed family interest want members mind country area others done turned
although open problem sense certain today began public field market voice
history question letter river garden window summer morning evening valley
harbor signal engine network library archive station bridge forest island
method theory practice measure record report season village border column
paper silver copper marble timber canvas cotton leather crystal pattern
balance channel circuit harvest journey lantern meadow orchard quarry
shelter thunder velvet whisper anchor beacon compass ember falcon glacier
horizon ivory jasmine kettle lagoon mosaic nectar oracle pebble quiver
ripple saddle tundra umbra vertex willow yonder zephyr amber basalt cinder
dune estuary fjord grove heath inlet juniper knoll ledge moraine nebula
obsidian prairie quartz reef sierra thicket upland vale wadi yarrow zenith
café naïve résumé façade déjà coöperate
""".split()
_WORDS = list(dict.fromkeys(_WORDS))  # (a word listed twice would count once)
_NAME_WORDS = [w for w in _WORDS[200:] if w.isascii() and w.isalpha()]  # for ids and addresses

_PUNCT_END = ".", ".", ".", ".", ".", "?", "!"

_CSS_BASE = """\
:root{--fg:#1d1f21;--bg:#fdfdfc;--accent:#2a6f97;--muted:#6b7280}
*{box-sizing:border-box}
html{font-size:16px;-webkit-text-size-adjust:100%}
body{margin:0;font-family:Georgia,"Times New Roman",serif;line-height:1.6;color:var(--fg);background:var(--bg)}
header,footer{padding:.75rem 1.5rem;background:#f1f1ee;border-bottom:1px solid #ddd}
footer{border-top:1px solid #ddd;border-bottom:0;font-size:.875rem;color:var(--muted)}
nav a{margin-right:1rem;text-decoration:none;color:var(--accent)}
main{max-width:46rem;margin:0 auto;padding:1rem 1.5rem 3rem}
h1{font-size:2rem;line-height:1.2;margin:1.5rem 0 1rem}
h2{font-size:1.35rem;margin:2rem 0 .5rem;border-bottom:1px solid #e5e5e5}
p{margin:0 0 1rem;text-align:justify;hyphens:auto}
a{color:var(--accent)}a:hover{text-decoration:underline}
ul.related{padding-left:1.25rem}
@media (max-width:600px){main{padding:.5rem 1rem}h1{font-size:1.5rem}}
"""

_JS_TEMPLATE = """\
(function(){"use strict";
var cfg={page:%d,section:"%s",build:"%s",features:[%s]};
function ready(f){document.readyState!=="loading"?f():document.addEventListener("DOMContentLoaded",f);}
ready(function(){
  var links=document.querySelectorAll("main a[href^='/page/']");
  for(var i=0;i<links.length;i++){links[i].setAttribute("data-i",String(i));}
  if(window.performance&&cfg.features.length){window.__site=cfg;}
});
})();
"""

# Size bounds relative to the mean: 5 KB and 80 KB for the default 30 KB.
_LOW_FACTOR = 1.0 / 6.0
_HIGH_FACTOR = 8.0 / 3.0
_SIGMA = 0.6  # log-normal shape: a long right tail, as real pages have


def _word_table() -> tuple[str, ...]:
    """65536 slots, word ``i`` in a share of them proportional to 1 / (i + 2.7)."""
    global _TABLE
    if _TABLE is None:
        cum, total = [], 0.0
        for i in range(len(_WORDS)):
            total += 1.0 / (i + 2.7)
            cum.append(total)
        _TABLE = tuple(
            _WORDS[min(bisect.bisect_right(cum, (slot + 0.5) / 65536 * total), len(_WORDS) - 1)]
            for slot in range(65536)
        )
    return _TABLE


_TABLE: tuple[str, ...] | None = None


def _mean_word_bytes() -> float:
    table = _word_table()
    return sum(len(w.encode()) + 1 for w in table) / len(table)


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _truncated_lognormal_mean(mu: float, sigma: float, lo: float, hi: float) -> float:
    la, lb = math.log(lo), math.log(hi)
    mass = _phi((lb - mu) / sigma) - _phi((la - mu) / sigma)
    part = _phi((lb - mu - sigma**2) / sigma) - _phi((la - mu - sigma**2) / sigma)
    return math.exp(mu + sigma**2 / 2.0) * part / mass


def _solve_mu(mean: float, sigma: float, lo: float, hi: float) -> float:
    """The log-normal ``mu`` whose truncation to [lo, hi] has mean ``mean``."""
    a, b = math.log(lo) - 5.0, math.log(hi) + 5.0
    for _ in range(100):
        m = (a + b) / 2.0
        if _truncated_lognormal_mean(m, sigma, lo, hi) < mean:
            a = m
        else:
            b = m
    return (a + b) / 2.0


# ---------------------------------------------------------------------------
# The site
# ---------------------------------------------------------------------------


class SyntheticSite:
    """``pages`` deterministic HTML pages made from ``seed``.

    ``page(n)`` depends only on ``(seed, n, pages, mean_kb)``: it is drawn
    from ``random.Random(f"{seed}:{n}")``, never from ``hash()``, so the same
    arguments give the same bytes in any process, on any run.  Pages are
    cached once made.  ``delay`` is not used here; it is carried for
    :func:`make_app`, which sleeps that long before each page response.

    Sizes follow a log-normal law truncated to ``[mean_kb/6, mean_kb*8/3]``
    KB (5-80 KB for the default 30) whose mean is ``mean_kb``.  Each page
    also has a fixed skeleton (head, style, script, nav, footer, 20-60
    links) of about 3-5 KB, so means below ~5 KB are not reached.
    """

    def __init__(self, pages: int = 1000, seed: int = 0, delay: float = 0.0, mean_kb: float = 30.0):
        if pages < 1:
            raise ValueError("pages must be at least 1")
        if mean_kb <= 0:
            raise ValueError("mean_kb must be positive")
        if delay < 0:
            raise ValueError("delay must not be negative")
        self.pages = int(pages)
        self.seed = seed
        self.delay = float(delay)
        self.mean_kb = float(mean_kb)
        self.min_kb = self.mean_kb * _LOW_FACTOR
        self.max_kb = self.mean_kb * _HIGH_FACTOR
        self._mu = _solve_mu(self.mean_kb, _SIGMA, self.min_kb, self.max_kb)
        self._cache: dict[int, bytes] = {}
        self._table = _word_table()
        self._mean_word_bytes = _mean_word_bytes()

    def __repr__(self) -> str:
        return (
            f"SyntheticSite(pages={self.pages}, seed={self.seed!r}, "
            f"delay={self.delay}, mean_kb={self.mean_kb})"
        )

    # -- public API ---------------------------------------------------------

    def page(self, n: int) -> bytes:
        """The HTML of page ``n`` (``0 <= n < pages``), made once, then cached."""
        if not 0 <= n < self.pages:
            raise IndexError(f"page {n} out of range 0..{self.pages - 1}")
        body = self._cache.get(n)
        if body is None:
            body = self._cache[n] = self._generate(n)
        return body

    def generate_all(self) -> None:
        """Make (and cache) every page now, e.g. before serving."""
        for n in range(self.pages):
            self.page(n)

    def paths(self) -> Iterator[str]:
        """``/page/0`` ... ``/page/{pages-1}``."""
        for n in range(self.pages):
            yield f"/page/{n}"

    def urls(self, base_url: str) -> Iterator[str]:
        """Every page URL under ``base_url`` (given without a trailing slash)."""
        base_url = base_url.rstrip("/")
        for path in self.paths():
            yield base_url + path

    # -- generation ---------------------------------------------------------

    def _size_target(self, rng: random.Random) -> int:
        while True:  # rejection sampling: a truncated log-normal, no spikes at the bounds
            kb = rng.lognormvariate(self._mu, _SIGMA)
            if self.min_kb <= kb <= self.max_kb:
                return int(kb * 1024)

    def _words(self, rng: random.Random, k: int) -> list[str]:
        """``k`` words drawn with Zipf-like frequencies (16 random bits a word)."""
        idx = array.array("H", rng.randbytes(2 * k))
        if sys.byteorder == "big":
            idx.byteswap()  # the same words on every platform
        if k == 1:
            return [self._table[idx[0]]]
        return list(operator.itemgetter(*idx)(self._table))

    def _phrase(self, rng: random.Random, lo: int, hi: int) -> str:
        return " ".join(self._words(rng, rng.randint(lo, hi)))

    def _title_phrase(self, rng: random.Random, lo: int, hi: int) -> str:
        # Titles lean on the rarer, more "topical" half of the vocabulary.
        half = len(_WORDS) // 2
        words = [_WORDS[rng.randrange(half, len(_WORDS))] for _ in range(rng.randint(lo, hi))]
        return " ".join(w.capitalize() for w in words)

    def _link_target(self, rng: random.Random, n: int) -> str:
        pages = self.pages
        r = rng.random()
        if r < 0.45:  # anywhere on the site
            k = rng.randrange(pages)
        elif r < 0.75:  # a neighbour: same "section"
            k = (n + rng.randint(-40, 40)) % pages
        else:  # a popular page: low numbers, Zipf-ish
            k = min(int(rng.paretovariate(1.2)) - 1, pages - 1)
        href = f"/page/{k}"
        if rng.random() < 0.06:
            href += f"#section-{rng.randint(1, 4)}"
        return href

    def _paragraph(self, rng: random.Random, target_bytes: int) -> list[str]:
        """Sentences (as words, capitalised and punctuated) of about ``target_bytes``."""
        count = max(int(target_bytes / self._mean_word_bytes), 6)
        words = self._words(rng, count)
        getrandbits = rng.getrandbits
        i = 0
        while i < count:
            r = getrandbits(32)  # one draw per sentence: length, comma, end mark
            k = 6 + r % 17  # 6-22 words
            end = min(i + k, count) - 1
            words[i] = words[i].capitalize()
            if end - i > 8 and (r >> 5) % 5 < 2:
                words[i + 3 + (r >> 8) % (end - i - 6)] += ","
            words[end] += _PUNCT_END[(r >> 16) % len(_PUNCT_END)]
            i += k
        return words

    def _generate(self, n: int) -> bytes:
        rng = random.Random(f"{self.seed}:{n}")
        pages = self.pages
        target = self._size_target(rng)
        n_links = rng.randint(20, 60)

        title = self._title_phrase(rng, 2, 5)
        section = rng.choice(_NAME_WORDS)

        # Head: meta, a stylesheet (shared base plus page-specific rules), a script.
        extra_css = []
        for _ in range(rng.randint(4, 16)):
            cls = f"{rng.choice(_NAME_WORDS)}-{rng.randrange(100)}"
            extra_css.append(
                f".{cls}{{margin:{rng.randint(0, 3)}rem {rng.randint(0, 2)}rem;"
                f"color:#{rng.randrange(0x1000000):06x};font-weight:{rng.choice((400, 500, 600, 700))}}}"
            )
        features = ",".join(f'"{w}"' for w in rng.sample(_WORDS[150:300], rng.randint(2, 8)))
        script = _JS_TEMPLATE % (n, section, f"{rng.getrandbits(40):010x}", features)
        description = self._phrase(rng, 12, 24).capitalize() + "."

        head = (
            "<!doctype html>\n"
            '<html lang="en">\n<head>\n'
            '<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title} \u2014 page {n} \u2014 Synthetic Site</title>\n"
            f'<meta name="description" content="{description}">\n'
            f'<link rel="canonical" href="/page/{n}">\n'
            "<style>\n" + _CSS_BASE + "\n".join(extra_css) + "\n</style>\n"
            "<script>\n" + script + "</script>\n"
            "</head>\n"
        )

        # Links: nav (home, prev, next, two more) and footer (a fragment, a
        # mailto, a page) are fixed; the rest go inline into the text.
        # Prev/next make every page reachable from any other.
        nav_links = [
            ("/", "Home"),
            (f"/page/{(n - 1) % pages}", "Previous"),
            (f"/page/{(n + 1) % pages}", "Next"),
            (self._link_target(rng, n), self._title_phrase(rng, 1, 2)),
            (self._link_target(rng, n), self._title_phrase(rng, 1, 2)),
        ]
        footer_links = [
            ("#top", "Back to top"),
            (f"mailto:{section}@example.invalid", "Contact"),
            ("/page/0", "About"),
        ]
        n_body = n_links - len(nav_links) - len(footer_links)
        body_links: list[str] = []
        for _ in range(n_body):
            if rng.random() < 0.05:
                body_links.append(f"#section-{rng.randint(1, 4)}")
            elif rng.random() < 0.02:
                body_links.append(f"mailto:{rng.choice(_NAME_WORDS)}@example.invalid")
            else:
                body_links.append(self._link_target(rng, n))

        nav = (
            '<header id="top">\n<nav>'
            + " ".join(f'<a href="{h}">{t}</a>' for h, t in nav_links)
            + "</nav>\n</header>\n"
        )
        footer = (
            "<footer>\n<p>"
            + " | ".join(f'<a href="{h}">{t}</a>' for h, t in footer_links)
            + f"</p>\n<p>Synthetic Site, seed {self.seed}. All text is generated.</p>\n</footer>\n"
        )
        top = f"<body>\n{nav}<main>\n<article>\n<h1>{title}</h1>\n"
        bottom = "</article>\n</main>\n" + footer + "</body>\n</html>\n"

        # Text: paragraphs until the size target is met, headings every few.
        fixed = len(head.encode()) + len(top.encode()) + len(bottom.encode())
        budget = max(target - fixed - 40 * n_body, 0)
        blocks: list[list[str]] = []  # the words of a paragraph or heading, the items of a list
        kinds: list[str] = []  # "p", "h2" or "ul"
        size = 0
        para_words = 0
        while size < budget or para_words < 4 * n_body:
            if not blocks or (kinds[-1] == "p" and rng.random() < 0.18):
                h = self._title_phrase(rng, 2, 6).split()
                blocks.append(h)
                kinds.append("h2")
                size += sum(map(len, h)) + len(h) + 30
            elif rng.random() < 0.05:
                items = [self._phrase(rng, 2, 7) for _ in range(rng.randint(3, 6))]
                blocks.append(items)
                kinds.append("ul")
                size += sum(map(len, items)) + 10 * len(items) + 30
            else:
                para = self._paragraph(rng, rng.randint(300, 1100))
                blocks.append(para)
                kinds.append("p")
                size += sum(map(len, para)) + len(para) + 8
                para_words += len(para)

        # Wrap each body link around one to three words of some paragraph.
        # A linked span becomes a single element, so links never nest.
        para_ids = [i for i, k in enumerate(kinds) if k == "p"]
        for href in body_links:
            words = blocks[rng.choice(para_ids)]
            for _ in range(20):
                i = rng.randrange(len(words))
                j = min(i + rng.randint(1, 3), len(words))
                if not any(w.startswith("<a ") for w in words[i:j]):
                    break
            else:  # crowded paragraph: a word of its own
                words.append("more.")
                i, j = len(words) - 1, len(words)
            text = " ".join(words[i:j])
            tail = ""
            if text[-1] in ".,?!":
                text, tail = text[:-1], text[-1]
            words[i:j] = [f'<a href="{href}">{text}</a>{tail}']

        parts = [head, top]
        section_no = 0
        for block, kind in zip(blocks, kinds):
            if kind == "h2":
                section_no += 1
                parts.append(f'<h2 id="section-{section_no}">{" ".join(block)}</h2>\n')
            elif kind == "ul":
                parts.append('<ul class="related">\n')
                parts.extend(f"<li>{item}</li>\n" for item in block)
                parts.append("</ul>\n")
            else:
                parts.append(f"<p>{' '.join(block)}</p>\n")
        parts.append(bottom)
        return "".join(parts).encode("utf-8")


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------

_HTML_HEADERS = {"Content-Type": "text/html; charset=utf-8"}
_TEXT_HEADERS = {"Content-Type": "text/plain; charset=utf-8"}
_ROBOTS = b"User-agent: *\nAllow: /\n"


def _index_page(site: SyntheticSite, first: int = 100) -> bytes:
    items = "".join(
        f'<li><a href="/page/{n}">Page {n}</a></li>\n' for n in range(min(first, site.pages))
    )
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<title>Synthetic Site</title>\n</head>\n<body>\n<h1>Synthetic Site</h1>\n"
        f"<p>{site.pages} pages, seed {site.seed}. "
        '<a href="/urls.txt">All page URLs</a>.</p>\n'
        f"<ul>\n{items}</ul>\n</body>\n</html>\n"
    ).encode("utf-8")


def make_app(site: SyntheticSite) -> "web.Application":
    """An :class:`aiohttp.web.Application` serving ``site``.

    Every page is generated here, up front, so the handlers only hand out
    prebuilt bytes.  ``GET /page/{n}`` serves page ``n % site.pages`` after
    sleeping ``site.delay`` seconds (if > 0).
    """
    from aiohttp import web

    site.generate_all()
    bodies = [site.page(n) for n in range(site.pages)]
    npages = len(bodies)
    delay = site.delay
    index = _index_page(site)
    url_lists: dict[str, bytes] = {}

    if delay > 0:

        async def page(request: web.Request) -> web.Response:
            n = int(request.match_info["n"])
            await asyncio.sleep(delay)
            return web.Response(body=bodies[n % npages], headers=_HTML_HEADERS)

    else:

        async def page(request: web.Request) -> web.Response:
            return web.Response(body=bodies[int(request.match_info["n"]) % npages], headers=_HTML_HEADERS)

    async def root(request: web.Request) -> web.Response:
        return web.Response(body=index, headers=_HTML_HEADERS)

    async def urls_txt(request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        body = url_lists.get(base)
        if body is None:
            body = ("\n".join(site.urls(base)) + "\n").encode("utf-8")
            if len(url_lists) < 16:  # (the Host header is the client's: bound the cache)
                url_lists[base] = body
        return web.Response(body=body, headers=_TEXT_HEADERS)

    async def robots(request: web.Request) -> web.Response:
        return web.Response(body=_ROBOTS, headers=_TEXT_HEADERS)

    app = web.Application()
    app["site"] = site
    app.router.add_get(r"/page/{n:\d{1,60}}", page)  # (longer numbers: 404, not int() errors)
    app.router.add_get("/", root)
    app.router.add_get("/urls.txt", urls_txt)
    app.router.add_get("/robots.txt", robots)
    return app


def _base_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def _serve_async(
    site: SyntheticSite, host: str, port: int, print_urls: bool, exit_on_stdin_eof: bool, terminated: list[int]
) -> None:
    from aiohttp import web

    app = make_app(site)  # generates every page before we listen
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        tcp = web.TCPSite(runner, host, port, backlog=1024)
        await tcp.start()
        addr = runner.addresses[0]
        base = _base_url(host, addr[1])

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
                pass
        if exit_on_stdin_eof and sys.stdin is not None:
            # Our parent holds the other end of stdin: if it dies, we stop (no orphan).
            fd = sys.stdin.fileno()

            def on_stdin() -> None:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    data = b""
                if not data:
                    loop.remove_reader(fd)
                    stop.set()

            loop.add_reader(fd, on_stdin)
        if terminated:  # SIGTERM came while the loop was starting
            stop.set()

        if stop.is_set():
            return
        lines = [f"# crawler site {base} pages={site.pages} seed={site.seed} delay={site.delay:g}"]
        if print_urls:
            lines.extend(site.urls(base))
        try:
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError, OSError):
            # Nobody reads our stdout (e.g. `| head`): keep serving, silently.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)

        await stop.wait()
    finally:
        await runner.cleanup()  # (our signal handlers stay until asyncio.run closes the loop)


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    pages: int = 1000,
    seed: int = 0,
    delay: float = 0.0,
    mean_kb: float = 30.0,
    print_urls: bool = True,
    exit_on_stdin_eof: bool = False,
) -> None:
    """Serve a :class:`SyntheticSite` on ``host:port`` until SIGINT or SIGTERM.

    ``port=0`` lets the OS pick a free port.  All pages are generated before
    listening; then the first stdout line is
    ``# crawler site http://HOST:PORT pages=N seed=S delay=D`` (meaning
    "ready"), followed, if ``print_urls``, by every page URL.
    ``exit_on_stdin_eof`` also stops the server when stdin reaches end of
    file, i.e. when the parent process holding its other end is gone.
    """
    site = SyntheticSite(pages=pages, seed=seed, delay=delay, mean_kb=mean_kb)
    terminated: list[int] = []

    def term_interrupts(signum, frame):  # while generating: the same as Ctrl-C
        raise KeyboardInterrupt

    def term_requests_stop(signum, frame):  # while the loop starts: noted, acted on once it runs
        terminated.append(signum)

    try:
        previous = signal.signal(signal.SIGTERM, term_interrupts)
    except ValueError:  # not the main thread: signals are the caller's business
        previous = None
    try:
        from aiohttp import web  # noqa: F401  (imported and generated before the loop:
        site.generate_all()  #      an interrupt here cannot land inside asyncio)
        if previous is not None:
            signal.signal(signal.SIGTERM, term_requests_stop)
        asyncio.run(_serve_async(site, host, port, print_urls, exit_on_stdin_eof, terminated))
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------
# In a child process
# ---------------------------------------------------------------------------


class SiteProcess:
    """A synthetic site running in a child process (see :func:`serve_in_subprocess`).

    ``base_url`` is ``http://127.0.0.1:PORT`` (no trailing slash) and
    ``process`` the :class:`subprocess.Popen` of the server.
    """

    def __init__(self, base_url: str, process: subprocess.Popen, site: SyntheticSite):
        self.base_url = base_url
        self.process = process
        self.site = site  # parameters only: its pages are not generated in this process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pages(self) -> int:
        return self.site.pages

    def url(self, n: int) -> str:
        return f"{self.base_url}/page/{n}"

    def urls(self, count: int | None = None) -> Iterator[str]:
        """Page URLs: all pages once, or ``count`` URLs (wrapping around the site)."""
        if count is None:
            yield from self.site.urls(self.base_url)
        else:
            for n in range(count):
                yield f"{self.base_url}/page/{n}"

    def __str__(self) -> str:
        return self.base_url

    def __repr__(self) -> str:
        return f"SiteProcess({self.base_url!r}, pid={self.process.pid})"


def _stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` s, then SIGKILL; always reaps the child."""
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
    finally:
        # Even if interrupted above: make sure it is dead and reaped.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@contextlib.contextmanager
def serve_in_subprocess(
    pages: int = 1000,
    seed: int = 0,
    delay: float = 0.0,
    mean_kb: float = 30.0,
    host: str = "127.0.0.1",
    startup_timeout: float = 15.0,
    port: int = 0,
) -> Iterator[SiteProcess]:
    """Run ``python -m crawler.site`` in a child process; yield a :class:`SiteProcess`.

    The child generates its pages, listens on a free port (or ``port``) and
    reports its URL; this returns once it is ready (or raises
    :class:`RuntimeError` with the child's stderr after ``startup_timeout``
    s, or when it cannot listen on ``port``).  On exit, however it
    happens (KeyboardInterrupt included), the child gets SIGTERM, then
    SIGKILL after 5 s, and is reaped.  Should this process die without
    cleaning up, the child notices its stdin closing and exits too.
    """
    site = SyntheticSite(pages=pages, seed=seed, delay=delay, mean_kb=mean_kb)  # validates arguments
    if port:
        _wait_for_port(host, port, startup_timeout / 3)  # e.g. the site of a run just killed, still exiting
    cmd = [
        sys.executable, "-m", "crawler.site",
        "--host", host, "--port", str(int(port)), "--no-urls", "--exit-on-stdin-eof",
        "--pages", str(pages), "--seed", str(seed),
        "--delay", repr(float(delay)), "--mean-kb", repr(float(mean_kb)),
    ]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"

    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errfile, env=env)
        try:
            first: list[bytes] = []
            reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
            reader.start()
            reader.join(startup_timeout)
            line = first[0].decode("utf-8", "replace").strip() if first else ""
            if not line.startswith("# crawler site http"):
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                reader.join(1.0)
                errfile.seek(0)
                err = errfile.read().decode("utf-8", "replace").strip()
                if not first:
                    why = f"was not ready within {startup_timeout:g} s"
                elif line:
                    why = "printed an unexpected first line"
                else:
                    why = f"exited with code {proc.returncode}"
                raise RuntimeError(f"synthetic site {why}: {line!r}\n{err}")
            base_url = line.split()[3]
            yield SiteProcess(base_url, proc, site)
        finally:
            _stop_process(proc)


def _wait_for_port(host: str, port: int, seconds: float) -> None:
    """Return once ``host:port`` can be listened on, or after ``seconds`` (the child then says why it cannot)."""
    import socket
    import time

    deadline = time.monotonic() + seconds
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp listens
            try:
                probe.bind((host, port))
                return
            except OSError:
                if time.monotonic() >= deadline:
                    return
        time.sleep(0.1)


def demo_port_to_resume(out: str | None, engines: list[str]) -> int:
    """The port of the demo site whose crawl ``--demo --resume`` continues, or 0 (any free port).

    The demo's URLs name its port, so a resumed demo must serve on the same
    one for its records and frontier to mean the same pages.  The port is
    read from the first record in ``out`` whose URL is a demo page, else
    from the first URL in a frontier state file of one of ``engines``
    (a crawl killed before its first record may have queued links).
    """
    import json

    from ..frontier import state_path
    from ..outputs import read_records

    def port_of(url: object) -> int:
        if isinstance(url, str):
            match = _DEMO_URL.match(url)
            if match:
                return int(match.group(1))
        return 0

    if not out:
        return 0
    try:
        for record in read_records(out):
            port = port_of(record.get("url"))
            if port:
                return port
    except (OSError, ValueError, sqlite3.Error):
        pass
    for engine in engines:
        try:
            with open(state_path(out, engine), "rb") as log:
                for line in log:
                    try:
                        fact = json.loads(line)
                    except ValueError:
                        continue
                    for item in fact if isinstance(fact, list) else ():
                        port = port_of(item)
                        if port:
                            return port
        except OSError:
            continue
    return 0


_DEMO_URL = re.compile(r"http://127\.0\.0\.1:(\d{1,5})/page/\d+$")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


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
