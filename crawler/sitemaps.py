"""``--sitemap``: turn sitemaps into depth-0 URLs for the crawl, before it starts.

A sitemap *source* is a sitemap (``<urlset>``), a sitemap index
(``<sitemapindex>``), either of them gzipped, a robots.txt (its ``Sitemap:``
lines are sitemaps to read) or a plain-text sitemap (one URL per line, as
sitemaps.org allows).  :func:`expand_sitemaps` fetches the sources with the
caller's ``fetch`` — the chosen engine, so the same timeouts, size limit,
retries and politeness as the crawl — follows indexes breadth-first, one
``fetch`` call (one engine run) per level, and yields, as it goes:

* :class:`PageURL` — a page URL for the crawl, in document order within a
  sitemap (``<loc>`` text stripped, nothing else changed: a relative or
  garbage value is passed on as it is, so that the crawl records it as
  ``invalid_url`` instead of losing it; an empty ``<loc/>`` is skipped);
* :class:`SitemapFailure` — a sitemap document that gave no (or not all of
  its) URLs, as a :class:`~crawler.FetchResult` with ``error`` set, ready to
  become a §6 record: the fetch's own error (``http_status``, ``timeout``,
  ``too_large``…), or ``parse`` with a ``detail`` starting ``"sitemap: "``
  for a document that came but is not a usable sitemap (bad XML, a DTD or
  entity declaration refused, bad gzip, not a sitemap at all), ``too_large``
  for gzip that inflates past ``max_bytes``, and ``other`` for a sitemap not
  fetched because of ``max_sitemaps`` or ``max_depth``.

Choices where the issue is silent (after Scrapy's ``SitemapSpider`` and
Crawlee's sitemap loader):

* What a document *is* comes from its bytes, not its name or Content-Type:
  gzip when it starts with the gzip magic (a ``.xml.gz`` that the server
  sent with ``Content-Encoding: gzip`` arrives already decoded and is read
  as XML, as Scrapy does); a path ending in ``/robots.txt`` is a robots.txt;
  else XML when its first non-space byte is ``<``; else a robots.txt when a
  line starts with ``Sitemap:``; else a text sitemap when its first line is
  an ``http(s)`` URL; else a failure.
* A robots.txt is read by protego (as the crawl reads it); its relative
  ``Sitemap:`` values are resolved against its URL (as Scrapy does).  A
  robots.txt is one level of nesting, like an index, and one document.
  A robots.txt without ``Sitemap:`` lines is a failure (``parse``): the user
  asked for its sitemaps and there are none.
* A document that breaks off (bad XML past some ``<loc>``) keeps the URLs
  read before the break (Scrapy parses with ``recover=True``) *and* gets its
  failure.
* Only ``<url><loc>`` (``<urlset>``) and ``<sitemap><loc>``
  (``<sitemapindex>``) count, compared by local name so that any namespace,
  or none, is accepted; ``<image:loc>``, ``<xhtml:link>`` alternates and
  the like are ignored.
* Each sitemap URL is fetched at most once (the ``--sitemap`` list included,
  and a redirect's target counts as fetched); a repeat is skipped silently,
  since its URLs were given once.  Page URLs are *not* de-duplicated: the
  crawl gets one record per listed URL, as it does for duplicate lines of a
  URL file, and the memory stays bounded.
* Past ``max_sitemaps`` documents, or ``max_depth`` levels of nesting below
  the sources, each sitemap not fetched yields a failure (``other``), never
  a silent drop.

Memory: a document's body is at most ``max_bytes`` (the engine's limit),
gzip is inflated into at most ``max_bytes`` more, and the XML is parsed
streaming (expat events into a small target: no tree is built), its URLs
handed on every 64 KiB of input.  What the expansion keeps is the set of
sitemap URLs seen and one level's queue (both at most ``max_sitemaps``).
XML is parsed with defusedxml: a DTD is refused outright, so no entity is
ever declared, expanded or fetched (billion laughs, external entities).
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from urllib.parse import urljoin, urlsplit
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser
from protego import Protego

from .engines import FetchResult

__all__ = ["PageURL", "SitemapError", "SitemapEvent", "SitemapFailure", "URLSpool", "expand_sitemaps", "gunzip", "read_document"]

GZIP_MAGIC = b"\x1f\x8b"
FEED_CHUNK = 64 * 1024  # XML bytes given to the parser at a time: the URLs found are handed on after each
DEFAULT_MAX_SITEMAPS = 1000
DEFAULT_MAX_DEPTH = 5

_SITEMAP_LINE = re.compile(rb"^[ \t]*sitemap[ \t]*:", re.IGNORECASE | re.MULTILINE)
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class PageURL:
    """A page URL for the crawl (depth 0), and the sitemap document that listed it."""

    url: str
    sitemap: str


@dataclass(frozen=True)
class SitemapFailure:
    """A sitemap document that failed, as the record-ready result of its fetch.

    ``result.url`` is the sitemap's URL, ``result.error`` a §6 code and
    ``result.detail`` the reason.  ``parent`` is the ``final_url`` of the
    index or robots.txt that listed it (None for a ``--sitemap`` source) and
    ``depth`` its level of nesting below the sources.
    """

    result: FetchResult
    parent: str | None = None
    depth: int = 0


SitemapEvent = PageURL | SitemapFailure


class SitemapError(Exception):
    """A fetched document that is not a usable sitemap: ``code`` is the §6 error, ``detail`` the reason."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


# --- one document ---------------------------------------------------------------------


def read_document(result: FetchResult, max_bytes: int) -> Iterator[tuple[str, str]]:
    """The entries of one fetched sitemap document, in document order.

    Yields ``("page", url)`` for a page to crawl and ``("sitemap", url)`` for
    a sitemap to read next (an index's ``<loc>``, a robots.txt ``Sitemap:``
    line).  Raises :class:`SitemapError` when the document is unusable —
    possibly after some entries, when it breaks off part-way.  ``result``
    must be a successful fetch.
    """
    body = result.body
    if not body:
        if result.size or result.parsed is not None:
            raise SitemapError(
                "other", "sitemap: the engine handed back no body (it parses where it fetches); cannot read the sitemap"
            )
        raise SitemapError("parse", "sitemap: empty document")
    if body.startswith(GZIP_MAGIC):
        body = gunzip(body, max_bytes)
        if not body:
            raise SitemapError("parse", "sitemap: empty document once decompressed")
    url = result.final_url or result.url
    if _path(result.url).endswith("/robots.txt") or _path(url).endswith("/robots.txt"):
        yield from _robots_entries(body, url)
        return
    if body.startswith(_UTF16_BOMS):
        yield from _xml_entries(body)
        return
    text_start = body.removeprefix(_UTF8_BOM).lstrip()
    if text_start[:1] == b"<":
        yield from _xml_entries(text_start)  # from its first "<": expat refuses space before <?xml
        return
    if _SITEMAP_LINE.search(body):
        yield from _robots_entries(body, url)
        return
    text = text_start.decode("utf-8", errors="replace")
    first = text[: text.find("\n") if "\n" in text[:16384] else 16384].strip().lower()
    if first.startswith(("http://", "https://")):
        for line in io.StringIO(text, newline=None):  # sitemaps.org's text format: one URL per line
            line = line.strip()
            if line:
                yield "page", line
        return
    named_gz = " (named .gz but not gzip)" if _path(result.url).endswith(".gz") else ""
    raise SitemapError("parse", f"sitemap: neither XML, a robots.txt nor a text sitemap{named_gz}")


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """Inflate gzip ``data`` (several members allowed), never past ``max_bytes`` decoded bytes.

    More is :class:`SitemapError` ``too_large`` after at most ``max_bytes + 1``
    bytes were produced; broken or truncated gzip is ``parse``.
    """
    parts: list[bytes] = []
    size = 0
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        while True:
            out = inflater.decompress(data, max_bytes - size + 1)
            data = inflater.unconsumed_tail
            size += len(out)
            if size > max_bytes:
                raise SitemapError("too_large", f"sitemap: gzip larger than {max_bytes} bytes once decompressed")
            parts.append(out)
            if inflater.eof:
                rest = inflater.unused_data
                if not rest.startswith(GZIP_MAGIC):
                    break  # trailing bytes after the last member are ignored, as gzip(1) does
                inflater, data = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
            elif not data and not out:
                raise SitemapError("parse", "sitemap: truncated gzip")
    except zlib.error as exc:
        raise SitemapError("parse", f"sitemap: bad gzip: {exc}") from None
    return b"".join(parts)


def _path(url: str) -> str:
    try:
        return urlsplit(url).path.lower()
    except ValueError:
        return ""


def _robots_entries(body: bytes, base: str) -> Iterator[tuple[str, str]]:
    text = body.decode("utf-8", errors="replace")
    found = False
    for value in Protego.parse(text).sitemaps:
        found = True
        try:
            yield "sitemap", urljoin(base, value)
        except ValueError:  # a value urljoin cannot read: passed on, its fetch says invalid_url
            yield "sitemap", value
    if not found:
        raise SitemapError("parse", "sitemap: robots.txt has no Sitemap: lines")


class _NotASitemap(Exception):
    pass


class _Target:
    """Expat events in, ``<loc>`` values out: keeps the nesting depth and one ``<loc>``'s text, no tree."""

    def __init__(self) -> None:
        self.depth = 0
        self.kind: str | None = None  # "page" for <urlset>, "sitemap" for <sitemapindex>
        self.entry = False  # inside <url> of a urlset / <sitemap> of an index
        self.text: list[str] | None = None  # inside that entry's <loc>
        self.found: list[tuple[str, str]] = []

    def start(self, tag: str, attrib) -> None:
        self.depth += 1
        local = tag.rpartition("}")[2]
        if self.depth == 1:
            if local == "urlset":
                self.kind = "page"
            elif local == "sitemapindex":
                self.kind = "sitemap"
            else:
                raise _NotASitemap(local)
        elif self.depth == 2:
            self.entry = local == ("url" if self.kind == "page" else "sitemap")
        elif self.depth == 3 and self.entry and local == "loc":
            self.text = []

    def data(self, text: str) -> None:
        if self.text is not None:
            self.text.append(text)

    def end(self, tag: str) -> None:
        if self.depth == 3 and self.text is not None:
            value = "".join(self.text).strip()
            self.text = None
            if value:
                self.found.append((self.kind, value))
        self.depth -= 1

    def close(self) -> None:
        return None


def _xml_entries(body: bytes) -> Iterator[tuple[str, str]]:
    target = _Target()
    # forbid_dtd: a sitemap never needs one, and with none no entity can be declared or fetched
    parser = DefusedXMLParser(target=target, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    view = memoryview(body)
    try:
        for offset in range(0, len(view), FEED_CHUNK):
            parser.feed(bytes(view[offset : offset + FEED_CHUNK]))
            if target.found:
                yield from target.found
                target.found.clear()
        parser.close()
        yield from target.found
    except _NotASitemap as exc:
        raise SitemapError("parse", f"sitemap: root element <{exc}> is neither <urlset> nor <sitemapindex>") from None
    except DefusedXmlException as exc:
        raise SitemapError("parse", f"sitemap: refused: {type(exc).__name__} (no DTD or entity declarations)") from None
    except ParseError as exc:
        yield from target.found  # what came before the break
        raise SitemapError("parse", f"sitemap: bad XML: {exc}") from None
    except (LookupError, ValueError) as exc:  # e.g. an encoding expat cannot read
        raise SitemapError("parse", f"sitemap: bad XML: {exc}") from None
    finally:
        view.release()


# --- the expansion --------------------------------------------------------------------


def expand_sitemaps(
    sources: Iterable[str],
    fetch: Callable[[list[str]], Iterable[FetchResult]],
    *,
    max_bytes: int,
    max_sitemaps: int = DEFAULT_MAX_SITEMAPS,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Iterator[SitemapEvent]:
    """Read the sitemaps ``sources`` (and the ones they list) and yield their page URLs and failures.

    ``fetch(urls)`` fetches a list of sitemap URLs and yields one
    :class:`FetchResult` per URL, in any order, bodies included: the chosen
    engine with parsing off, e.g. ``lambda urls: engine.fetch(urls,
    settings.with_run(parse=False, want_links=False, want_bodies=True))`` (as
    :func:`crawler.pipeline.run_engine` does for ``--sitemap``).  It is called once
    per level of nesting (breadth-first), never while another call's results
    are still being read.  ``max_bytes`` bounds a gzip document once inflated
    (pass ``--max-bytes``).  At most ``max_sitemaps`` documents are fetched
    in all, and sitemaps at most ``max_depth`` levels below the sources.

    The generator's return value (``StopIteration.value``) counts what it did:
    ``{"sitemaps": documents fetched, "pages": page URLs, "failures": failures}``.
    Closing it early closes the engine's iterator in progress.
    """
    expansion = _Expansion(max_bytes, max_sitemaps, max_depth)
    level: dict[str, str | None] = {}  # sitemap URL -> parent, in the order found
    yield from expansion.queue_sources(sources, level)
    depth = 0
    while level:
        found: dict[str, str | None] = {}
        results = iter(fetch(list(level)))
        try:
            for result in results:
                yield from expansion.read(result, level.get(result.url), depth, found)
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        level = found
        depth += 1
    return expansion.counts


class _Expansion:
    """What one :func:`expand_sitemaps` call keeps: the sitemap URLs seen, its counts, its limits."""

    def __init__(self, max_bytes: int, max_sitemaps: int, max_depth: int) -> None:
        self.max_bytes = max_bytes
        self.max_sitemaps = max_sitemaps
        self.max_depth = max_depth
        self.seen: set[str] = set()
        self.counts = {"sitemaps": 0, "pages": 0, "failures": 0}

    def not_fetched(self, url: str, parent: str | None, depth: int, why: str) -> SitemapFailure:
        self.counts["failures"] += 1
        return SitemapFailure(FetchResult(url=url, error="other", detail=f"sitemap: not fetched: {why}"), parent, depth)

    def queue_sources(self, sources: Iterable[str], level: dict[str, str | None]) -> Iterator[SitemapFailure]:
        """Put the sources in ``level`` (the first to fetch), once each, up to the limit."""
        for source in sources:
            source = source.strip()
            if not source or source in self.seen:
                continue
            if len(self.seen) >= self.max_sitemaps:
                yield self.not_fetched(source, None, 0, f"the limit of {self.max_sitemaps} sitemap documents is reached")
                continue
            self.seen.add(source)
            level[source] = None

    def read(self, result: FetchResult, parent: str | None, depth: int, found: dict[str, str | None]) -> Iterator[SitemapEvent]:
        """One fetched sitemap: its page URLs, its failure, and its sitemaps put in ``found`` (the next level)."""
        self.counts["sitemaps"] += 1
        if result.final_url:
            self.seen.add(result.final_url)
        if not result.ok:
            if result.error is None:  # a plugin's non-2xx (or no response) without a code
                code = "other" if result.status is None else "http_status"
                result = replace(result, error=code, detail=result.detail or f"HTTP {result.status}")
            self.counts["failures"] += 1
            yield SitemapFailure(result, parent, depth)
            return
        here = result.final_url or result.url
        try:
            for kind, url in read_document(result, self.max_bytes):
                if kind == "page":
                    self.counts["pages"] += 1
                    yield PageURL(url, result.url)
                else:
                    yield from self._listed(url, here, depth + 1, found)
        except SitemapError as exc:
            self.counts["failures"] += 1
            yield SitemapFailure(replace(result, error=exc.code, detail=exc.detail), parent, depth)

    def _listed(self, url: str, here: str, depth: int, found: dict[str, str | None]) -> Iterator[SitemapFailure]:
        """A sitemap listed by ``here``, ``depth`` levels below the sources: queued in ``found``, or not fetched."""
        if url in self.seen:
            return  # fetched or queued already: an index loop, or listed twice
        if depth > self.max_depth:
            yield self.not_fetched(url, here, depth, f"more than {self.max_depth} levels of sitemap indexes")
        elif len(self.seen) >= self.max_sitemaps:
            yield self.not_fetched(url, here, depth, f"the limit of {self.max_sitemaps} sitemap documents is reached")
        else:
            self.seen.add(url)
            found[url] = here


# --- page URLs kept for the crawl --------------------------------------------------


class URLSpool:
    """Page URLs kept in an anonymous temporary file while the sitemaps are read, read back lazily.

    The crawl can only start once the sitemaps are read (an engine cannot run
    inside another's run), so their URLs wait here rather than in memory.
    Each is one JSON line, so a ``<loc>`` holding a line break stays one URL.
    Iterate as many times as needed (e.g. once per engine); ``close()``
    removes the file.
    """

    def __init__(self, directory: str | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)
        self.count = 0

    def add(self, url: str) -> None:
        self._file.write(json.dumps(url, ensure_ascii=False).encode() + b"\n")
        self.count += 1

    def __iter__(self) -> Iterator[str]:
        self._file.flush()
        fd = self._file.fileno()
        offset, pending = 0, b""
        while True:
            chunk = os.pread(fd, FEED_CHUNK, offset)
            if not chunk:
                return
            offset += len(chunk)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                yield json.loads(line)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> URLSpool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
