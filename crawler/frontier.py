"""Following links: URL normalisation and a breadth-first frontier.

The pipeline crawls one depth level per engine run: the list (depth 0),
then the links found on it (depth 1), and so on.  Levels keep the crawl
breadth-first without asking engines to accept URLs while they run.

Memory: the queued URLs wait in a file, not in memory; what stays in memory
is one 64-bit hash per URL seen (about 60 bytes each in a Python set), which
is what deduplication needs.

The file is the crawl's state: an append-only log of JSON lines, one fact
each (``["queue", depth, url, parent]``: a link queued at a depth from a
parent; ``["seen", url]``: a list line or a redirect target crawled;
``["level", n]``: a level begun; ``["complete"]``: the crawl finished).  With ``--out`` it lives beside the output
(:func:`state_path`) and survives the process: written before the record of
the page whose links it holds, so a ``kill -9`` at any moment loses at most
the pages in flight, and ``--resume`` rebuilds the frontier from it
(:meth:`Frontier.restore`) while the records stay the judge of what is done.
"""

from __future__ import annotations

import io
import json
import tempfile
import threading
from collections import Counter
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

from .urls import DEFAULT_PORTS, host_key, url_key



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


def state_path(out: str, engine: str) -> str:
    """Where a crawl with ``--out OUT --depth N`` keeps its frontier for one engine: ``OUT.ENGINE.frontier``."""
    return f"{out}.{engine}.frontier"


class Frontier:
    """Deduplicates links and queues each level's URLs in a log file (persistent with a ``path``).

    ``fresh``: an existing log at ``path`` is replaced (a new crawl), not added to.

    List URLs are read lazily, so a page of the list may link to a list line
    not read yet: that link is queued before the line marks it seen.  Such a
    URL is crawled once, at depth 0: :meth:`listed` notes the list lines that
    were queued (or seen) already, and :meth:`level` passes over them.
    """

    def __init__(self, max_pages: int | None, same_host: bool, path: str | None = None, fresh: bool = False):
        self.max_pages = max_pages
        self.same_host = same_host
        self.path = path
        self.discovered = 0  # links found on pages of a level that may be followed
        self.queued = 0  # links queued to be crawled (by this process)
        self.restored = 0  # links queued by the stopped crawl, read back by restore()
        self.listed_late = 0  # queued links passed over at their level: list lines read after they were queued
        self.duplicates = 0  # links already seen or queued
        self.off_host = 0
        self.over_limit = 0
        self.levels_begun = 0  # deepest level begun, as the log says
        self.complete = False  # the log says the crawl ran to its end
        self._seen: set[int] = set()
        self._listed_late: set[int] = set()  # list URLs that were already seen (or queued as links) when read
        self._at_depth: Counter[int] = Counter()  # URLs queued per depth (restored ones included)
        self._dirty = False  # facts written and not flushed yet
        self._lock = threading.Lock()
        if path is None:
            self._log = tempfile.NamedTemporaryFile(mode="a+", encoding="utf-8", prefix="crawl-frontier-")
        else:
            self._log = open(path, "w+" if fresh else "a+", encoding="utf-8")
            if self._log.tell() and not _ends_with_newline(path):
                self._log.write("\n")  # after a torn last line, start clean

    # --- the log ----------------------------------------------------------------------

    def _append(self, *fact) -> None:
        self._log.write(json.dumps(fact, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._dirty = True

    def sync(self) -> None:
        """Hand every fact written so far to the OS (it then survives a ``kill -9`` of this process)."""
        with self._lock:
            if self._dirty:
                self._log.flush()
                self._dirty = False

    def _facts(self, end: int | None = None) -> Iterator[list]:
        """Every whole fact in the log, up to byte ``end``; a torn line is skipped."""
        self._log.flush()
        read = 0
        with open(self._log.name, "rb") as log:
            for line in log:
                read += len(line)
                if end is not None and read > end:
                    return
                try:
                    fact = json.loads(line)
                except ValueError:
                    continue
                if isinstance(fact, list) and fact:
                    yield fact

    def restore(self) -> None:
        """Take up a stopped crawl: what it queued and saw, and how far it got."""
        with self._lock:
            for fact in self._facts():
                kind = fact[0]
                if kind == "queue" and len(fact) == 4:
                    self._seen.add(url_key(fact[2]))
                    self.restored += 1
                    self._at_depth[fact[1]] += 1
                elif kind == "seen" and len(fact) == 2:
                    self._seen.add(url_key(fact[1]))
                elif kind == "level" and len(fact) == 2:
                    self.levels_begun = max(self.levels_begun, int(fact[1]))
                elif kind == "complete":
                    self.complete = True

    def begin_level(self, depth: int) -> None:
        """Mark level ``depth`` begun: every URL it holds is queued by now."""
        with self._lock:
            if depth > self.levels_begun:
                self.levels_begun = depth
                self._append("level", depth)
                self._log.flush()
                self._dirty = False

    def finish(self) -> None:
        """Mark the crawl run to its end (a later ``--resume`` has nothing to do)."""
        with self._lock:
            self.complete = True
            self._append("complete")
            self._log.flush()
            self._dirty = False

    # --- deduplication and queueing ---------------------------------------------------

    def seen(self, url: str | None) -> None:
        """Mark a URL crawled (where a redirect ended); the fact goes out with the next offer or :meth:`sync`."""
        canonical = normalize(url) if url else None
        if canonical:
            key = url_key(canonical)
            with self._lock:
                if key not in self._seen:
                    self._seen.add(key)
                    if self.path is not None:
                        self._append("seen", canonical)

    def listed(self, url: str) -> None:
        """Mark a list line crawled (depth 0), even if a link to it was queued before it was read."""
        canonical = normalize(url) if url else None
        if canonical:
            key = url_key(canonical)
            with self._lock:
                if key in self._seen:
                    self._listed_late.add(key)
                else:
                    self._seen.add(key)
                    if self.path is not None:
                        self._append("seen", canonical)

    def offer(self, links: list[str], parent: str, list_urls: int, depth: int | None = None) -> None:
        """Queue at ``depth`` the new ones among ``links``, found on ``parent``, within the limits.

        ``list_urls``: list lines read so far; they are crawled whatever the
        limit, and count towards it.  The log is flushed before this returns,
        so the page's record, written after, never outlives its links.
        """
        parent_host = host_key(parent) if self.same_host else None
        if depth is None:  # the level after the one next_level() gave last
            depth = getattr(self, "_levels_taken", 0) + 1
        with self._lock:
            for link in links:
                canonical = normalize(link)
                if canonical is None:
                    continue
                self.discovered += 1
                if parent_host is not None and host_key(canonical) != parent_host:
                    self.off_host += 1
                    continue
                key = url_key(canonical)
                if key in self._seen:
                    self.duplicates += 1
                    continue
                if self.max_pages is not None and list_urls + self.queued + self.restored >= self.max_pages:
                    self.over_limit += 1
                    continue
                self._seen.add(key)
                self.queued += 1
                self._at_depth[depth] += 1
                self._append("queue", depth, canonical, parent)
            self._log.flush()
            self._dirty = False

    def queued_at(self, depth: int) -> Iterator[tuple[str, str]]:
        """The (url, parent) pairs queued at ``depth``, in the order they were found."""
        with self._lock:
            self._log.flush()
            self._dirty = False
            end = self._log.tell()  # links found from here on belong to deeper levels
        for fact in self._facts(end):
            if fact[0] == "queue" and len(fact) == 4 and fact[1] == depth:
                yield fact[2], fact[3]

    def count_at(self, depth: int) -> int:
        """URLs queued at ``depth`` (by this process or, restored, by the stopped crawl)."""
        with self._lock:
            return self._at_depth[depth]

    def level(self, depth: int) -> Iterator[tuple[str, str]]:
        """The (url, parent) pairs to crawl at ``depth``: :meth:`queued_at` without the list's URLs.

        A URL queued as a link before its list line was read is crawled at
        depth 0 only (counted in ``stats()["listed"]``).
        """
        for url, parent in self.queued_at(depth):
            if self._listed_late and url_key(url) in self._listed_late:
                self.listed_late += 1
                continue
            yield url, parent

    def next_level(self) -> Iterator[tuple[str, str]]:
        """The (url, parent) pairs of the next level (for a caller that does not count levels)."""
        self._levels_taken = getattr(self, "_levels_taken", 0) + 1
        return self.level(self._levels_taken)

    def stats(self) -> dict:
        return {
            "discovered": self.discovered,
            "queued": self.queued,
            "deduplicated": self.duplicates,
            "off_host": self.off_host,
            "over_max_pages": self.over_limit,
            "restored": self.restored,
            "listed": self.listed_late,
        }

    def close(self) -> None:
        self._log.close()


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, io.SEEK_END)
        return f.read(1) == b"\n"
