"""The parse stage: turn a fetched body into the record's content fields.

This is the CPU-heavy part of a crawl, so it runs in ProcessPoolExecutor
workers: everything here is a top-level, picklable function, and the only
module-level mutable state is caches that a worker may drop at any time.

For each page we record its title, how many distinct http(s) URLs it links
to, how many words of visible text it has, a 64-bit simhash of that text
(near-duplicate detection) and the sha256 of the raw body.  The simhash
definition is a contract shared with other tools; ``tests/test_parse.py``
holds a plain reference implementation that this vectorised one must match
bit for bit.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import os
import re
import signal
import time
from urllib.parse import urldefrag, urljoin, urlsplit

import numpy as np

from .processes import follow_parent
from .records import PARSE_FIELDS, unparsed_fields  # noqa: F401  (PARSE_FIELDS: what parse_page returns)

try:
    from selectolax.lexbor import LexborHTMLParser as _HTMLParser
except ImportError:  # builds without lexbor have only the older Modest backend
    from selectolax.parser import HTMLParser as _HTMLParser

__all__ = [
    "PARSE_FIELDS",
    "is_html",
    "decode_html",
    "parse_page",
    "parse_batch",
    "simhash_words",
]


_HTML_MEDIA_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_SNIFF_BYTES = 1024
_META_SNIFF_BYTES = 4096
_NON_VISIBLE_TAGS = ["script", "style", "noscript", "template"]
_ERROR_MAX_CHARS = 200
_EMPTY_SIMHASH = "0" * 16

_WORD_RE = re.compile(r"\w+")
_CHARSET_PARAM_RE = re.compile(r"""charset\s*=\s*["']?\s*([^\s"';,]+)""", re.IGNORECASE)
# One pattern covers both <meta charset="x"> and
# <meta http-equiv="Content-Type" content="text/html; charset=x">: in either
# form the word "charset=" appears inside the meta tag.
_META_CHARSET_RE = re.compile(
    rb"""<meta\b[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9._:\-]+)""", re.IGNORECASE
)

_MASK64 = (1 << 64) - 1
_ROT_B = 21
_ROT_C = 42
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_U64_MIX1 = np.uint64(_MIX1)
_U64_MIX2 = np.uint64(_MIX2)

# Word hashes are the one expensive per-word step (a blake2b call each), and
# a crawl's vocabulary repeats heavily across pages, so a worker keeps them.
# Bounded (about 8 MB at the limit) by replacing the dict, never clearing it
# in place: a caller that already holds the old dict (another thread) keeps
# a consistent view.
_WORD_HASH_CACHE_MAX = 1 << 16


class _WordHashCache(dict):
    """word -> blake2b hash of the lower-cased word, filled on first lookup.

    ``__missing__`` lets ``map(cache.__getitem__, words)`` stay a C-level
    loop for every word already seen, with no separate "which are new" pass.
    """

    def __missing__(self, word: str) -> int:
        value = self[word] = _word_hash(word)
        return value


_word_hashes = _WordHashCache()

# Word tokenising with bytes.translate() + split() is several times faster
# than re.findall(r"\w+") (see _words).  Bytes >= 0x80 are left alone so
# that UTF-8 sequences survive the translation.
_ASCII_NON_WORD_TO_SPACE = bytes(
    b if chr(b).isalnum() or b == ord("_") else ord(" ") for b in range(128)
) + bytes(range(128, 256))
_ASCII_BYTES = bytes(range(128))
# Each distinct non-ASCII punctuation character costs a pass over the text;
# past this many, one regex pass is cheaper.
_MAX_CHARS_TO_REPLACE = 48

# Simhash bit counting packs eight one-bit counters into each byte of a
# uint64 lane; summing at most 255 values keeps each byte from carrying.
_LANE_SUM_MAX = 255
_LOW_BIT_OF_EACH_BYTE = np.uint64(0x0101010101010101)
_BIT_SHIFTS = np.arange(8, dtype=np.uint64)[:, None]


# --------------------------------------------------------------------------
# Content type and decoding
# --------------------------------------------------------------------------


def _media_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_html(content_type: str | None, body: bytes) -> bool:
    """Whether the body should be parsed as HTML.

    A declared content type is trusted as is; only a missing one makes us
    look at the body itself.
    """
    media_type = _media_type(content_type)
    if media_type:
        return media_type in _HTML_MEDIA_TYPES
    head = bytes(body[:_SNIFF_BYTES])
    head = head.lstrip()
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8):].lstrip()
    head = head.lower()
    return head.startswith(b"<!doctype html") or head.startswith(b"<html")


def _charset_from_content_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    match = _CHARSET_PARAM_RE.search(content_type)
    return match.group(1) if match else None


def _charset_from_meta(body: bytes) -> str | None:
    match = _META_CHARSET_RE.search(body[:_META_SNIFF_BYTES])
    return match.group(1).decode("ascii") if match else None


def _try_decode(body: bytes, charset: str | None) -> str | None:
    if not charset:
        return None
    try:
        return body.decode(charset, errors="replace")
    # LookupError: unknown name, or a bytes-to-bytes codec such as "hex".
    # UnicodeError: codecs like "idna" that refuse errors="replace".
    except (LookupError, UnicodeError):
        return None


def decode_html(body: bytes, content_type: str | None) -> str:
    """Decode an HTML body: header charset, then <meta> charset, then UTF-8.

    An unusable charset name falls through to the next source; undecodable
    bytes become U+FFFD, so this never raises on garbage.
    """
    body = bytes(body)
    for charset in (_charset_from_content_type(content_type), _charset_from_meta(body)):
        text = _try_decode(body, charset)
        if text is not None:
            return text
    # utf-8-sig rather than utf-8 so a BOM does not become a stray U+FEFF.
    return body.decode("utf-8-sig", errors="replace")


# --------------------------------------------------------------------------
# Simhash
# --------------------------------------------------------------------------


def _word_hash(word: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(word.lower().encode("utf-8"), digest_size=8).digest(), "little"
    )


def _rotl64(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & _MASK64


def _mix(a: int, b: int, c: int) -> int:
    """Shingle hash of three word hashes (scalar; used for < 3 words)."""
    z = (a ^ _rotl64(b, _ROT_B) ^ _rotl64(c, _ROT_C)) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _rotl64_array(x: np.ndarray, k: int) -> np.ndarray:
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


def _mix_arrays(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Vectorised :func:`_mix`; uint64 array arithmetic wraps mod 2**64."""
    z = a ^ _rotl64_array(b, _ROT_B) ^ _rotl64_array(c, _ROT_C)
    z = (z ^ (z >> np.uint64(30))) * _U64_MIX1
    z = (z ^ (z >> np.uint64(27))) * _U64_MIX2
    return z ^ (z >> np.uint64(31))


def _word_hash_array(words: list[str]) -> np.ndarray:
    global _word_hashes
    cache = _word_hashes
    if len(cache) > _WORD_HASH_CACHE_MAX:
        cache = _word_hashes = _WordHashCache()
    return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))


def _bit_counts(values: np.ndarray) -> np.ndarray:
    """For each bit b in 0..63, how many of ``values`` have bit b set.

    Equivalent to unpacking every value into 64 bits and summing the
    columns, but about six times faster: shifting by k and masking the low
    bit of each byte leaves bit 8*j + k in byte j, so one uint64 addition
    advances eight counters at once.
    """
    padding = (-len(values)) % _LANE_SUM_MAX
    if padding:  # zeros set no bits, so they do not disturb the counts
        values = np.concatenate([values, np.zeros(padding, dtype=np.uint64)])
    lanes = (values[None, :] >> _BIT_SHIFTS) & _LOW_BIT_OF_EACH_BYTE
    lane_sums = lanes.reshape(8, -1, _LANE_SUM_MAX).sum(axis=2, dtype=np.uint64)
    # Little-endian bytes: byte j of a lane sum is the counter of bit 8*j + k.
    per_shift_byte = (
        lane_sums.astype("<u8", copy=False)
        .view(np.uint8)
        .reshape(8, -1, 8)
        .sum(axis=1, dtype=np.int64)
    )
    return per_shift_byte.T.ravel()


def simhash_words(words: list[str]) -> str:
    """64-bit simhash of the 3-word shingles of ``words``, as 16 hex digits.

    ``words`` are the raw ``\\w+`` matches of the visible text; they are
    lower-cased here, per word, exactly as the contract specifies.
    """
    if not words:
        return _EMPTY_SIMHASH
    hashes = _word_hash_array(words)
    if len(words) < 3:
        padded = [int(h) for h in hashes] + [0] * (3 - len(words))
        return format(_mix(*padded), "016x")
    shingles = _mix_arrays(hashes[:-2], hashes[1:-1], hashes[2:])
    # V[b] = set - unset = 2*set - n; the bit is on iff V[b] > 0.
    majority = 2 * _bit_counts(shingles) > len(shingles)
    value = np.packbits(majority, bitorder="little").view("<u8")[0]
    return format(int(value), "016x")


# --------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 14)
def _resolve_link(base: str, href: str) -> str | None:
    """The defragmented absolute http(s) URL of ``href``, or None.

    Cached because navigation links repeat on every page of a site.
    """
    try:
        absolute = urldefrag(urljoin(base, href)).url
        parts = urlsplit(absolute)
    except ValueError:  # e.g. "http://[::1" (unbalanced IPv6 brackets)
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return absolute


def _base_url(tree, page_url: str) -> str:
    base = tree.css_first("base[href]")
    if base is None:
        return page_url
    href = (base.attributes.get("href") or "").strip()
    if not href:
        return page_url
    try:
        return urljoin(page_url, href)
    except ValueError:
        return page_url


def _links(tree, page_url: str) -> list[str]:
    """The distinct http(s) URLs the page's ``<a href>`` values resolve to, in document order."""
    base = _base_url(tree, page_url)
    # `<a href>` without a value reports None: an empty href, i.e. this page.
    hrefs = dict.fromkeys((node.attributes.get("href") or "").strip() for node in tree.css("a[href]"))
    targets = dict.fromkeys(_resolve_link(base, href) for href in hrefs)  # dicts keep the first occurrence's place
    targets.pop(None, None)
    return list(targets)


# --------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------


def _title(tree) -> str | None:
    node = tree.css_first("title")
    if node is None:
        return None
    return " ".join(node.text().split())


def _words(text: str) -> list[str]:
    """``re.findall(r"\\w+", text)``, computed faster; same list, same order.

    Once every non-word character is a space, ``split()`` yields exactly the
    maximal \\w runs.  ASCII non-word characters go in one C-level bytes
    translation; the few distinct non-ASCII characters of a page are
    replaced one by one (for non-ASCII characters \\w means isalnum()).
    """
    data = text.encode("utf-8", "surrogatepass")
    cleaned = data.translate(_ASCII_NON_WORD_TO_SPACE)
    if text.isascii():
        return cleaned.decode("ascii").split()
    # Deleting every ASCII byte leaves whole UTF-8 sequences: the non-ASCII
    # characters alone, so their set is cheap to take.
    non_ascii = set(data.translate(None, _ASCII_BYTES).decode("utf-8", "surrogatepass"))
    non_word = [char for char in non_ascii if not char.isalnum()]
    if len(non_word) > _MAX_CHARS_TO_REPLACE:
        return _WORD_RE.findall(text)
    cleaned_text = cleaned.decode("utf-8", "surrogatepass")
    for char in non_word:
        cleaned_text = cleaned_text.replace(char, " ")
    return cleaned_text.split()


def _visible_words(tree) -> list[str]:
    """The ``\\w+`` tokens of the body text, one pass for count and simhash."""
    tree.strip_tags(_NON_VISIBLE_TAGS)
    # A frameset document has no <body>; fall back to the whole document.
    scope = tree.body if tree.body is not None else tree.root
    if scope is None:
        return []
    # The separator keeps "<p>a</p><p>b</p>" two words instead of "ab".
    return _words(scope.text(separator=" "))


def parse_page(url: str, body: bytes, content_type: str | None, want_links: bool = False) -> dict:
    """The parse fields of one fetched page (keys: :data:`PARSE_FIELDS`).

    Non-HTML bodies get only ``sha256``; the other fields are None.  With
    ``want_links``, the distinct absolute link URLs themselves come back
    too, under ``"link_urls"`` (for following links; not a record field).
    """
    record = unparsed_fields(body)
    if not is_html(content_type, body):
        return record
    tree = _HTMLParser(decode_html(body, content_type))
    record["title"] = _title(tree)
    links = _links(tree, url)
    record["links"] = len(links)
    if want_links:
        record["link_urls"] = links
    # Last, because it strips the non-visible elements out of the tree.
    words = _visible_words(tree)
    record["words"] = len(words)
    record["simhash"] = simhash_words(words)
    return record


def _error_summary(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_ERROR_MAX_CHARS]


class ParseTimeout(Exception):
    """Raised inside a worker when one page has used up its parse time."""


_alarm_armed = False


def _on_alarm(signum, frame):
    if _alarm_armed:  # an alarm arriving after the page finished must not hit the next line
        raise ParseTimeout()


_clock = None  # in a worker: (shared array, slot) where it posts when its current page started


def init_worker(clock=None, next_slot=None) -> None:
    """Pool initializer: Ctrl-C is the parent's to handle; SIGALRM bounds each page.

    ``clock`` is a shared array of (page start time, pid) pairs, one per
    worker: the parent's watchdog reads it to kill a worker stuck in C code,
    where no signal handler runs.  The worker exits as soon as its parent is
    gone (``kill -9`` of the crawl included): see :mod:`crawler.processes`.
    """
    global _clock
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    follow_parent()
    signal.signal(signal.SIGALRM, _on_alarm)
    if clock is not None:
        with next_slot.get_lock():
            slot = next_slot.value
            next_slot.value += 1
        clock[2 * slot + 1] = os.getpid()
        _clock = (clock, 2 * slot)


def parse_batch(
    items: list[tuple[str, bytes, str | None]],
    timeout: float | None = None,
    want_links: bool = False,
) -> tuple[list[dict | str], float]:
    """Parse several pages in one worker call and report its CPU time.

    Batching amortises the pickling and queue round trip of a pool task.
    A page that makes :func:`parse_page` raise yields an ``"ExcType: msg"``
    string in its slot instead of failing the whole batch.  With ``timeout``
    (only in a worker set up by :func:`init_worker`), a page still being
    parsed after that many seconds is stopped by SIGALRM and yields an error
    string; the parent kills workers stuck where a signal cannot reach them
    (inside C code).
    """
    global _alarm_armed
    started = time.process_time()
    results: list[dict | str] = []
    for url, body, content_type in items:
        try:
            if _clock:
                _clock[0][_clock[1]] = time.monotonic()
            if timeout:
                _alarm_armed = True
                signal.setitimer(signal.ITIMER_REAL, timeout)
            outcome: dict | str = parse_page(url, body, content_type, want_links)
            _alarm_armed = False
        except ParseTimeout:
            outcome = f"parse timed out after {timeout:g} s"
        except Exception as exc:
            outcome = _error_summary(exc)
        finally:
            _alarm_armed = False
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if _clock:
                _clock[0][_clock[1]] = 0.0
        results.append(outcome)
    return results, time.process_time() - started
