"""The Python API (SPEC §9): crawler.crawl() and crawler.compare(), from scripts as users write them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import crawler
from crawler.outputs import record_keys


def run_script(tmp_path, code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` as a plain script file (``__main__`` with a ``__file__``), run by a fresh interpreter."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def test_crawl_yields_one_record_per_url_with_the_spec_fields(server):
    urls = [server.url(f"/page/api-{i}") for i in range(6)] + [server.url("/status/404"), "not a url", "  "]
    records = list(crawler.crawl(iter(urls), engine="threads", concurrency=4, parse_workers=1, robots=False))
    by_url = {r["url"]: r for r in records}
    assert sorted(by_url) == sorted(u for u in urls if u.strip())  # the blank one is no URL: no record
    assert all(tuple(r) == record_keys(False) for r in records)
    assert by_url[server.url("/page/api-3")]["title"] == "api-3" and by_url[server.url("/page/api-3")]["ok"]
    assert by_url[server.url("/status/404")]["error"] == "http_status"
    assert by_url["not a url"]["error"] == "invalid_url"


def test_options_are_checked_before_anything_is_fetched(server, hits):
    url = server.url("/page/api-never-fetched")
    with pytest.raises(TypeError, match="'concurency'"):
        crawler.crawl([url], concurency=4)
    with pytest.raises(TypeError, match="'engine_opt'"):
        crawler.compare([url], engine_opt={"a": "b"})
    with pytest.raises(ValueError, match="concurrency"):
        crawler.crawl([url], concurrency=0)
    with pytest.raises(ValueError, match="parse=False"):
        crawler.crawl([url], depth=1, parse=False)
    with pytest.raises(KeyError, match="no-such-engine"):
        crawler.crawl([url], engine="no-such-engine")
    with pytest.raises(TypeError, match="not one string"):
        crawler.crawl(url)
    assert hits["/page/api-never-fetched"] == 0


def test_compare_returns_the_report_dict_and_replays_a_one_shot_iterator(server):
    urls = [server.url(f"/page/cmp-{i}") for i in range(10)]
    seen: list[dict] = []
    report = crawler.compare(
        (u for u in urls), engines=["asyncio", "yield"], parse=False, concurrency=4, robots=False, on_record=seen.append
    )
    assert [e["engine"] for e in report["engines"]] == ["asyncio", "yield"]
    for summary in report["engines"]:
        assert summary["urls"] == 10 and summary["ok"] == 10 and summary["pages_per_s"] > 0
        assert summary["verdict"]
    assert report["settings"]["parse"] is False and report["settings"]["concurrency"] == 4
    assert len(seen) == 20
    json.dumps(report)  # what --report writes


def test_depth_follows_links_through_the_api(server):
    records = list(crawler.crawl([server.url("/links/3")], depth=1, parse_workers=1, robots=False, record_links=True))
    assert len(records) == 4
    [root] = [r for r in records if r["depth"] == 0]
    assert sorted(r["url"] for r in records if r["depth"] == 1) == sorted(root["link_urls"])


SCRIPT_WITHOUT_GUARD = """
    import sys
    import crawler

    urls = sys.argv[1:]
    total = 0
    for engine in ("pool", "asyncio"):
        for record in crawler.crawl(urls, engine=engine, concurrency=4, parse_workers=2, robots=False):
            total += record["ok"]
    report = crawler.compare(urls, engines=["threads"], parse_workers=2, robots=False)
    print(total, report["engines"][0]["ok"])
"""


def test_a_script_without_a_main_guard_runs_processes_and_parse_workers(tmp_path, server):
    urls = [server.url(f"/page/guardless-{i}") for i in range(12)]
    done = run_script(tmp_path, SCRIPT_WITHOUT_GUARD, *urls)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["24", "12"]


BREAK_OUT = """
    import sys, threading, time
    import psutil
    import crawler

    engine, urls = sys.argv[1], sys.argv[2:]
    me = psutil.Process()
    threads_before = threading.active_count()

    def ours():
        # multiprocessing's own helpers (the fork server, the resource tracker) serve the whole
        # interpreter and end with it; everything else, the fork server's children included, is the crawl's
        found = []
        for child in me.children(recursive=True):
            try:
                helper = child.ppid() == me.pid and any(h in " ".join(child.cmdline()) for h in ("forkserver", "resource_tracker"))
                if not helper and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child.pid)
            except psutil.Error:
                continue
        return found

    for n, record in enumerate(crawler.crawl(urls, engine=engine, concurrency=4, parse_workers=2, robots=False)):
        if n == 3:
            during = len(ours())
            break
    deadline = time.monotonic() + 20
    while (ours() or threading.active_count() > threads_before) and time.monotonic() < deadline:
        time.sleep(0.1)
    print(during, len(ours()), threading.active_count() - threads_before)
"""


@pytest.mark.parametrize("engine", ["asyncio", "pool", "threads"])
def test_breaking_out_of_the_loop_stops_every_process_and_thread(tmp_path, server, engine):
    urls = [server.url(f"/page/brk-{i}") for i in range(4)] + [server.url(f"/delay?s=2&i={i}") for i in range(40)]
    done = run_script(tmp_path, BREAK_OUT, engine, *urls)
    assert done.returncode == 0, done.stderr[-3000:]
    during, processes_left, threads_left = map(int, done.stdout.split())
    assert during >= 2  # the parse workers at least: something to stop
    assert (processes_left, threads_left) == (0, 0)


def test_from_an_interactive_session_where_main_has_no_file(tmp_path, server):
    # as in a REPL or a notebook: __main__ has no __file__ (python -c)
    urls = [server.url(f"/page/repl-{i}") for i in range(6)]
    code = textwrap.dedent(SCRIPT_WITHOUT_GUARD).replace("urls = sys.argv[1:]", f"urls = {urls!r}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["12", "6"]
