"""The synthetic site's pages: deterministic HTML generated from a seed.

:class:`SyntheticSite` makes ``pages`` HTML pages from a seed, the same
bytes in every process and on every run, shaped like real pages (a
``<head>`` with title, style and script; headings, paragraphs of
English-like text, a nav bar and a footer; 20-60 links each, almost all to
other pages of the site as relative ``/page/N`` paths, plus a few
``#fragment`` and ``mailto:`` ones).  Sizes are 5-80 KB, about ``mean_kb``
KB on average.

Only the standard library is used here, so the benchmarks and the tests
can make pages without a server.
"""

from __future__ import annotations

import array
import bisect
import math
import operator
import random
import sys
from typing import Iterator

__all__ = ["SyntheticSite"]

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
    :func:`crawler.site.server.make_app`, which sleeps that long before each
    page response.

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
