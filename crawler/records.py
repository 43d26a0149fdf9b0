"""The record of SPEC §6: its keys, and the one place that builds it.

Every record, whichever engine fetched the URL and wherever it was parsed
(the parse stage, a dask worker), is made by :func:`make_record` from a
:class:`~crawler.engines.FetchResult` and the page's parse fields.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from .engines import FetchResult

RECORD_KEYS = (
    "engine",
    "url",
    "final_url",
    "ok",
    "status",
    "error",
    "detail",
    "bytes",
    "fetch_ms",
    "content_type",
    "title",
    "links",
    "words",
    "simhash",
    "sha256",
    "depth",
    "parent",
)
# With --record-links, records carry one more key, last: the page's link URLs (SPEC §6).
LINKS_KEY = "link_urls"
# The fields the parse stage fills in (a page that is not parsed has them null, but for sha256).
PARSE_FIELDS = ("title", "links", "words", "simhash", "sha256")


def record_keys(record_links: bool = False) -> tuple[str, ...]:
    """The keys of every record, in order: :data:`RECORD_KEYS`, and ``link_urls`` with ``--record-links``."""
    return RECORD_KEYS + (LINKS_KEY,) if record_links else RECORD_KEYS


def has_body(result: "FetchResult") -> bool:
    """Whether the record hashes a body: a response came, and its body was not cut at ``--max-bytes``."""
    return result.status is not None and result.error != "too_large"


def unparsed_fields(body: bytes | None) -> dict:
    """The parse fields of a page that is not parsed: all null but the body's SHA-256 (null without a body)."""
    return {
        "title": None,
        "links": None,
        "words": None,
        "simhash": None,
        "sha256": hashlib.sha256(body).hexdigest() if body is not None else None,
    }


def make_record(
    engine: str,
    result: "FetchResult",
    parsed: Mapping[str, object] | None = None,
    parse_error: str | None = None,
    depth: int = 0,
    parent: str | None = None,
    record_links: bool = False,
) -> dict:
    """The record of one URL; with ``record_links``, ``link_urls`` too (None when the page was not parsed)."""
    fields = parsed or unparsed_fields(result.body if has_body(result) else None)
    failed_parse = parse_error is not None and result.error is None
    record = {
        "engine": engine,
        "url": result.url,
        "final_url": result.final_url,
        "ok": result.ok and parse_error is None,
        "status": result.status,
        "error": "parse" if failed_parse else result.error,
        "detail": parse_error if failed_parse else result.detail,
        "bytes": len(result.body) if result.size is None else result.size,
        "fetch_ms": round(result.elapsed * 1000, 2),
        "content_type": result.content_type,
        "title": fields.get("title"),
        "links": fields.get("links"),
        "words": fields.get("words"),
        "simhash": fields.get("simhash"),
        "sha256": fields.get("sha256") or (hashlib.sha256(result.body).hexdigest() if has_body(result) else None),
        "depth": depth,
        "parent": parent,
    }
    if record_links:
        links = fields.get(LINKS_KEY)
        record[LINKS_KEY] = list(links) if links is not None else None
    return record
