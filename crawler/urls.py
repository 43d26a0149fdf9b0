"""Reading the URL list: lazily, forgivingly, one entry per meaningful line."""

from __future__ import annotations

import sys
from typing import BinaryIO, Iterator

from .errors import CrawlerError

MAX_LINE = 1 << 20  # longer lines are kept (and fail as invalid_url), but not grown without end


def read_url_lines(stream: BinaryIO) -> Iterator[str]:
    """Yield each URL line of ``stream``: stripped, blank and ``#`` lines skipped.

    Bytes that are not UTF-8 are kept as escapes (``surrogateescape`` turned
    into ``\\ufffd``) so that such a line still yields a record, never a crash.
    A leading BOM and CRLF endings are ignored.
    """
    first = True
    while True:
        raw = stream.readline(MAX_LINE)
        if not raw:
            return
        if len(raw) == MAX_LINE and not raw.endswith(b"\n"):
            while (more := stream.readline(MAX_LINE)) and not more.endswith(b"\n"):
                pass  # drop the rest of an absurdly long line
        if first:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
            first = False
        line = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd").strip()
        if not line or line.startswith("#"):
            continue
        yield line


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
