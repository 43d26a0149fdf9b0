"""What ``--out``, ``--report`` and ``--plot`` may do to the user's files (SPEC §3 "Files and terminal", §6, §7)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import uuid

import pytest

from crawler.outputs import (
    RECORD_KEYS,
    CompletedUrls,
    CsvWriter,
    JsonlWriter,
    SqliteWriter,
    check_outputs,
    csv_text,
    json_line,
    open_writer,
    read_records,
)
from crawler.urls import MAX_LINE, OverlongLine, read_url_lines


def crawl(*args: str, cwd=None, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crawler", *args], input=stdin, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def assert_usage_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crawl: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def unique_pages(server, n: int) -> list[str]:
    """URLs of the session server no other test asks for: their hits say whether anything was fetched."""
    tag = uuid.uuid4().hex[:8]
    return [server.url(f"/page/{tag}-{i}") for i in range(n)]


def fetched(hits, urls: list[str]) -> int:
    return sum(hits["/page/" + url.rsplit("/page/", 1)[1]] for url in urls)


@contextlib.contextmanager
def mounted_tmpfs(path, options: str):
    """A tmpfs at ``path`` (root only); skips the test where mounting is not allowed."""
    path.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory nothing can be created in: a read-only mount as root, else mode 0555."""
    where = tmp_path / "locked"
    if os.geteuid() == 0:
        with mounted_tmpfs(where, "ro,size=64k"):
            yield where
    else:
        where.mkdir()
        where.chmod(0o555)
        yield where
        where.chmod(0o755)


# --- 1. --out never overwrites the URL file ----------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink"])
def test_out_naming_the_url_file_is_a_usage_error(server, hits, tmp_path, spelling):
    pages = unique_pages(server, 2)
    urls = tmp_path / "same.txt"
    text = "\n".join(pages) + "\n"
    urls.write_text(text)
    out = {"same": str(urls), "dotted": f"{tmp_path}/./sub/../same.txt", "symlink": str(tmp_path / "link.txt"), "hardlink": str(tmp_path / "hard.txt")}[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        os.symlink(urls, out)
    if spelling == "hardlink":
        os.link(urls, out)
    result = crawl(str(urls), "--out", out, "-q", "--parse-workers", "0")
    assert_usage_error(result, out, "URL file")
    assert urls.read_text() == text  # not emptied
    assert fetched(hits, pages) == 0


def test_report_naming_the_url_file_or_the_out_file_is_a_usage_error(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    assert_usage_error(crawl(str(urls), "--report", str(urls)), "--report", "URL file")
    assert_usage_error(crawl(str(urls), "--out", str(tmp_path / "r.json"), "--report", str(tmp_path / "r.json")), "--out", "--report", "same file")
    assert urls.read_text() == "http://127.0.0.1:9/\n"


# --- 2. an existing SQLite database keeps every table but records ------------------------


def test_out_sqlite_keeps_every_table_but_records(server, tmp_path):
    db_path = tmp_path / "important.db"
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE notes (body TEXT)")
    db.execute("INSERT INTO notes VALUES ('keep me')")
    db.execute("CREATE TABLE records (engine TEXT, url TEXT)")
    db.execute("INSERT INTO records VALUES ('asyncio', 'http://old.example/')")
    db.commit()
    db.close()
    pages = unique_pages(server, 2)
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(pages) + "\n")
    result = crawl(str(urls), "--out", str(db_path), "-q", "--parse-workers", "0")
    assert result.returncode == 0, result.stderr
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT body FROM notes").fetchall() == [("keep me",)]
    assert sorted(row[0] for row in db.execute("SELECT url FROM records")) == sorted(pages)  # records replaced
    db.close()


@pytest.mark.parametrize("resume", [True, False])
def test_sqlite_out_that_is_not_a_database_is_refused_and_left_alone(tmp_path, resume):
    out = tmp_path / "r.sqlite"
    out.write_text("my notes, not a database\n")
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    result = crawl(str(urls), "--out", str(out), *(["--resume"] if resume else []), "-q")
    assert_usage_error(result, str(out), "not an SQLite database")
    assert out.read_text() == "my notes, not a database\n"


# --- 3. every output path is checked before the first fetch -------------------------------


@pytest.mark.parametrize("option, suffix", [("--out", ".jsonl"), ("--out", ".db"), ("--report", ".json"), ("--plot", ".png")])
@pytest.mark.parametrize("problem", ["directory", "missing parent", "unwritable"])
def test_bad_output_path_is_a_usage_error_before_any_fetch(server, hits, tmp_path, request, option, suffix, problem):
    pages = unique_pages(server, 3)
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(pages) + "\n")
    if problem == "directory":
        path = tmp_path / f"adir{suffix}"
        path.mkdir()
        reason = "is a directory"
    elif problem == "missing parent":
        path = tmp_path / "no" / "such" / f"r{suffix}"
        reason = "no such directory"
    else:
        path = request.getfixturevalue("unwritable_dir") / f"r{suffix}"
        reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    result = crawl(str(urls), option, str(path), "-q", "--parse-workers", "0")
    assert_usage_error(result, option, str(path), reason)
    assert "Traceback" not in result.stderr
    assert fetched(hits, pages) == 0


def test_checking_outputs_destroys_nothing(server, hits, tmp_path):
    """An existing report is not truncated when another output is refused, nor a stray file left."""
    pages = unique_pages(server, 1)
    urls = tmp_path / "urls.txt"
    urls.write_text(pages[0] + "\n")
    report, out = tmp_path / "old-report.json", tmp_path / "old.jsonl"
    report.write_text('{"precious": true}\n')
    out.write_text('{"engine": "asyncio", "url": "x"}\n')
    (tmp_path / "adir").mkdir()
    result = crawl(str(urls), "--out", str(out), "--report", str(report), "--plot", str(tmp_path / "adir" / "missing" / "c.png"))
    assert_usage_error(result, "--plot")
    assert report.read_text() == '{"precious": true}\n'
    assert out.read_text() == '{"engine": "asyncio", "url": "x"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "old-report.json", "old.jsonl", "urls.txt"]
    assert fetched(hits, pages) == 0


def test_dev_full_passes_the_check(tmp_path):
    """An existing writable device is a legitimate output; only writing to it can tell."""
    check_outputs(str(tmp_path / "urls.txt"), {"--out": "/dev/null", "--report": "/dev/full"})


# --- 6. --out - is JSON Lines on stdout ----------------------------------------------------


def test_out_dash_writes_json_lines_to_stdout_and_the_report_to_stderr(server, tmp_path):
    pages = unique_pages(server, 3)
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(pages + ["=not a url"]) + "\n")
    result = crawl(str(urls), "--out", "-", "-q", "--parse-workers", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["url"] for r in records) == sorted(pages + ["=not a url"])  # JSON Lines keep the text as it was
    assert "crawl report" in result.stderr and "crawl report" not in result.stdout
    assert not (tmp_path / "-").exists()


def test_out_dash_with_json_report_keeps_stdout_pure(server, tmp_path):
    pages = unique_pages(server, 2)
    result = crawl("-", "--out", "-", "--json", "-q", "--parse-workers", "0", stdin="\n".join(pages) + "\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len([json.loads(line)["url"] for line in result.stdout.splitlines()]) == 2
    assert json.loads(result.stderr)["engines"][0]["urls"] == 2


def test_resume_with_out_dash_is_a_usage_error(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    assert_usage_error(crawl(str(urls), "--out", "-", "--resume", cwd=tmp_path), "--resume")
    assert not (tmp_path / "-").exists()


def test_json_lines_escape_what_a_terminal_would_act_on_and_keep_the_text():
    text = "csi\x9b31m esc\x1b[2J bell\x07 line\u2028sep"
    line = json_line({"title": text})
    assert not any(b in line for b in (b"\x1b", b"\x07", "\x9b".encode(), "\u2028".encode()))
    assert json.loads(line) == {"title": text}


# --- 7. CSV cells are spreadsheet-safe, and --resume still matches them -------------------


@pytest.mark.parametrize(
    "text, cell",
    [
        ('=HYPERLINK("http://evil/","x")', '\'=HYPERLINK("http://evil/","x")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "' =1"),
        ("\r=1", "' =1"),
        ("a\x00b\x1bc\nd\re", "a b c d e"),
        ("http://example.com/=x", "http://example.com/=x"),
    ],
)
def test_csv_text(text, cell):
    assert csv_text(text) == cell


def test_csv_is_spreadsheet_safe_and_resume_matches_its_rows(server, tmp_path):
    page = unique_pages(server, 1)[0]
    hostile = ['=HYPERLINK("http://evil/","click")', "-1+2", "@SUM(A1:A9)", "+cmd|' /C calc'!A0", "http://a\x01b.test/", "http://x\x1b[31m.test/"]
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join([page, *hostile]) + "\n")
    out = tmp_path / "r.csv"
    result = crawl(str(urls), "--out", str(out), "-q", "--parse-workers", "0", "--retries", "0")
    assert result.returncode == 0, result.stderr
    raw = out.read_text()
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 + 1 + len(hostile)
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
            assert not any(ord(ch) < 0x20 for ch in cell), repr(cell)
    assert all(line.count('"') % 2 == 0 for line in raw.splitlines())  # one record per line
    assert {row[1] for row in rows[1:]} == {page, *(csv_text(u) for u in hostile)}

    report = tmp_path / "r.json"
    again = crawl(str(urls), "--out", str(out), "--resume", "-q", "--parse-workers", "0", "--report", str(report))
    assert again.returncode == 0, again.stderr
    [summary] = json.loads(report.read_text())["engines"]
    assert summary["skipped"] == 1 + len(hostile) and summary["urls"] == 0


def test_json_lines_and_sqlite_keep_the_text_as_it_was(tmp_path):
    record = dict.fromkeys(RECORD_KEYS)
    record.update(engine="asyncio", url="=1+1", title="-a\x01b", ok=False, bytes=0, fetch_ms=0.0, depth=0)
    for name, writer_class in (("r.jsonl", JsonlWriter), ("r.sqlite", SqliteWriter), ("r.csv", CsvWriter)):
        writer = writer_class(str(tmp_path / name))
        writer.write(record)
        writer.close()
    [from_jsonl] = read_records(str(tmp_path / "r.jsonl"))
    [from_sqlite] = read_records(str(tmp_path / "r.sqlite"))
    [from_csv] = read_records(str(tmp_path / "r.csv"))
    assert from_jsonl["url"] == from_sqlite["url"] == "=1+1" and from_jsonl["title"] == from_sqlite["title"] == "-a\x01b"
    assert from_csv["url"] == "'=1+1" and from_csv["title"] == "'-a b"
    for name in ("r.jsonl", "r.sqlite", "r.csv"):
        assert CompletedUrls(str(tmp_path / name), "asyncio").take("=1+1")


# --- 5. a writer refuses silently after close ----------------------------------------------


@pytest.mark.parametrize("name", ["r.jsonl", "r.csv", "r.sqlite"])
def test_write_after_close_is_dropped_not_a_crash(tmp_path, name):
    path = str(tmp_path / name)
    writer = open_writer(path)
    record = dict.fromkeys(RECORD_KEYS)
    record.update(engine="asyncio", url="http://a/")
    writer.write(record)
    writer.close()
    with open(path, "rb") as f:
        before = f.read()
    writer.write(dict(record, url="http://late/"))  # a parse-stage callback after Ctrl-C: no ValueError
    writer.close()
    with open(path, "rb") as f:
        assert f.read() == before
    assert [r["url"] for r in read_records(path)] == ["http://a/"]


# --- 9. the report JSON keeps its figures unrounded ----------------------------------------


def test_report_json_keeps_figures_unrounded(server, tmp_path):
    slow_small_page = server.url(f"/delay?s=0.3&i={uuid.uuid4().hex}")  # ~100 bytes in 0.3 s: 0.0003 MB/s, which rounding made 0.0
    urls = tmp_path / "urls.txt"
    urls.write_text(slow_small_page + "\n")
    report = tmp_path / "r.json"
    result = crawl(str(urls), "--report", str(report), "-q", "--parse-workers", "0")
    assert result.returncode == 0, result.stderr
    [engine] = json.loads(report.read_text())["engines"]
    assert engine["mb_per_s"] > 0
    assert engine["pages_per_s"] == pytest.approx(engine["ok"] / engine["wall_s"], rel=1e-9)
    assert engine["relative"] == 1.0


# --- 10. URL lines over 1 MiB ----------------------------------------------------------------


def test_overlong_lines_are_read_through_in_pieces():
    long_url = b"http://127.0.0.1:9/" + b"a" * (MAX_LINE + 10)
    data = b"http://one/\n" + long_url + b"\r\n" + b" " * (2 * MAX_LINE) + b"\n#" + b"c" * (MAX_LINE * 2) + b"\nhttp://two/\n"
    data += b"x" * MAX_LINE + b"\n"  # exactly the limit: an ordinary line
    lines = list(read_url_lines(io.BytesIO(data)))
    assert lines[0] == "http://one/" and lines[2] == "http://two/" and len(lines) == 4
    overlong = lines[1]
    assert isinstance(overlong, OverlongLine) and overlong.endswith("…") and len(overlong) <= 1001
    assert overlong.startswith("http://127.0.0.1:9/aaa") and overlong.length == len(long_url)
    assert "longer than" in overlong.detail
    assert type(lines[3]) is str and len(lines[3]) == MAX_LINE


def test_overlong_line_is_one_invalid_url_record_never_fetched(server, hits, tmp_path):
    before, after = unique_pages(server, 2)
    long_page = before + "-" + "a" * (MAX_LINE + 100)  # a valid URL to a page that exists, just too long a line
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join([before, long_page, after]) + "\n")
    out, report = tmp_path / "r.jsonl", tmp_path / "r.json"
    result = crawl(str(urls), "--out", str(out), "-q", "--parse-workers", "0", "--report", str(report))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3
    [bad] = [r for r in records if not r["ok"]]
    assert bad["error"] == "invalid_url" and "longer than" in bad["detail"] and bad["status"] is None
    assert bad["url"].startswith(before + "-aaaa") and bad["url"].endswith("…") and len(bad["url"]) <= 1001
    assert {r["url"] for r in records if r["ok"]} == {before, after}  # reading went on after it
    assert sum(count for path, count in hits.items() if path.startswith("/page/" + before.rsplit("/page/", 1)[1] + "-")) == 0
    [engine] = json.loads(report.read_text())["engines"]
    assert engine["lines_read"] == 3 and engine["urls"] == 3 and engine["errors"] == {"invalid_url": 1}
    assert engine["accounting_error"] is None

    again = crawl(str(urls), "--out", str(out), "--resume", "-q", "--parse-workers", "0", "--report", str(report))
    assert again.returncode == 0, again.stderr
    [engine] = json.loads(report.read_text())["engines"]
    assert engine["skipped"] == 3 and engine["urls"] == 0  # --resume recognises the over-long line's record
