"""The ``crawl`` command as a user runs it: a real process, real exit codes, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points

import psutil
import pytest

from crawler.outputs import RECORD_KEYS

REPORT_KEYS = {
    "engine", "urls", "ok", "failed", "errors", "lines_read", "skipped", "wall_s", "pages_per_s",
    "mb_per_s", "fetch_ms", "parse_cpu_s", "cpu_s", "peak_rss_mb",
}  # fmt: skip


def crawl(*args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crawler", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_usage_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def pages(httpserver):
    httpserver.no_handler_status_code = 404  # so /robots.txt is "none", as on a real server
    for name in ("a", "b", "c"):
        httpserver.expect_request(f"/{name}").respond_with_data(
            f"<html><head><title>page {name}</title></head><body><p>one two three</p><a href='/a'>a</a></body></html>",
            content_type="text/html",
        )
    return [httpserver.url_for(f"/{name}") for name in ("a", "b", "c")]


def test_missing_file_is_a_usage_error(tmp_path):
    assert_usage_error(crawl(str(tmp_path / "nope.txt")), "nope.txt")


def test_unknown_engine_lists_the_known_ones(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    assert_usage_error(crawl(str(urls), "-e", "warp"), "warp", "asyncio", "threads")


@pytest.mark.parametrize("option", [["-c", "zero"], ["--timeout", "soon"], ["--retries", "-1"], ["--bogus"], ["--engine-opt", "novalue"]])
def test_bad_option_values_are_usage_errors(tmp_path, option):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    assert_usage_error(crawl(str(urls), *option))


def test_neither_file_nor_demo_is_a_usage_error():
    assert_usage_error(crawl(), "URLS_FILE")


def test_plugin_that_does_not_import_is_a_usage_error(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    assert_usage_error(crawl(str(urls), "--plugin", "no_such_module_here"), "no_such_module_here")


def test_list_engines_shows_every_builtin():
    result = crawl("--list-engines")
    assert result.returncode == 0, result.stderr
    names = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert {"asyncio", "threads"} <= names


def test_builtins_are_registered_through_entry_points():
    found = {ep.name: ep.value for ep in entry_points(group="crawler")}
    assert found["asyncio"] == "crawler_plugins.asyncio_engine"
    assert found["threads"] == "crawler_plugins.threads_engine"
    assert found["pool"] == "crawler_plugins.pool"
    assert found["dask"] == "crawler_plugins.dask"
    assert found["yield"] == "crawler_plugins.yield_engine"


FAKE_PLUGIN = '''
import crawler

class Echo:
    name = "echo"
    description = "answers every URL with 200 and an empty page, without a network"

    def fetch(self, urls, settings):
        for url in urls:
            yield crawler.FetchResult(url=url, status=200, final_url=url, headers={"content-type": "text/html"},
                                      body=b"<title>echo</title>")

@crawler.hookimpl
def crawler_engines():
    return [Echo()]
'''


def test_plugin_from_the_command_line_is_listed_and_runs(tmp_path):
    (tmp_path / "echo_engine_plugin.py").write_text(FAKE_PLUGIN)
    env = {"PYTHONPATH": str(tmp_path)}
    listed = crawl("--plugin", "echo_engine_plugin", "--list-engines", env=env)
    assert listed.returncode == 0 and "echo" in listed.stdout
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/x\nhttp://127.0.0.1:9/y\n")
    out = tmp_path / "r.jsonl"
    result = crawl(str(urls), "--plugin", "echo_engine_plugin", "-e", "echo", "--out", str(out), "-q", "--parse-workers", "0", env=env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["title"] for r in records] == ["echo", "echo"] and {r["engine"] for r in records} == {"echo"}


def test_duplicate_engine_name_is_a_usage_error(tmp_path):
    (tmp_path / "dup_plugin.py").write_text(FAKE_PLUGIN.replace('"echo"', '"asyncio"'))
    result = crawl("--plugin", "dup_plugin", "--list-engines", env={"PYTHONPATH": str(tmp_path)})
    assert_usage_error(result, "asyncio", "twice")


def test_stdin_and_file_lines(pages, tmp_path):
    text = "\ufeff# a comment\r\n\r\n  " + pages[0] + "  \r\n" + "\n".join(pages[1:]) + "\nnot a url\n"
    out = tmp_path / "r.jsonl"
    result = crawl("-", "--out", str(out), "-q", "--parse-workers", "0", stdin=text)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["url"] for r in records) == sorted(pages + ["not a url"])


def test_records_and_report_of_two_engines(pages, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(pages + ["http://", pages[0]]) + "\n")
    out, report_path = tmp_path / "r.jsonl", tmp_path / "r.json"
    result = crawl(str(urls), "-e", "threads,asyncio", "--out", str(out), "--report", str(report_path), "-q")
    assert result.returncode == 0, result.stderr
    assert "pages/s" in result.stdout and "threads" in result.stdout and "asyncio" in result.stdout

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 * 5
    for record in records:
        assert tuple(record) == RECORD_KEYS
        assert isinstance(record["fetch_ms"], (int, float))
        if record["ok"]:
            assert record["title"].startswith("page ") and record["links"] == 1 and record["words"] == 4  # "one two three a"
            assert len(record["simhash"]) == 16 and len(record["sha256"]) == 64

    report = json.loads(report_path.read_text())
    assert set(report) >= {"engines", "settings", "python", "platform"}
    assert [e["engine"] for e in report["engines"]] == ["threads", "asyncio"]
    for engine in report["engines"]:
        assert REPORT_KEYS <= set(engine)
        assert set(engine["fetch_ms"]) == {"p50", "p95", "p99", "max"}
        assert engine["urls"] == 5 and engine["ok"] == 4 and engine["failed"] == 1
        assert engine["ok"] + engine["failed"] == engine["urls"] == engine["lines_read"]
        assert engine["errors"] == {"invalid_url": 1}
        assert engine["pages_per_s"] == pytest.approx(engine["ok"] / engine["wall_s"], rel=0.01)
        assert engine["cpu_s"] > 0 and engine["peak_rss_mb"] > 10
    assert max(e["relative"] for e in report["engines"]) == 1.0


def test_demo_crawls_every_page_and_leaves_no_server_behind(tmp_path):
    report_path, out = tmp_path / "r.json", tmp_path / "r.jsonl"
    result = crawl("--demo", "-e", "asyncio", "--report", str(report_path), "--out", str(out), "--demo-pages", "200", "-q")
    assert result.returncode == 0, result.stderr
    [engine] = json.loads(report_path.read_text())["engines"]
    assert engine["urls"] == engine["ok"] == 200
    port = int(json.loads(out.read_text().splitlines()[0])["url"].split(":")[2].split("/")[0])
    listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening == []  # the site is gone with the run


def test_version():
    result = crawl("--version")
    assert result.returncode == 0 and result.stdout.startswith("crawl ")


def test_resume_skips_what_is_done_and_appends_the_rest(pages, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(pages + [pages[0]]) + "\n")
    out, report = tmp_path / "r.jsonl", tmp_path / "r.json"
    done = {"engine": "asyncio", "url": pages[0], "ok": True}
    # one finished record for pages[0], one for another engine, and a line torn by a kill
    out.write_text(json.dumps(done) + "\n" + json.dumps({**done, "engine": "threads"}) + "\n" + '{"engine": "asyncio", "url": "' + pages[1][:10])
    result = crawl(str(urls), "--out", str(out), "--resume", "--report", str(report), "-q", "--parse-workers", "0")
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # the torn line is gone: every line parses
    asyncio_urls = sorted(r["url"] for r in records if r["engine"] == "asyncio")
    assert asyncio_urls == sorted(pages + [pages[0]])  # pages[0] twice: once before, once now
    [summary] = json.loads(report.read_text())["engines"]
    assert summary["skipped"] == 1 and summary["lines_read"] == 4 and summary["urls"] == 3


def test_resume_without_out_is_a_usage_error(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    assert_usage_error(crawl(str(urls), "--resume"), "--out")


def test_concurrency_sweep_makes_a_matrix_and_a_chart(pages, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(pages * 3) + "\n")
    report, chart = tmp_path / "r.json", tmp_path / "sweep.png"
    result = crawl(str(urls), "-e", "threads,asyncio", "-c", "1,4", "--report", str(report), "--plot", str(chart), "-q", "--parse-workers", "0")
    assert result.returncode == 0, result.stderr
    assert "c=1" in result.stdout and "c=4" in result.stdout
    engines = json.loads(report.read_text())["engines"]
    assert sorted((e["engine"], e["concurrency"]) for e in engines) == [("asyncio", 1), ("asyncio", 4), ("threads", 1), ("threads", 4)]
    assert all(e["urls"] == 9 and e["verdict"] for e in engines)
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_report_explains_each_engine(pages, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(pages) + "\n")
    result = crawl(str(urls), "--json", "-q", "--parse-workers", "1")
    assert result.returncode == 0, result.stderr
    [engine] = json.loads(result.stdout)["engines"]
    assert 0 < engine["client_cores"] <= 1.25 * (os.cpu_count() or 1)  # CPU over wall time: within the machine
    assert 1 <= engine["peak_in_flight"] <= 3
    assert engine["peak_parse_backlog"] >= 1 and engine["verdict"]


@pytest.mark.parametrize("value", ["0", "1,x", "4,0"])
def test_bad_concurrency_lists_are_usage_errors(tmp_path, value):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    assert_usage_error(crawl(str(urls), "-c", value), "--concurrency")


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path):
    fake = tmp_path / "matplotlib"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    result = crawl(str(urls), "--plot", str(tmp_path / "c.png"), env={"PYTHONPATH": str(tmp_path)})
    assert_usage_error(result, "pip install", "plot")
    assert_usage_error(crawl(str(urls), "--plot", str(tmp_path / "c.pdf")), ".png")


def test_hostile_url_file_gives_every_line_a_record(pages, tmp_path):
    lines = [
        b"\xef\xbb\xbf" + pages[0].encode(),  # BOM
        pages[1].encode() + b"\r",  # CRLF
        b"http://bad\xff\xfebytes.test/",  # not UTF-8
        b"http://nul\x00byte.test/",
        b"http://127.0.0.1:9/" + b"a" * 100_000,  # a 100 KB line
        b"   ",
        b"  # indented comment",
        pages[2].encode() + b"#fragment",
    ]
    urls = tmp_path / "urls.txt"
    urls.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "r.jsonl"
    # The default whole-request deadline (10 s): with 2 s, healthy pages ended as "timeout"
    # (2.7 s) on a loaded machine: a single-threaded server in a busy test process.
    result = crawl(str(urls), "--out", str(out), "-q", "--parse-workers", "0", "--retries", "0")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6
    ok = {r["url"] for r in records if r["ok"]}
    assert ok == {pages[0], pages[1], pages[2] + "#fragment"}, [{k: r[k] for k in ("url", "error", "detail", "fetch_ms")} for r in records if not r["ok"]]
    # the bad bytes, the NUL, and the 100 KB line (over SPEC's 8,192 characters: never fetched)
    assert sum(r["error"] == "invalid_url" for r in records) == 3
    assert any(len(r["url"]) > 100_000 and r["error"] == "invalid_url" for r in records)


def test_interrupted_demo_leaves_no_site_behind(tmp_path):
    out = tmp_path / "r.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "crawler", "--demo", "--demo-pages", "300", "--demo-delay", "0.2", "-c", "4", "-q", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60  # a loaded machine may take long to start; the first record says it has
    while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert out.exists() and out.stat().st_size, "no record within 60 s"
    children = psutil.Process(process.pid).children(recursive=True)
    assert any("crawler.site" in " ".join(c.cmdline()) for c in children)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr
    assert "crawl report" in stdout
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert alive == []


GHOST_PLUGIN = FAKE_PLUGIN.replace('name = "echo"', 'name = "ghost"\n    unavailable = "pip install ghost-extra"').replace(
    "        for url in urls:", "        yield from ()\n        return {'remote_cpu_s': 1.5}\n        for url in urls:"
)


def test_unavailable_engines_are_listed_skipped_by_all_and_refused_by_name(tmp_path, pages):
    (tmp_path / "ghost_plugin.py").write_text(GHOST_PLUGIN)
    env = {"PYTHONPATH": str(tmp_path)}
    listed = crawl("--plugin", "ghost_plugin", "--list-engines", env=env)
    assert "ghost" in listed.stdout and "unavailable: pip install ghost-extra" in listed.stdout
    urls = tmp_path / "urls.txt"
    urls.write_text(pages[0] + "\n")
    assert_usage_error(crawl(str(urls), "--plugin", "ghost_plugin", "-e", "ghost", env=env), "ghost", "pip install ghost-extra")
    report = tmp_path / "r.json"
    result = crawl(str(urls), "--plugin", "ghost_plugin", "-e", "all", "-q", "--no-parse", "--report", str(report), env=env)
    assert result.returncode == 0, result.stderr
    assert "skipping ghost (pip install ghost-extra)" in result.stderr
    assert "ghost" not in {e["engine"] for e in json.loads(report.read_text())["engines"]}


def _comparable(record: dict) -> dict:
    """A record as text, less its timing: what every output format must agree on."""
    return {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v)) for k, v in record.items() if k != "fetch_ms"}


def test_csv_and_sqlite_outputs_match_jsonl(pages, tmp_path):
    import csv
    import sqlite3

    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(pages + ["not a url"]) + "\n")
    outputs = {}
    for suffix in ("jsonl", "csv", "sqlite"):
        out = tmp_path / f"r.{suffix}"
        result = crawl(str(urls), "-e", "threads", "--out", str(out), "-q", "--parse-workers", "0")
        assert result.returncode == 0, result.stderr
        outputs[suffix] = out
    jsonl = sorted((_comparable(json.loads(line)) for line in outputs["jsonl"].read_text().splitlines()), key=lambda r: r["url"])
    with open(outputs["csv"], newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == RECORD_KEYS
    from_csv = sorted((_comparable(dict(zip(rows[0], row))) for row in rows[1:]), key=lambda r: r["url"])
    db = sqlite3.connect(outputs["sqlite"])
    db.row_factory = sqlite3.Row
    from_sqlite = [dict(row) for row in db.execute("SELECT * FROM records ORDER BY url")]
    db.close()
    assert tuple(from_sqlite[0]) == RECORD_KEYS
    from_sqlite = [_comparable({**r, "ok": bool(r["ok"])}) for r in from_sqlite]
    assert jsonl == from_csv == from_sqlite
    assert len(jsonl) == 4 and jsonl[0]["ok"] == "true"


@pytest.mark.parametrize("suffix", ["csv", "db"])
def test_resume_reads_csv_and_sqlite(pages, tmp_path, suffix):
    urls = tmp_path / "urls.txt"
    urls.write_text(pages[0] + "\n")
    out, report = tmp_path / f"r.{suffix}", tmp_path / "r.json"
    assert crawl(str(urls), "--out", str(out), "-q", "--parse-workers", "0").returncode == 0
    urls.write_text("\n".join(pages) + "\n")
    result = crawl(str(urls), "--out", str(out), "--resume", "-q", "--parse-workers", "0", "--report", str(report))
    assert result.returncode == 0, result.stderr
    [summary] = json.loads(report.read_text())["engines"]
    assert summary["skipped"] == 1 and summary["urls"] == 2


def test_help_reads_at_80_columns_in_panels_with_examples_and_exit_codes():
    result = subprocess.run(
        [sys.executable, "-m", "crawler", "--help"], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "80"}
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert "Other:" not in lines  # every option sits in a panel
    for heading in ("Engines:", "Fetching:", "Parsing:", "Politeness and following:", "Input and output:", "Report:", "Examples:", "Exit status:"):
        assert any(line.startswith(heading) for line in lines), heading
    assert "<bool>" not in result.stdout and "<str>" not in result.stdout
    assert len(lines) < 110
