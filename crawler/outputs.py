"""Where records go: JSON Lines, CSV or SQLite, chosen by the ``--out`` suffix.

Every format has the same keys (:data:`RECORD_KEYS`), is written as URLs
complete, and can be read back by ``--resume``.

What ``--out`` may do to the user's files (SPEC §3, "Files and terminal"):
:func:`check_outputs` refuses, before anything is fetched or opened for
writing, a path that is the URL file, a directory, in a missing directory,
not writable, or (for ``.sqlite``/``.db``) an existing file that is not an
SQLite database.  An existing SQLite database keeps every table but
``records``.  A write that fails mid-run raises :class:`OutputError` once,
after cutting off the part of the line it could not finish; every later
write is refused, and a write after ``close()`` is dropped.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import sqlite3
import stat
import sys
import threading
import time
from typing import Iterator


from .errors import CrawlerError, OutputError
from .urls import url_key

from .records import LINKS_KEY, RECORD_KEYS, record_keys  # noqa: F401  (where the writers and --resume find them)

STDOUT = "-"  # ``--out -``: JSON Lines on standard output
SQLITE_MAGIC = b"SQLite format 3\x00"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class _LineFile:
    """Whole lines to a file (or stdout): one ``write`` per line, flushed by the OS at once.

    A line the file could not take whole (disk full, I/O error, a signal
    between two partial writes) is cut off again when the file is ours, so
    what stays behind is whole lines only.
    """

    def __init__(self, path: str, append: bool):
        self.name = "stdout" if path == STDOUT else path
        if path == STDOUT:
            sys.stdout.flush()
            self._fd = sys.stdout.fileno()
            self._own = False
        else:
            flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | (os.O_APPEND if append else os.O_TRUNC)
            try:
                self._fd = os.open(path, flags, 0o666)
            except OSError as exc:
                raise CrawlerError(f"cannot write {path}: {_reason(exc)}") from None
            self._own = True
        mode = os.fstat(self._fd).st_mode
        self._truncatable = self._own and stat.S_ISREG(mode)
        self._end = os.lseek(self._fd, 0, os.SEEK_END) if self._truncatable else 0
        self.size_at_open = self._end
        self._lock = threading.Lock()
        self._closed = False
        self._failed: OutputError | None = None

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return  # a late delivery after the run ended (e.g. Ctrl-C): dropped, never a crash
            if self._failed is not None:
                raise self._failed
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except BaseException as exc:
                if len(view) < len(data) and self._truncatable:
                    try:
                        os.ftruncate(self._fd, self._end)  # no torn line left behind by us
                    except OSError:
                        pass
                if not isinstance(exc, OSError):
                    raise  # KeyboardInterrupt between two partial writes: the line is cut off, the interrupt goes on
                if exc.errno == errno.EPIPE and not self._own:
                    _silence_stdout()
                self._failed = OutputError(f"cannot write {self.name}: {_reason(exc)}")
                raise self._failed from None
            self._end += len(data)

    @property
    def failed(self) -> bool:
        return self._failed is not None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._own:
                os.close(self._fd)


def _silence_stdout() -> None:
    """Nobody reads our stdout any more (``| head``): send the rest to /dev/null, so exit is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass


# C1 controls, DEL, the Unicode line separators and lone surrogates: valid in
# JSON text, but a terminal may act on the first ones and an encoder chokes on
# the last.  Written as \u escapes, they read back as exactly the same text.
_JSON_ESCAPE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


# made once: json.dumps with any option makes a new encoder on every call
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def json_line(record: dict) -> bytes:
    """One record as a JSON Lines line: the text kept as it was, nothing a terminal would act on."""
    line = _JSON_ENCODER.encode(record)
    if _JSON_ESCAPE.search(line):
        line = _JSON_ESCAPE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
    return (line + "\n").encode("utf-8")


class JsonlWriter:
    """Appends records to a JSON Lines file (``-``: stdout); safe to call from several threads."""

    def __init__(self, path: str, append: bool = False, keys: tuple[str, ...] = RECORD_KEYS):
        self.path = path
        self._file = _LineFile(path, append)

    def write(self, record: dict) -> None:
        self._file.write(json_line(record))

    def close(self) -> None:
        self._file.close()


# CSV opened in a spreadsheet: a cell starting with one of these is a formula
# (OWASP "CSV injection"), so it gets a leading apostrophe.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_CSV_UNSAFE = re.compile("[\x00-\x1f\ud800-\udfff]")


def csv_text(text: str) -> str:
    """Text as a CSV cell holds it: a formula start defused with ``'``, C0 controls as spaces.

    ``--resume`` applies the same function to a URL line before comparing it
    with the ``url`` cells of a CSV file.  (Lone surrogates, which UTF-8
    cannot encode, become ``?``.)
    """
    if text.startswith(FORMULA_STARTS):
        text = "'" + text
    if _CSV_UNSAFE.search(text):
        text = _CSV_UNSAFE.sub(lambda m: " " if m.group() < "\x20" else "?", text)
    return text


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return csv_text(value)
    if isinstance(value, (list, dict)):
        return csv_text(json.dumps(value, ensure_ascii=False))
    return str(value)


class CsvWriter:
    """CSV with a header row; null is an empty field, booleans are true/false.

    Cells are spreadsheet-safe (:func:`csv_text`), so no cell holds a line
    break and every record is one line, written whole like a JSON Lines line.
    """

    def __init__(self, path: str, append: bool = False, keys: tuple[str, ...] = RECORD_KEYS):
        self.path = path
        self.keys = keys
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer)
        self._lock = threading.Lock()
        if append:
            _check_header(path, keys)
        self._file = _LineFile(path, append)
        if not append or self._file.size_at_open == 0:
            try:
                self._file.write(self._row(list(keys)))
            except OutputError as exc:
                self._file.close()
                raise CrawlerError(str(exc)) from None  # nothing fetched yet: a usage error

    def _row(self, cells: list[str]) -> bytes:
        with self._lock:
            self._buffer.seek(0)
            self._buffer.truncate()
            self._csv.writerow(cells)
            return self._buffer.getvalue().encode("utf-8")

    def write(self, record: dict) -> None:
        self._file.write(self._row([_csv_cell(record.get(key)) for key in self.keys]))

    def close(self) -> None:
        self._file.close()


SQL_TYPES = {"ok": "INTEGER", "status": "INTEGER", "bytes": "INTEGER", "fetch_ms": "REAL", "links": "INTEGER", "words": "INTEGER", "depth": "INTEGER"}


def _check_header(path: str, keys: tuple[str, ...]) -> None:
    """``--resume`` adds rows to a CSV file only under the same header (with or without ``link_urls``)."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            header = next(csv.reader(f), None)
    except FileNotFoundError:
        return
    except (OSError, csv.Error) as exc:
        raise CrawlerError(f"--resume cannot read {path}: {_reason(exc)}") from None
    if header and tuple(header) != keys:
        raise CrawlerError(_other_columns(path, tuple(header), keys))


def _other_columns(path: str, found: tuple[str, ...], keys: tuple[str, ...]) -> str:
    if found + (LINKS_KEY,) == keys:
        return f"{path} was written without --record-links: resume it without the option, or choose another --out"
    if keys + (LINKS_KEY,) == found:
        return f"{path} was written with --record-links: resume it with the option too"
    return f"{path} has other columns than crawl's records; --resume cannot add to it"


class SqliteWriter:
    """Table ``records``, written in batched transactions (one per 500 records or second).

    Only the ``records`` table is ours: without ``append`` it is dropped and
    made again, and every other table of an existing database is left alone.
    A new database is put in WAL mode; an existing one keeps its journal mode.
    """

    BATCH = 500
    SECONDS = 1.0

    def __init__(self, path: str, append: bool = False, keys: tuple[str, ...] = RECORD_KEYS):
        self.path = path
        self.keys = keys
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        self._lock = threading.Lock()
        self._closed = False
        self._failed: OutputError | None = None
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise CrawlerError(f"cannot write {path}: {exc}") from None
        try:
            if fresh:
                self._db.execute("PRAGMA journal_mode=WAL")
            columns = ", ".join(f'"{key}" {SQL_TYPES.get(key, "TEXT")}' for key in keys)
            self._db.execute("BEGIN")
            if not append:
                self._db.execute("DROP TABLE IF EXISTS records")
            self._db.execute(f"CREATE TABLE IF NOT EXISTS records ({columns})")
            found = tuple(row[1] for row in self._db.execute("PRAGMA table_info(records)"))
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._db.close()
            raise CrawlerError(f"cannot write {path}: {exc}") from None
        if found != keys:
            self._db.close()
            raise CrawlerError(_other_columns(path, found, keys))
        self._insert = f"INSERT INTO records VALUES ({', '.join('?' * len(keys))})"
        self._pending: list[tuple] = []
        self._last_commit = time.monotonic()

    def write(self, record: dict) -> None:
        with self._lock:
            if self._closed:
                return
            if self._failed is not None:
                raise self._failed
            self._pending.append(tuple(_sql_value(record.get(key)) for key in self.keys))
            if len(self._pending) >= self.BATCH or time.monotonic() - self._last_commit >= self.SECONDS:
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            try:
                with self._db:  # one transaction per batch: all of it or none
                    self._db.execute("BEGIN")
                    self._db.executemany(self._insert, self._pending)
            except (sqlite3.Error, OSError) as exc:
                lost, self._pending = len(self._pending), []
                self._failed = OutputError(f"cannot write {self.path}: {exc} (the last {lost} records were not saved)")
                raise self._failed from None
            self._pending.clear()
        self._last_commit = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._failed is None:
                    self._flush()
            finally:
                self._db.close()


def _sql_value(value):
    """A column value: a list (``link_urls``) as JSON text."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


class NullWriter:
    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def output_format(path: str) -> str:
    if path == STDOUT:
        return "jsonl"
    suffix = os.path.splitext(path)[1].lower()
    return {".csv": "csv", ".sqlite": "sqlite", ".db": "sqlite"}.get(suffix, "jsonl")


def open_writer(path: str | None, append: bool = False, keys: tuple[str, ...] = RECORD_KEYS):
    """A writer for ``--out PATH`` (``-``: JSON Lines on stdout); a path that cannot be opened is a :class:`CrawlerError`.

    ``keys``: :func:`record_keys` (the CSV header and the SQLite columns).
    """
    if not path:
        return NullWriter()
    return {"csv": CsvWriter, "sqlite": SqliteWriter, "jsonl": JsonlWriter}[output_format(path)](path, append, keys)


# --- checks before the run -----------------------------------------------------------


def same_file(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name one file: any spelling, a symbolic or a hard link."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(urls_file: str | None, outputs: dict[str, str | None], resume: bool = False) -> None:
    """Refuse, before anything is opened for writing or fetched, output paths that cannot be used.

    ``outputs`` maps an option (``--out``, ``--report``, ``--plot``) to its
    path or None.  Raises :class:`CrawlerError` with one line naming the
    option, the path and the reason.  Nothing is created, truncated or
    changed: an existing file is opened for appending and closed unwritten,
    a missing one is tried by creating and removing it.
    """
    named = [(option, path) for option, path in outputs.items() if path]
    for option, path in named:
        if option == "--out" and path == STDOUT:
            continue
        if urls_file and urls_file != STDOUT and same_file(urls_file, path):
            raise CrawlerError(f"{option} {path} is the URL file {urls_file}: it would be overwritten")
    for i, (option, path) in enumerate(named):
        for other, other_path in named[i + 1 :]:
            if STDOUT not in (path, other_path) and same_file(path, other_path):
                raise CrawlerError(f"{option} and {other} name the same file: {path}")
    for option, path in named:
        if option == "--out" and path == STDOUT:
            continue
        check_writable(option, path, resume=resume and option == "--out", sqlite=option == "--out" and output_format(path) == "sqlite")


def check_writable(option: str, path: str, resume: bool = False, sqlite: bool = False) -> None:
    """One output path: writable, not a directory, in an existing directory; see :func:`check_outputs`."""

    def refuse(reason: str) -> CrawlerError:
        return CrawlerError(f"{option} {path}: {reason}")

    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:  # e.g. a path through a regular file: "Not a directory"
        raise refuse(_reason(exc)) from None
    if info is None:
        _check_creatable(path, refuse)
        return
    if stat.S_ISDIR(info.st_mode):
        raise refuse("is a directory")
    if stat.S_ISREG(info.st_mode):
        _check_regular_file(path, refuse, resume)
    elif not os.access(path, os.W_OK):  # a device or a pipe: opening it could block or act
        raise refuse("permission denied")
    if sqlite and stat.S_ISREG(info.st_mode) and info.st_size:
        _check_sqlite(path, refuse, resume)


def _check_creatable(path: str, refuse) -> None:
    """A path that does not exist: its directory exists, and the file can be created there (and is removed again)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        raise refuse(f"no such directory: {parent}")
    if not os.path.isdir(parent):
        raise refuse(f"not a directory: {parent}")
    try:  # the only sure test (root, read-only mounts, ACLs): create it, and remove it again
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except FileExistsError:  # a dangling symbolic link, or created meanwhile
        if not os.access(parent, os.W_OK):
            raise refuse("permission denied") from None
        return
    except OSError as exc:
        raise refuse(_reason(exc)) from None
    os.close(fd)
    os.unlink(path)


def _check_regular_file(path: str, refuse, resume: bool) -> None:
    """An existing file: it opens for appending (and, to ``resume``, for reading), left exactly as it was."""
    try:  # append mode, nothing written: the file is left exactly as it was
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)))
        if resume:
            os.close(os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
    except OSError as exc:
        raise refuse(_reason(exc)) from None


def _check_sqlite(path: str, refuse, resume: bool) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise refuse(_reason(exc)) from None
    if magic != SQLITE_MAGIC:
        raise refuse("exists and is not an SQLite database; it is left alone (choose another --out)")
    if not resume:
        return
    try:
        db = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro", uri=True)
        try:
            columns = tuple(row[1] for row in db.execute("PRAGMA table_info(records)"))
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise refuse(f"cannot read it as an SQLite database: {exc}") from None
    if columns and columns not in (RECORD_KEYS, record_keys(True)):
        raise refuse("its table 'records' has other columns than crawl's records; --resume cannot add to it")


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


# --- reading back ------------------------------------------------------------------


def read_records(path: str) -> Iterator[dict]:
    """Records back from any output format (CSV cells come back as text, as :func:`csv_text` wrote them)."""
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
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
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
    except OSError as exc:
        raise CrawlerError(f"--resume cannot repair {path}: {_reason(exc)}") from None


class CompletedUrls:
    """The URLs one engine already has records for in an output file, for ``--resume``.

    Held as sorted 64-bit hashes with a count each (16 bytes per distinct
    URL, not a Python object per line), so that a list written twice is
    skipped twice and no more.  A CSV file holds its text as
    :func:`csv_text` made it, so URL lines (and the engine name) are put
    through the same function before they are compared with it.
    """

    def __init__(self, path: str, engine: str):
        self._normal = csv_text if output_format(path) == "csv" else str
        engine = self._normal(engine)
        keys = []
        if os.path.exists(path):
            try:
                keys = [
                    url_key(record["url"])
                    for record in read_records(path)
                    if record.get("engine") == engine and isinstance(record.get("url"), str)
                ]
            except (OSError, sqlite3.Error, csv.Error) as exc:
                raise CrawlerError(f"--resume cannot read {path}: {_reason(exc)}") from None
        import numpy as np  # only --resume needs it: not imported by every run's start-up

        self._np = np
        self.keys, self.counts = np.unique(np.array(keys, dtype=np.uint64), return_counts=True)

    def __len__(self) -> int:
        return int(self.counts.sum())

    def __call__(self, url: str) -> bool:
        return self.take(url)

    def take(self, url: str) -> bool:
        """True (and one fewer left) if ``url`` still has an unclaimed record."""
        if not len(self.keys):
            return False
        key = self._np.uint64(url_key(self._normal(url)))
        i = int(self._np.searchsorted(self.keys, key))
        if i < len(self.keys) and self.keys[i] == key and self.counts[i] > 0:
            self.counts[i] -= 1
            return True
        return False
