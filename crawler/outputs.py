"""Where records go: JSON Lines, one object per URL, flushed as each completes."""

from __future__ import annotations

import json
import threading
from typing import IO

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


class JsonlWriter:
    """Appends records to a JSON Lines file; safe to call from several threads."""

    def __init__(self, path: str, append: bool = False):
        self.path = path
        self._file: IO[str] = open(path, "a" if append else "w", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class NullWriter:
    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def open_writer(path: str | None, append: bool = False):
    return JsonlWriter(path, append) if path else NullWriter()
