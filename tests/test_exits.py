"""Every way out of ``crawl``: exit codes, one-line messages, outputs that fail mid-run, a safe terminal (SPEC §3)."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import crawler
from crawler.errors import OutputError
from crawler.outputs import read_records
from crawler.pipeline import RunOptions, run_engine
from crawler.plugins import engines, get_plugin_manager

from test_outputs import mounted_tmpfs, unique_pages


def crawl(*args: str, cwd=None, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    if "PYTHONPATH" in os.environ and env["PYTHONPATH"] != os.environ["PYTHONPATH"]:  # added to, not replaced
        env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    return subprocess.run(
        [sys.executable, "-m", "crawler", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("crawl: error:")]


def write_urls(tmp_path: Path, urls: list[str]) -> Path:
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(urls) + "\n")
    return path


# --- 4. an output that fails mid-run: exit 1, one line, whole records, the report ---------


@pytest.mark.parametrize("suffix, workers", [("jsonl", "1"), ("jsonl", "0"), ("csv", "1"), ("sqlite", "1")])
def test_full_disk_mid_run_stops_with_exit_1_and_whole_records(server, tmp_path, suffix, workers):
    pages = unique_pages(server, 400)  # ~160 KB of JSON Lines for a 64 KB disk
    urls = write_urls(tmp_path, pages)
    with mounted_tmpfs(tmp_path / "disk", "size=64k") as disk:
        out, report = disk / f"r.{suffix}", tmp_path / "r.json"
        command = [str(urls), "-e", "threads", "-c", "4", "--out", str(out), "--parse-workers", workers, "-q"]
        result = crawl(*command, "--report", str(report))
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and "exception calling callback" not in result.stderr
        [line] = error_lines(result)
        assert line.startswith(f"crawl: error: cannot write {out}: ")
        assert "No space left on device" in line or "disk is full" in line, line
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "crawl report" in result.stdout  # the report is still printed...
        [summary] = json.loads(report.read_text())["engines"]  # ...and written
        # (SQLite commits a batch a second: on a fast run the only batch may fail at close, after every fetch)
        assert summary["interrupted"] and 0 < summary["urls"] < 400 or suffix == "sqlite"

        written = list(read_records(str(out)))  # every record left is whole
        assert all(r["url"] in pages and r["engine"] == "threads" for r in written)
        if suffix == "sqlite":  # batches of up to a second: the one that failed is rolled back, and says so
            assert "records were not saved" in line
        else:
            assert written and out.read_bytes().endswith(b"\n")
            assert len(written) == summary["urls"]  # the report counts exactly what was written
        if suffix == "jsonl":
            assert all(json.loads(line) for line in out.read_text().splitlines())

        # room again: --resume finishes the job from what was kept
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        resumed = crawl(*command, "--resume", "--report", str(report))
        assert resumed.returncode == 0, resumed.stderr
        assert sorted(r["url"] for r in read_records(str(out))) == sorted(pages)


def test_dev_full_out_is_exit_1_with_one_line(server, tmp_path):
    urls = write_urls(tmp_path, unique_pages(server, 5))
    result = crawl(str(urls), "--out", "/dev/full", "--parse-workers", "1", "-q")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == ["crawl: error: cannot write /dev/full: No space left on device"]
    assert "crawl report" in result.stdout


def test_report_that_fails_to_write_is_exit_1_after_the_table(server, tmp_path):
    urls = write_urls(tmp_path, unique_pages(server, 2))
    result = crawl(str(urls), "--report", "/dev/full", "--parse-workers", "0", "-q")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == ["crawl: error: cannot write /dev/full: No space left on device"]
    assert "crawl report" in result.stdout


def test_write_failure_in_a_parse_stage_callback_is_raised_in_the_caller(server, caplog):
    """The parse stage delivers records from its executor's thread: a failing write must not die there."""
    pages = unique_pages(server, 40)
    written = []

    def write(record):
        if len(written) == 5:
            raise OutputError("cannot write r.jsonl: No space left on device")
        written.append(record)

    engine = engines(get_plugin_manager())["threads"]
    caplog.set_level(logging.ERROR, logger="concurrent.futures")
    with pytest.raises(OutputError) as failure:
        run_engine(engine, pages, crawler.Settings(concurrency=2, timeout=5), RunOptions(parse_workers=1, batch_size=1), write)
    assert len(written) == 5 and failure.value.run_stats.records == 5 and failure.value.run_stats.interrupted
    assert not [r for r in caplog.records if "callback" in r.getMessage()]


# --- 5. Ctrl-C while the parse stage still holds pages -------------------------------------


class _InterruptedEngine:
    """Yields ``n`` HTML pages fast, then Ctrl-C arrives: pages are still in the parse stage."""

    name = "interrupted"
    description = "test engine"

    def __init__(self, n: int):
        self.n = n

    def fetch(self, urls, settings):
        for i, url in enumerate(urls):
            body = b"<title>t</title><body>" + b"<p>words and more words</p>" * 2000 + b"</body>"
            yield crawler.FetchResult(url=url, status=200, final_url=url, headers={"content-type": "text/html"}, body=body)
            if i == self.n:
                raise KeyboardInterrupt


def test_interrupt_with_pages_in_the_parse_stage_writes_no_late_or_cancelled_record(caplog):
    written, closed = [], []

    def write(record):
        if closed:
            raise ValueError("I/O operation on closed file.")  # what a closed file says
        written.append(record)

    caplog.set_level(logging.ERROR, logger="concurrent.futures")
    urls = [f"http://127.0.0.1:9/{i}" for i in range(500)]
    with pytest.raises(KeyboardInterrupt) as interrupt:
        run_engine(_InterruptedEngine(300), urls, crawler.Settings(), RunOptions(parse_workers=2, batch_size=4), write)
    closed.append(True)  # the command closes its writer right after
    time.sleep(1.0)  # anything the executor still delivers arrives now
    assert not [r for r in caplog.records if "callback" in r.getMessage()]
    assert all(r["ok"] and r["error"] is None for r in written), {r["detail"] for r in written if not r["ok"]}
    assert interrupt.value.run_stats.records == len(written)


# --- 8. nothing a plugin or server sends is interpreted by the terminal --------------------

HOSTILE_PLUGIN = '''
import crawler

class Hostile:
    name = NAME
    description = "desc \\x1b]0;pwned\\x07 [red]markup[/red] \\x9b2J"

    def fetch(self, urls, settings):
        for url in urls:
            yield crawler.FetchResult(url=url, error="[/]\\x1b[2J\\x07boom", detail="[bold]\\x1b[31mred", elapsed=0.01)

@crawler.hookimpl
def crawler_engines():
    return [Hostile()]
'''


def _plugin(tmp_path: Path, name: str) -> dict:
    module = f"hostile_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(HOSTILE_PLUGIN.replace("NAME", repr(name)))
    return {"module": module, "env": {"PYTHONPATH": str(tmp_path)}}


@pytest.mark.parametrize("name", ["[/]", "a b", "evil\x1b[2J", "ünicode", ""])
def test_engine_name_outside_the_allowed_characters_is_a_usage_error_naming_the_plugin(tmp_path, name):
    plugin = _plugin(tmp_path, name)
    urls = write_urls(tmp_path, ["http://127.0.0.1:9/"])
    for args in (["--list-engines"], [str(urls), "-e", "asyncio"]):
        result = crawl("--plugin", plugin["module"], *args, env=plugin["env"])
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("crawl: error: ") and plugin["module"] in line and "engine name" in line
        assert "\x1b" not in result.stderr and "Traceback" not in result.stderr


def test_report_and_listing_never_interpret_what_a_plugin_sends(tmp_path):
    plugin = _plugin(tmp_path, "hostile")
    listed = crawl("--plugin", plugin["module"], "--list-engines", env=plugin["env"])
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout and "\x9b" not in listed.stdout
    assert "[red]markup[/red]" in listed.stdout
    urls = write_urls(tmp_path, ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"])
    result = crawl(str(urls), "--plugin", plugin["module"], "-e", "hostile", "--no-parse", env={**plugin["env"], "FORCE_COLOR": "1", "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "crawl report" in result.stdout and "MarkupError" not in result.stderr
    assert "[/]" in result.stdout and "\\x1b[2J" in result.stdout  # shown, made visible
    without_styles = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # the table's own colours (FORCE_COLOR)
    assert "\x1b" not in without_styles and "\x07" not in without_styles


def test_plugin_import_error_message_is_one_safe_line(tmp_path):
    (tmp_path / "broken_plugin.py").write_text('raise RuntimeError("line one\\nline two \\x1b[2J")\n')
    urls = write_urls(tmp_path, ["http://127.0.0.1:9/"])
    result = crawl(str(urls), "--plugin", "broken_plugin", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "broken_plugin" in line and "\x1b" not in line and "line two" in line


# --- 11. --plugin finds a module in the current directory -----------------------------------

ECHO_PLUGIN = '''
import crawler

class Echo:
    name = "cwd-echo"
    description = "answers every URL without a network"

    def fetch(self, urls, settings):
        for url in urls:
            yield crawler.FetchResult(url=url, status=200, final_url=url, headers={"content-type": "text/plain"}, body=b"hi")

@crawler.hookimpl
def crawler_engines():
    return [Echo()]
'''


def test_plugin_module_in_the_current_directory_is_found(tmp_path):
    script = Path(sys.executable).parent / "crawl"  # the console script: its sys.path[0] is bin/, not the cwd
    if not script.exists():
        pytest.skip("no crawl console script beside this Python")
    (tmp_path / "my_cwd_plugin.py").write_text(ECHO_PLUGIN)
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/x\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(script), "urls.txt", "--plugin", "my_cwd_plugin", "-e", "cwd-echo", "--out", "r.jsonl", "-q", "--no-parse"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [record] = read_records(str(tmp_path / "r.jsonl"))
    assert record["engine"] == "cwd-echo" and record["ok"]


# --- 13. an accounting bug is a failed run ----------------------------------------------------

TWICE_PLUGIN = ECHO_PLUGIN.replace('"cwd-echo"', '"twice"').replace(
    "            yield crawler.FetchResult(", "            yield crawler.FetchResult(url=url, status=200)\n            yield crawler.FetchResult("
)


def test_accounting_bug_exits_1(tmp_path):
    (tmp_path / "twice_plugin.py").write_text(TWICE_PLUGIN)
    urls = write_urls(tmp_path, ["http://127.0.0.1:9/x"])
    result = crawl(str(urls), "--plugin", "twice_plugin", "-e", "twice", "-q", "--no-parse", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result.stderr
    assert "crawl: BUG: twice:" in result.stderr and "crawl report" in result.stdout


# --- 12. README documents the exit codes and the --out rules ------------------------------------


def test_readme_documents_exit_codes_and_file_rules():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    usage = readme[readme.index("## Usage") :]
    for code in ("0", "1", "2", "130", "143"):
        assert re.search(rf"^\| `{code}` \|", usage, re.M), code
    for rule in ("--out -", "SQLite", "spreadsheet", "URL file"):
        assert rule in usage, rule


def test_sqlite_resume_into_a_foreign_records_table_is_refused(tmp_path):
    out = tmp_path / "r.db"
    db = sqlite3.connect(out)
    db.execute("CREATE TABLE records (id INTEGER, what TEXT)")
    db.commit()
    db.close()
    urls = write_urls(tmp_path, ["http://127.0.0.1:9/"])
    result = crawl(str(urls), "--out", str(out), "--resume", "-q")
    assert result.returncode == 2 and "records" in result.stderr and len(result.stderr.strip().splitlines()) == 1
