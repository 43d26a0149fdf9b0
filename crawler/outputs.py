"""Where records go: JSON Lines, one object per URL, flushed as each completes."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import IO

import numpy as np

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


def drop_torn_tail(path: str) -> int:
    """Cut a last line left half-written by a killed run; return the bytes dropped."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return 0
            keep = size
            while keep > 0:  # walk back to the last newline, a block at a time
                step = min(keep, 1 << 16)
                f.seek(keep - step)
                block = f.read(step)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    keep = keep - step + newline + 1
                    break
                keep -= step
            f.truncate(keep)
            return size - keep
    except FileNotFoundError:
        return 0


def _url_key(url: str) -> int:
    return int.from_bytes(hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class CompletedUrls:
    """The URLs one engine already has records for in a JSON Lines file, for ``--resume``.

    Held as sorted 64-bit hashes with a count each (16 bytes per distinct
    URL, not a Python object per line), so that a list written twice is
    skipped twice and no more.
    """

    def __init__(self, path: str, engine: str):
        keys: list[int] = []
        try:
            with open(path, "rb") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a damaged line is not a completed URL
                    if isinstance(record, dict) and record.get("engine") == engine and isinstance(record.get("url"), str):
                        keys.append(_url_key(record["url"]))
        except FileNotFoundError:
            pass
        self.keys, self.counts = np.unique(np.array(keys, dtype=np.uint64), return_counts=True)

    def __len__(self) -> int:
        return int(self.counts.sum())

    def take(self, url: str) -> bool:
        """True (and one fewer left) if ``url`` still has an unclaimed record."""
        if not len(self.keys):
            return False
        key = np.uint64(_url_key(url))
        i = int(np.searchsorted(self.keys, key))
        if i < len(self.keys) and self.keys[i] == key and self.counts[i] > 0:
            self.counts[i] -= 1
            return True
        return False
