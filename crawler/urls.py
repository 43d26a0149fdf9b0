"""Reading the URL list: lazily, forgivingly, one entry per meaningful line."""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from typing import BinaryIO, Iterator
from urllib.parse import urlsplit

from .errors import CrawlerError

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_LINE = 1 << 20  # a line longer than this (1 MiB, without its line end) is never fetched nor held
OVERLONG_PREFIX = 1000  # characters of an over-long line kept in its record's ``url``


class OverlongLine(str):
    """A URL-file line longer than :data:`MAX_LINE`: it gets one ``invalid_url`` record and is never fetched.

    The string itself is what the record's ``url`` holds: the line's first
    :data:`OVERLONG_PREFIX` characters and ``…`` (the line was never held
    whole), the same on every read of the file, so ``--resume`` recognises
    it.  ``length`` is the line's size in bytes; ``detail`` the record's
    ``detail``.
    """

    length: int
    detail: str

    @classmethod
    def make(cls, head: bytes, length: int) -> "OverlongLine":
        text = head.decode("utf-8", errors="replace").replace("\x00", "\ufffd")[:OVERLONG_PREFIX].rstrip()
        line = cls(text + "…")
        line.length = length
        line.detail = f"line of {length:,} bytes is longer than the {MAX_LINE:,}-byte limit: not fetched"
        return line


def read_url_lines(stream: BinaryIO) -> Iterator[str]:
    """Yield each URL line of ``stream``: stripped, blank and ``#`` lines skipped.

    Bytes that are not UTF-8 are kept as escapes (``surrogateescape`` turned
    into ``\\ufffd``) so that such a line still yields a record, never a crash.
    A leading BOM and CRLF endings are ignored.  A line longer than
    :data:`MAX_LINE` bytes is read through in bounded pieces and yielded as an
    :class:`OverlongLine` (unless it is blank or a comment); reading goes on
    with the next line.
    """
    first = True
    while True:
        raw = stream.readline(MAX_LINE + 1)
        if not raw:
            return
        overlong = len(raw) > MAX_LINE and not raw.endswith(b"\n")
        if first:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
            first = False
        if overlong:
            line = _rest_of_overlong(stream, raw)
            if line is not None:
                yield line
            continue
        line = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd").strip()
        if not line or line.startswith("#"):
            continue
        yield line


def _rest_of_overlong(stream: BinaryIO, raw: bytes) -> OverlongLine | None:
    """Read to the end of an over-long line, keeping only its start; None for a blank or comment line."""
    keep = 4 * OVERLONG_PREFIX  # bytes: enough for OVERLONG_PREFIX characters of UTF-8
    head = raw.lstrip()[:keep]
    length = len(raw)
    while True:
        more = stream.readline(MAX_LINE)
        if not more:
            break
        length += len(more)
        if len(head) < keep:
            head = (head + more).lstrip()[:keep]
        if more.endswith(b"\n"):
            length -= 2 if more.endswith(b"\r\n") else 1
            break
    if not head.strip() or head.startswith(b"#"):
        return None
    return OverlongLine.make(head, length)


def open_url_file(path: str) -> BinaryIO:
    """Open ``path`` (``-`` is stdin) for :func:`read_url_lines`, or raise a usage error."""
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CrawlerError(f"URL file not found: {path}") from None
    except IsADirectoryError:
        raise CrawlerError(f"URL file is a directory: {path}") from None
    except OSError as exc:
        raise CrawlerError(f"cannot read URL file {path}: {exc.strerror}") from None


def count_url_lines(path: str) -> int:
    """How many URLs :func:`read_url_lines` will yield from ``path``: one streaming pass, nothing kept."""
    with open_url_file(path) as stream:
        return sum(1 for _ in read_url_lines(stream))


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL: what politeness limits, and what "the same host" means when following."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme, 0)


# what urlsplit would strip or remove, or treat specially: such URLs take the long way
_PLAIN = re.compile(r"[!-~]*")
_NETLOC_END = re.compile(r"[/?#]")


def host_key(url: str) -> str:
    """``host:port`` of ``url``, the key of its host in every per-host table."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in DEFAULT_PORTS and _PLAIN.fullmatch(rest):
        # asked for every URL: the answer of a scheme and netloc is kept, not parsed again
        return _netloc_key(scheme.lower(), _NETLOC_END.split(rest, 1)[0])
    return "%s:%d" % host_port(url)


@functools.lru_cache(maxsize=1024)
def _netloc_key(scheme: str, netloc: str) -> str:
    return "%s:%d" % host_port(f"{scheme}://{netloc}/")


def url_key(url: str) -> int:
    """A 64-bit key of ``url`` (blake2b), for sets of URLs kept compact: done records, seen links."""
    return int.from_bytes(hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
