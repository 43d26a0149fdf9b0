"""Following links: URL normalisation and a breadth-first frontier.

The pipeline crawls one depth level per engine run: the list (depth 0),
then the links found on it (depth 1), and so on.  Levels keep the crawl
breadth-first without asking engines to accept URLs while they run.

Memory: the URLs of the next level wait in a temporary file, not in memory;
what stays in memory is one 64-bit hash per URL seen (about 60 bytes each in
a Python set), which is what deduplication needs.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize(url: str) -> str | None:
    """The canonical form of an http(s) URL, or None if it is not one.

    Scheme and host lower-cased, default port dropped, fragment dropped,
    ``.`` and ``..`` segments resolved, an empty path made ``/``.  The query
    is kept as it is: reordering it can change what a server answers.
    """
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not host:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    if parts.username is not None:
        netloc = f"{parts.username}{':' + parts.password if parts.password is not None else ''}@{netloc}"
    return urlunsplit((scheme, netloc, _remove_dot_segments(parts.path) or "/", parts.query, ""))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, on whole segments."""
    output: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if len(output) > 1:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/".join(output)


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or DEFAULT_PORTS.get(parts.scheme, 0)}"


def _key(url: str) -> int:
    return int.from_bytes(hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class Frontier:
    """Deduplicates links and queues the next level's URLs on disk."""

    def __init__(self, max_pages: int | None, same_host: bool):
        self.max_pages = max_pages
        self.same_host = same_host
        self.discovered = 0  # links found on pages of a level that may be followed
        self.queued = 0  # links queued to be crawled
        self.duplicates = 0  # links already seen or queued
        self.off_host = 0
        self.over_limit = 0
        self._seen: set[int] = set()
        self._lock = threading.Lock()
        self._spool = tempfile.TemporaryFile(mode="w+", encoding="utf-8")

    def seen(self, url: str | None) -> None:
        """Mark a URL crawled (a list line, or where a redirect ended)."""
        canonical = normalize(url) if url else None
        if canonical:
            with self._lock:
                self._seen.add(_key(canonical))

    def offer(self, links: list[str], parent: str, list_urls: int) -> None:
        """Queue the new ones among ``links``, found on ``parent``, within the limits.

        ``list_urls``: list lines read so far; they are crawled whatever the
        limit, and count towards it.
        """
        parent_host = _host(parent) if self.same_host else None
        with self._lock:
            for link in links:
                canonical = normalize(link)
                if canonical is None:
                    continue
                self.discovered += 1
                if parent_host is not None and _host(canonical) != parent_host:
                    self.off_host += 1
                    continue
                key = _key(canonical)
                if key in self._seen:
                    self.duplicates += 1
                    continue
                if self.max_pages is not None and list_urls + self.queued >= self.max_pages:
                    self.over_limit += 1
                    continue
                self._seen.add(key)
                self.queued += 1
                self._spool.write(f"{canonical}\t{parent}\n")

    def next_level(self) -> Iterator[tuple[str, str]]:
        """The (url, parent) pairs queued so far; the queue starts empty again."""
        with self._lock:
            spool, self._spool = self._spool, tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        spool.seek(0)
        with spool:
            for line in spool:
                url, _, parent = line.rstrip("\n").partition("\t")
                yield url, parent

    def stats(self) -> dict:
        return {
            "discovered": self.discovered,
            "queued": self.queued,
            "deduplicated": self.duplicates,
            "off_host": self.off_host,
            "over_max_pages": self.over_limit,
        }

    def close(self) -> None:
        self._spool.close()
