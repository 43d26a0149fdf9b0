"""Where records go: JSON Lines, CSV or SQLite, chosen by the ``--out`` suffix.

Every format has the same keys (:data:`RECORD_KEYS`), is written as URLs
complete, and can be read back by ``--resume``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sqlite3
import threading
import time
from typing import IO, Iterator

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


class CsvWriter:
    """CSV with a header row; null is an empty field, booleans are true/false."""

    def __init__(self, path: str, append: bool = False):
        self.path = path
        fresh = not append or not os.path.exists(path) or os.path.getsize(path) == 0
        self._file: IO[str] = open(path, "a" if append else "w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._file)
        self._lock = threading.Lock()
        if fresh:
            self._csv.writerow(RECORD_KEYS)
            self._file.flush()

    def write(self, record: dict) -> None:
        row = [_csv_cell(record[key]) for key in RECORD_KEYS]
        with self._lock:
            self._csv.writerow(row)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


SQL_TYPES = {"ok": "INTEGER", "status": "INTEGER", "bytes": "INTEGER", "fetch_ms": "REAL", "links": "INTEGER", "words": "INTEGER", "depth": "INTEGER"}


class SqliteWriter:
    """Table ``records``, written in batched transactions (one per 500 records or second)."""

    BATCH = 500
    SECONDS = 1.0

    def __init__(self, path: str, append: bool = False):
        self.path = path
        if not append and os.path.exists(path):
            os.remove(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        columns = ", ".join(f'"{key}" {SQL_TYPES.get(key, "TEXT")}' for key in RECORD_KEYS)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS records ({columns})")
        self._insert = f"INSERT INTO records VALUES ({', '.join('?' * len(RECORD_KEYS))})"
        self._pending: list[tuple] = []
        self._last_commit = time.monotonic()
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        with self._lock:
            self._pending.append(tuple(record[key] for key in RECORD_KEYS))
            if len(self._pending) >= self.BATCH or time.monotonic() - self._last_commit >= self.SECONDS:
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            with self._db:  # one transaction per batch
                self._db.execute("BEGIN")
                self._db.executemany(self._insert, self._pending)
            self._pending.clear()
        self._last_commit = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._flush()
            self._db.close()


class NullWriter:
    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def output_format(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    return {".csv": "csv", ".sqlite": "sqlite", ".db": "sqlite"}.get(suffix, "jsonl")


def open_writer(path: str | None, append: bool = False):
    if not path:
        return NullWriter()
    return {"csv": CsvWriter, "sqlite": SqliteWriter, "jsonl": JsonlWriter}[output_format(path)](path, append)


def read_records(path: str) -> Iterator[dict]:
    """Records back from any output format (CSV cells come back as text)."""
    kind = output_format(path)
    if kind == "sqlite":
        db = sqlite3.connect(path)
        try:
            db.row_factory = sqlite3.Row
            for row in db.execute("SELECT * FROM records"):
                yield dict(row)
        except sqlite3.OperationalError:
            return  # no table yet
        finally:
            db.close()
    elif kind == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f)
    else:
        with open(path, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a damaged line is not a completed URL
                if isinstance(record, dict):
                    yield record


def drop_torn_tail(path: str) -> int:
    """Cut a last line left half-written by a killed run; return the bytes dropped."""
    if output_format(path) == "sqlite":
        return 0  # transactions: a killed run leaves no half row
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
        keys = []
        if os.path.exists(path):
            keys = [
                _url_key(record["url"])
                for record in read_records(path)
                if record.get("engine") == engine and isinstance(record.get("url"), str)
            ]
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
