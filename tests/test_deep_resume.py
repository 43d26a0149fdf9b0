"""A deep crawl stopped at any moment and resumed writes what one uninterrupted crawl writes (issue 12).

A real ``python -m crawler`` process crawls a small site (a tree of pages
with cross links, cycles, a link back to a list line, an off-host link, a
404 and an image) to depth 3.  It is stopped three times — ``kill -9`` in
level 0, Ctrl-C in the middle of level 1 (pages fetched but not yet parsed
are dropped then), ``kill -9`` in the middle of level 2 — each time resumed
with ``--resume``, and the last run goes to the end.  The records of all the
runs together must hold each URL exactly once, at the depth breadth-first
search gives it, for every engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web
from conftest import ENGINE_SETTINGS, LocalServer

from crawler.frontier import state_path

N = 100  # pages linked from one another: /p/0 ... /p/99
ORPHANS = range(N, N + 5)  # served, linked from nowhere: only a list line reaches them
SEEDS = [0, 40, 77, 15, 60, 90, 33, 2]  # the list; /p/2 is also a link on /p/0, listed last
DEPTH = 3
DELAY = 0.02  # per response: the crawl lasts long enough to be stopped where we want


def links(i: int) -> list[int]:
    """Page numbers /p/i links to: its children in a ternary tree, its parent, the root, two cross links."""
    targets = [3 * i + 1, 3 * i + 2, 3 * i + 3, (i - 1) // 3 if i else 0, 0, (i * 7 + 3) % N, (i * 11 + 5) % N]
    return [j for j in targets if j < N]


def extras(i: int) -> list[str]:
    """Links to what is not a page of the tree: a 404 on every 13th page, an image on page 5."""
    return ([f"/missing/{i}"] if i % 13 == 0 else []) + (["/img/5.png"] if i == 5 else [])


def page_html(i: int, base: str, other: str) -> str:
    hrefs = []
    for k, j in enumerate(links(i)):
        # the same target spelt several ways: relative with dot segments, absolute, with a fragment
        hrefs += [f"../p/{j}", f"{base}/p/{j}#s{k}"] if k % 2 else [f"/p/{j}"]
    hrefs += extras(i) + [f"{other}/elsewhere", "mailto:someone@example.test", f"./{i}"]
    anchors = "".join(f'<a href="{href}">link</a> ' for href in hrefs)
    return f"<!doctype html><html><head><title>page {i}</title></head><body><p>page {i}</p>{anchors}</body></html>"


def build_site(hits: Counter, other_base: list[str]) -> web.Application:
    async def page(request):
        hits[request.path] += 1
        i = int(request.match_info["n"])
        await asyncio.sleep(DELAY)
        if i >= N and i not in ORPHANS:
            raise web.HTTPNotFound()
        base = f"http://{request.host}"
        return web.Response(text=page_html(i, base, other_base[0]), content_type="text/html")

    async def image(request):
        hits[request.path] += 1
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + bytes(200), content_type="image/png")

    async def missing(request):
        hits[request.path] += 1
        await asyncio.sleep(DELAY)
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get(r"/p/{n:\d+}", page)
    app.router.add_get("/img/{name}", image)
    app.router.add_get("/missing/{n}", missing)
    return app


@pytest.fixture(scope="module")
def tree_site():
    other = LocalServer(web.Application())  # the off-host link's target (never followed with --same-host)
    hits: Counter = Counter()
    site = LocalServer(build_site(hits, [other.base]))
    site.hits = hits
    yield site
    site.close()
    other.close()


def expected_crawl(base: str, seeds: list[int], depth: int = DEPTH) -> dict[str, tuple[int, set]]:
    """Breadth-first search over the site: url -> (depth, the URLs of the pages that may be its parent)."""
    found: dict[str, tuple[int, set]] = {f"{base}/p/{s}": (0, set()) for s in seeds}
    level = list(dict.fromkeys(seeds))
    for d in range(1, depth + 1):
        following = []
        for i in level:
            parent = f"{base}/p/{i}"
            for target in [f"{base}/p/{j}" for j in links(i)] + [base + path for path in extras(i)]:
                if target not in found:
                    found[target] = (d, set())
                    if "/p/" in target:
                        following.append(int(target.rsplit("/", 1)[1]))
                if found[target][0] == d:
                    found[target][1].add(parent)
        level = following
    return found


def engine_args(engine: str) -> list[str]:
    scheduler = ENGINE_SETTINGS.get(engine, {}).get("engine_options", {}).get("scheduler")
    return ["--engine-opt", f"scheduler={scheduler}"] if scheduler else []


def crawl_command(engine: str, urls: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "crawler", str(urls), "-e", engine, "--depth", str(DEPTH), "--out", str(out),
        "-q", "-c", "3", "--parse-workers", "1", "--no-robots", "--timeout", "10", *engine_args(engine), *extra,
    ]  # fmt: skip


def lines_in(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def run(command: list[str], out: Path, stop_at: int | None = None, sig: int = signal.SIGKILL, timeout: float = 60):
    """Run the crawl; with ``stop_at``, send ``sig`` once ``out`` holds that many records. Returns (exit code, stderr)."""
    # A file per run: a killed run's helpers (multiprocessing's resource tracker) may still write to theirs.
    run.count = getattr(run, "count", 0) + 1
    with open(out.parent / f"stderr-{run.count}.txt", "w+b") as err:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            if stop_at is not None:
                deadline = time.monotonic() + timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    if lines_in(out) >= stop_at:
                        proc.send_signal(sig)
                        break
                    time.sleep(0.003)
            code = proc.wait(timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        err.seek(0)
        return code, err.read().decode("utf-8", "replace")


def check_records(out: Path, expected: dict[str, tuple[int, set]]) -> list[dict]:
    records = [json.loads(line) for line in out.read_text().splitlines()]
    counts = Counter(r["url"] for r in records)
    assert [url for url, n in counts.items() if n > 1] == [], "a URL has two records"
    assert {r["url"]: r["depth"] for r in records} == {url: depth for url, (depth, _) in expected.items()}
    for r in records:
        depth, parents = expected[r["url"]]
        assert (r["parent"] is None) if depth == 0 else (r["parent"] in parents), r
    return records


def test_stopped_three_times_and_resumed_gives_the_uninterrupted_record_set(engine_name, tree_site, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(tree_site.url(f"/p/{s}") + "\n" for s in SEEDS))
    out = tmp_path / "records.jsonl"
    expected = expected_crawl(tree_site.base, SEEDS)
    sizes = Counter(depth for depth, _ in expected.values())
    assert sorted(sizes.items()) == [(0, 8), (1, 28), (2, 48), (3, 24)]  # the site is what this test thinks it is
    first = crawl_command(engine_name, urls, out)
    again = crawl_command(engine_name, urls, out, "--resume")
    stops = [
        (first, sizes[0] // 2, signal.SIGKILL),  # in level 0
        (again, sizes[0] + sizes[1] // 2, signal.SIGINT),  # in the middle of level 1: Ctrl-C
        (again, sizes[0] + sizes[1] + sizes[2] // 2, signal.SIGKILL),  # in the middle of level 2
    ]
    stopped = []
    for command, at, sig in stops:
        if lines_in(out) >= at:
            continue  # the previous stop landed late, past this point already
        code, stderr = run(command, out, at, sig)
        stopped.append((lines_in(out), code))
        if code == 0:
            break  # it ran to the end before the signal came
        assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), stderr
    print("stopped at (records, exit code):", stopped)
    code, stderr = run(again, out)
    assert code == 0, stderr
    assert "BUG" not in stderr and "warning" not in stderr, stderr
    check_records(out, expected)
    assert len(stopped) >= 2, f"the crawl was stopped only at {stopped}"
    with open(state_path(str(out), engine_name), "rb") as state:
        assert state.read().rstrip().endswith(b'["complete"]')


def test_a_complete_crawl_resumed_fetches_nothing_and_a_new_list_line_is_still_crawled(tree_site, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(tree_site.url(f"/p/{s}") + "\n" for s in SEEDS))
    out = tmp_path / "records.jsonl"
    command = crawl_command("asyncio", urls, out, "--resume")  # --resume on a first run: nothing to resume, no warning
    code, stderr = run(command, out)
    assert code == 0 and stderr == "", stderr
    expected = expected_crawl(tree_site.base, SEEDS)
    check_records(out, expected)

    before = sum(tree_site.hits.values())
    code, stderr = run(command, out)
    assert code == 0
    assert stderr.splitlines() == [f"crawl: asyncio: already complete ({state_path(str(out), 'asyncio')})"]
    assert sum(tree_site.hits.values()) == before  # nothing fetched
    check_records(out, expected)

    # a line added to the URL file since: it has no record, so it is crawled (its links are all known already)
    with open(urls, "a") as f:
        f.write(tree_site.url(f"/p/{ORPHANS[0]}") + "\n")
    code, stderr = run(command, out)
    assert code == 0 and "already complete" in stderr
    assert sum(tree_site.hits.values()) == before + 1
    check_records(out, {**expected, tree_site.url(f"/p/{ORPHANS[0]}"): (0, set())})


def test_resume_without_a_state_file_says_what_it_cannot_do(tree_site, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text(tree_site.url("/p/0") + "\n")
    out = tmp_path / "records.jsonl"
    code, _ = run(crawl_command("asyncio", urls, out, "--depth", "1"), out)
    assert code == 0
    state = Path(state_path(str(out), "asyncio"))
    state.unlink()
    code, stderr = run(crawl_command("asyncio", urls, out, "--depth", "2", "--resume"), out)
    assert code == 0
    [line] = stderr.splitlines()
    assert line.startswith(f"crawl: warning: asyncio: no frontier state at {state}: links of pages already crawled cannot be followed")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(r["url"] for r in records).most_common(1)[0][1] == 1  # nothing crawled twice
    assert {r["depth"] for r in records} == {0, 1}  # nothing to take the crawl deeper from
    assert state.exists()  # kept from now on


def test_without_resume_an_old_state_file_is_replaced(tree_site, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text(tree_site.url("/p/0") + "\n")
    out = tmp_path / "records.jsonl"
    state = Path(state_path(str(out), "asyncio"))
    state.write_text('["queue",1,"http://127.0.0.1:9/stale","http://127.0.0.1:9/"]\n["complete"]\n')
    code, stderr = run(crawl_command("asyncio", urls, out, "--depth", "1"), out)
    assert code == 0, stderr
    text = state.read_text()
    assert "stale" not in text and text.count('["complete"]') == 1
    assert len(out.read_text().splitlines()) == len(expected_crawl(tree_site.base, [0], depth=1))


def test_a_killed_demo_crawl_resumes_on_the_same_port(tmp_path):
    out = tmp_path / "demo.jsonl"
    pages = 300
    command = [sys.executable, "-m", "crawler", "--demo", "--demo-pages", str(pages), "--demo-page-kb", "6", "--demo-delay", "0.005",
               "--depth", "1", "-e", "asyncio", "-c", "4", "--parse-workers", "0", "--out", str(out), "-q"]  # fmt: skip
    code, stderr = run(command, out, stop_at=pages // 3)
    assert code == -signal.SIGKILL, stderr
    code, stderr = run(command + ["--resume"], out)  # its site may still be exiting: the port is waited for
    assert code == 0, stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ports = {r["url"].split("/")[2] for r in records}
    assert len(ports) == 1, ports
    [port] = ports
    # every page once, at depth 0 (the list); the nav bar's link to the index page, at depth 1
    assert sorted((r["url"], r["depth"]) for r in records) == sorted(
        [(f"http://{port}/page/{n}", 0) for n in range(pages)] + [(f"http://{port}/", 1)]
    )


def test_a_state_file_older_than_the_records_resurrects_nothing(tree_site, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(tree_site.url(f"/p/{s}") + "\n" for s in SEEDS))
    out = tmp_path / "records.jsonl"
    state = Path(state_path(str(out), "asyncio"))
    expected = expected_crawl(tree_site.base, SEEDS)
    code, _ = run(crawl_command("asyncio", urls, out), out, stop_at=20)  # in level 1
    assert code == -signal.SIGKILL
    old = state.read_bytes()
    code, stderr = run(crawl_command("asyncio", urls, out, "--resume"), out)
    assert code == 0, stderr
    check_records(out, expected)
    state.write_bytes(old)  # a state from before most of the records (e.g. a backup)
    before = sum(tree_site.hits.values())
    code, stderr = run(crawl_command("asyncio", urls, out, "--resume"), out)
    assert code == 0, stderr
    assert sum(tree_site.hits.values()) == before  # every URL it queued has its record: none is fetched again
    check_records(out, expected)
