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
import os
import re
import signal
import time
from urllib.parse import urldefrag, urljoin, urlsplit


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

_WORD_RE = re.compile(r"\w+")
_CHARSET_PARAM_RE = re.compile(r"""charset\s*=\s*["']?\s*([^\s"';,]+)""", re.IGNORECASE)
# One pattern covers both <meta charset="x"> and
# <meta http-equiv="Content-Type" content="text/html; charset=x">: in either
# form the word "charset=" appears inside the meta tag.
_META_CHARSET_RE = re.compile(
    rb"""<meta\b[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9._:\-]+)""", re.IGNORECASE
)



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



def simhash_words(words: list[str]) -> str:
    """The page's simhash (see :mod:`crawler.simhash`), imported on first use: numpy stays out of the crawl's process."""
    from .simhash import simhash_words as simhash

    return simhash(words)


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
    # numpy is loaded now, as the worker starts: on the first page it would count against --parse-timeout
    from . import simhash  # noqa: F401
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
