"""The hostile-response conformance matrix (SPEC §6, "One response, one verdict, whatever the engine").

Every registered engine (the ``engine_name`` fixture) is fed the same hostile
bytes from loopback servers, and must give the same record: unparsable
redirect targets and URL lines, ever-growing redirect chains, interim 1xx
responses, header sections at and just past the limits, endless and dripping
bodies under a deadline, a robots.txt that never answers, an exception in an
exchange, a name that does not resolve, and all of it mixed in one list run
through the real command.  Nothing here names an engine: an engine joins the
matrix by registering.

Everything talks to loopback only.  The DNS case runs the command in a
private mount namespace whose /etc/resolv.conf points at a stub on port 53
of a loopback address of its own (127.53.x.y) answering NXDOMAIN, so no
query leaves the machine, and parallel test workers never share a stub.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from conftest import COMMAND_ENGINES, ENGINE_SETTINGS, by_url, run_records

import crawler
from crawler.fetching import (
    Response,
    fetch_plan,
    run_async,
    run_blocking,
    run_coroutine,
)
from crawler.pipeline import RunOptions, run_engine

REPO = Path(__file__).resolve().parent.parent
CONNECTION_LIFE = 60.0  # no server connection outlives this, whatever the client does
SERVER_LIFE = 900.0  # nor does a server's accept loop


# --- a loopback server that breaks HTTP on purpose ------------------------------------


class HostileServer:
    """conftest.RawServer's idea, extended: a log of request targets, routes chosen by
    path prefix, endless actions (generators), and a "hold" that ends when the client leaves.

    A route is a list of actions or a function ``path -> iterable of actions``:
    ``bytes`` are sent, a ``float`` sleeps, ``"close"`` closes, ``"hold"`` keeps the
    connection open until the client closes it (or the server stops).  Every
    connection is bounded by CONNECTION_LIFE and serves one request.
    """

    NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "close")

    def __init__(self, routes: dict | None = None, prefixes: dict | None = None):
        self.routes = dict(routes or {})
        self.prefixes = dict(prefixes or {})
        self.seen: list[str] = []  # request targets, in arrival order
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.born = time.monotonic()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests_for(self, prefix: str) -> list[str]:
        with self._lock:
            return [path for path in self.seen if path.startswith(prefix)]

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set() and time.monotonic() - self.born < SERVER_LIFE:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _actions(self, path: str):
        if path in self.routes:
            route = self.routes[path]
        else:
            route = next((fn for prefix, fn in self.prefixes.items() if path.startswith(prefix)), self.NOT_FOUND)
        return route(path) if callable(route) else route

    def _answer(self, conn: socket.socket) -> None:
        end = time.monotonic() + CONNECTION_LIFE
        try:
            conn.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 1 << 20:
                data = conn.recv(65536)
                if not data:
                    return
                request += data
            path = request.split(b" ", 2)[1].decode("latin-1")
            with self._lock:
                self.seen.append(path)
            for action in self._actions(path):
                if self.stop.is_set() or time.monotonic() > end:
                    return
                if isinstance(action, bytes):
                    conn.sendall(action)
                elif isinstance(action, float):
                    if self.stop.wait(action):
                        return
                elif action == "hold":
                    self._hold(conn, end)
                    return
                elif action == "close":
                    return
        except (OSError, IndexError):
            pass
        finally:
            conn.close()

    def _hold(self, conn: socket.socket, end: float) -> None:
        while not self.stop.is_set() and time.monotonic() < end:
            readable, _, _ = select.select([conn], [], [], 0.2)
            if readable and not conn.recv(4096):
                return  # the client gave up and closed

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def page(title: str) -> bytes:
    return f"<!doctype html><html><head><title>{title}</title></head><body><p>hostile but whole</p></body></html>".encode()


def raw_response(status: bytes, fields, body: bytes = b"") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(field + b"\r\n" for field in fields) + b"\r\n" + body


def page_response(title: str, extra_fields=()) -> bytes:
    """A 200 HTML page with Content-Type, Content-Length and Connection (3 fields) plus ``extra_fields``."""
    body = page(title)
    fields = [b"Content-Type: text/html", b"Content-Length: %d" % len(body), b"Connection: close", *extra_fields]
    return raw_response(b"200 OK", fields, body)


def redirect(location: bytes) -> bytes:
    return raw_response(b"302 Found", [b"Location: " + location, b"Content-Length: 0", b"Connection: close"])


def fill_fields(total: int) -> list[bytes]:
    """Extra fields so that a page_response() has ``total`` header fields in all."""
    return [b"X-Fill-%03d: %03d" % (i, i) for i in range(total - 3)]


def long_field(line_length: int, name: bytes = b"X-Long") -> bytes:
    """One header line (name, colon, value; no optional space, no CRLF) of exactly ``line_length`` bytes."""
    head = name + b":"
    return head + b"a" * (line_length - len(head))


def endless(chunk: bytes):
    """Send ``chunk`` over and over, as fast as the client reads (a short pause now and then
    keeps the server thread from hogging the GIL of a client in the same process)."""
    for n in itertools.count():
        yield chunk
        if n % 8 == 7:
            yield 0.001


def drip():
    for _ in range(100_000):
        yield b"x"
        yield 0.05


HEAD_200 = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
HUGE_LENGTH = HEAD_200 + b"Content-Length: 1000000000000\r\nConnection: close\r\n\r\n"
CHUNKED = HEAD_200 + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
INTERIM_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
INTERIM_103 = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"


def _double(path: str):
    # /double/<s> with s ending in "/": the relative Location <s> resolves to /double/<s><s>
    return [redirect(path[len("/double/") :].encode()), "close"]


def _grow(path: str):
    # each hop appends a 2,000-character segment: the URL passes 8,192 characters at the 5th redirect
    return [redirect(b"g" * 1999 + b"/"), "close"]


def _creep(path: str):
    # each hop appends two characters: short forever, so the 11th redirect is refused
    return [redirect(b"c/"), "close"]


# id -> (actions, expected record fields).  The route of case ID is /case/ID.
BYTE_CASES = {
    # 1. redirect Locations that do not parse
    "location-unclosed-bracket": ([redirect(b"http://[not-a-url"), "close"], {"error": "invalid_url", "status": 302}),
    "location-space-in-host": ([redirect(b"http://a b/"), "close"], {"error": "invalid_url", "status": 302}),
    "location-port-out-of-range": ([redirect(b"http://127.0.0.1:99999/"), "close"], {"error": "invalid_url", "status": 302}),
    # 4. interim responses before the final one
    "interim-100": ([INTERIM_100 + page_response("after 100"), "close"], {"ok": True, "status": 200, "title": "after 100"}),
    "interim-103": ([INTERIM_103 + page_response("after 103"), "close"], {"ok": True, "status": 200, "title": "after 103"}),
    "interim-100-then-103": (
        [INTERIM_100, 0.05, INTERIM_103, 0.05, page_response("after 100 and 103"), "close"],
        {"ok": True, "status": 200, "title": "after 100 and 103"},
    ),
    # 5. header limits: at the edge accepted, one past it protocol with no status
    "fields-100": ([page_response("100 fields", fill_fields(100)), "close"], {"ok": True, "status": 200, "title": "100 fields"}),
    "fields-101": ([page_response("101 fields", fill_fields(101)), "close"], {"error": "protocol", "status": None}),
    "fields-120": ([page_response("120 fields", fill_fields(120)), "close"], {"error": "protocol", "status": None}),
    "fields-200": ([page_response("200 fields", fill_fields(200)), "close"], {"error": "protocol", "status": None}),
    "line-8190": ([page_response("line 8190", [long_field(8190)]), "close"], {"ok": True, "status": 200, "title": "line 8190"}),
    "line-8191": ([page_response("line 8191", [long_field(8191)]), "close"], {"error": "protocol", "status": None}),
    # the same edge with the optional space after the colon: 8,190 bytes on the wire, 8,189 without the space
    "line-8190-with-space": (
        [page_response("line 8190 with space", [b"X-Long: " + b"a" * (8190 - 8)]), "close"],
        {"ok": True, "status": 200, "title": "line 8190 with space"},
    ),
    # 8 lines of 7,800 bytes: ~62.5 KB in all, within every limit
    "section-62k": (
        [page_response("section 62k", [long_field(7800, b"X-Big-%d" % i) for i in range(8)]), "close"],
        {"ok": True, "status": 200, "title": "section 62k"},
    ),
    # 9 lines of 8,000 bytes: each line and the field count within limits, the section over 64 KiB
    "section-72k": (
        [page_response("section 72k", [long_field(8000, b"X-Big-%d" % i) for i in range(9)]), "close"],
        {"error": "protocol", "status": None},
    ),
}

HEADER_SIZES = {"section-62k": (62_000, 65_536 - 500), "section-72k": (65_537 + 2_000, 80_000)}


@pytest.fixture(scope="module")
def hostile():
    routes = {f"/case/{case}": actions for case, (actions, _) in BYTE_CASES.items()}
    routes["/endless-length"] = lambda path: itertools.chain([HUGE_LENGTH], endless(b"x" * 65536))
    routes["/endless-chunked"] = lambda path: itertools.chain([CHUNKED], endless(b"10000\r\n" + b"x" * 65536 + b"\r\n"))
    routes["/drip"] = lambda path: itertools.chain([HEAD_200 + b"Content-Length: 100000\r\nConnection: close\r\n\r\n"], drip())
    prefixes = {
        "/double/": _double,
        "/grow/": _grow,
        "/creep/": _creep,
        "/page/": lambda path: [page_response("page " + path.rsplit("/", 1)[-1][:40]), "close"],
    }
    srv = HostileServer(routes, prefixes)
    yield srv
    srv.close()


@pytest.fixture
def stalled_robots():
    """A host whose /robots.txt is accepted and never answered; its pages would be fine."""
    srv = HostileServer({"/robots.txt": ["hold"]}, {"/": lambda path: [page_response("stalled host page"), "close"]})
    yield srv
    srv.close()


def token() -> str:
    return uuid.uuid4().hex[:12]


def check(record: dict, expected: dict) -> None:
    """``expected``: {"ok": True, "status", "title"} for a page, else {"error", "status"}."""
    shown = {key: record[key] for key in ("ok", "status", "error", "detail", "title", "final_url")}
    shown["url"] = record["url"][:120]
    if expected.get("ok"):
        assert record["ok"] and record["error"] is None, shown
    else:
        assert not record["ok"] and record["error"] == expected["error"], shown
    assert record["status"] == expected["status"], shown
    if "title" in expected:
        assert record["title"] == expected["title"], shown


# --- 1, 4, 5: one response's bytes, one verdict -----------------------------------------


def test_header_section_sizes_are_what_the_cases_say():
    """The fixtures themselves: field counts and line lengths exactly as the case names claim."""
    for case, (actions, _) in BYTE_CASES.items():
        wire = actions[-2]
        head = wire.split(b"\r\n\r\n")[-2] if case.startswith("interim") else wire.split(b"\r\n\r\n", 1)[0]
        lines = head.split(b"\r\n")[1:]
        if case.startswith("fields-"):
            assert len(lines) == int(case.split("-")[1])
        if case.startswith("line-"):
            assert max(len(line) for line in lines) == int(case.split("-")[1])
            assert (b": " in max(lines, key=len)) == case.endswith("with-space")
        if case in HEADER_SIZES:
            low, high = HEADER_SIZES[case]
            assert low <= len(head) + 4 <= high and len(lines) <= 100 and max(map(len, lines)) <= 8190


# --- 2: URL lines that are not URLs; and the cases of 1, 4, 5 and 2 judged -------------


URL_LINES = {  # id -> (line, or its length in characters for a loopback URL; fetched?)
    "space-in-host": ("http://a b/", False),
    "unclosed-bracket": ("http://[x", False),
    "over-8192-chars": (9050, False),
    "exactly-8193-chars": (8193, False),
    "exactly-8192-chars": (8192, True),  # the longest URL accepted: fetched
}
RUN_TAG = uuid.uuid4().hex[:12]  # this module's loopback URLs are unique to its run


def url_line(hostile: HostileServer, case: str) -> str:
    line, _ = URL_LINES[case]
    if isinstance(line, int):
        head = hostile.url(f"/page/long-{RUN_TAG}-{case}/")
        line = head + "a" * (line - len(head))
    return line


# One run per engine of every case above, the cases then judged one by one: a run
# costs more than its few URLs (processes, a cluster), so this saves most of the time.
_BATCHES: dict[str, dict | BaseException] = {}


def batch_record(engine_name: str, hostile: HostileServer, url: str) -> dict:
    """The record of ``url`` from the engine's run of every byte-level case, or, when that
    run failed as a whole, from a run of ``url`` alone: each case keeps its own verdict."""
    if engine_name not in _BATCHES:
        urls = [hostile.url(f"/case/{case}") for case in BYTE_CASES] + [url_line(hostile, case) for case in URL_LINES]
        try:
            _BATCHES[engine_name] = by_url(run_records(engine_name, urls, retries=0, robots=False))
        except Exception as exc:  # noqa: BLE001 - reported by the cases' own runs
            _BATCHES[engine_name] = exc
    batch = _BATCHES[engine_name]
    if isinstance(batch, dict) and url in batch:
        return batch[url]
    [record] = run_records(engine_name, [url], retries=0, robots=False)
    return record


@pytest.mark.parametrize("case", list(BYTE_CASES))
def test_hostile_response(engine_name, hostile, case):
    url = hostile.url(f"/case/{case}")
    record = batch_record(engine_name, hostile, url)
    expected = BYTE_CASES[case][1]
    check(record, expected)
    if expected["status"] == 302:  # the redirect's own response is the last one
        assert record["final_url"] == url, record


@pytest.mark.parametrize("case", list(URL_LINES))
def test_invalid_url_line(engine_name, hostile, case):
    line, fetched = url_line(hostile, case), URL_LINES[case][1]
    record = batch_record(engine_name, hostile, line)
    assert record["url"] == line
    if fetched:
        assert len(line) == 8192
        assert record["ok"] and record["status"] == 200, {k: record[k] for k in ("error", "status", "detail")}
        return
    shown = {key: record[key] for key in ("ok", "status", "error", "detail", "final_url")}
    assert record["error"] == "invalid_url" and not record["ok"], shown
    assert record["status"] is None and record["final_url"] is None and record["sha256"] is None, shown
    if isinstance(URL_LINES[case][0], int):
        assert hostile.requests_for(f"/page/long-{RUN_TAG}-{case}/") == [], "a URL longer than 8,192 characters was requested"


# --- 3: redirect chains that grow ---------------------------------------------------------


def test_doubling_redirect_chain_ends_as_invalid_url_or_too_many_redirects(engine_name, hostile):
    # /double/<128 chars> -> 256 -> ... -> 8,192: the URL passes 8,192 characters while
    # every Location line stays under 4,200 bytes (far within the header limits)
    url = hostile.url(f"/double/{token()}-" + "a" * 114 + "/")
    [record] = run_records(engine_name, [url], retries=0, robots=False)
    shown = {key: record[key] for key in ("ok", "status", "error", "detail")}
    assert record["error"] in ("invalid_url", "too_many_redirects"), shown
    assert record["status"] == 302 and not record["ok"], shown


def test_redirect_chain_growing_by_kilobytes_ends_as_invalid_url_or_too_many_redirects(engine_name, hostile):
    url = hostile.url(f"/grow/{token()}/")
    [record] = run_records(engine_name, [url], retries=0, robots=False)
    shown = {key: record[key] for key in ("ok", "status", "error", "detail")}
    assert record["error"] in ("invalid_url", "too_many_redirects"), shown
    assert record["status"] == 302 and not record["ok"], shown


def test_creeping_redirect_chain_is_too_many_redirects_after_ten(engine_name, hostile):
    prefix = f"/creep/{token()}/"
    [record] = run_records(engine_name, [hostile.url(prefix)], retries=0, robots=False)
    shown = {key: record[key] for key in ("ok", "status", "error", "detail")}
    assert record["error"] == "too_many_redirects" and record["status"] == 302, shown
    assert len(hostile.requests_for(prefix)) == 11  # the URL and its 10 followed redirects


# --- 6: the deadline holds whatever the body does -----------------------------------------


def test_deadline_holds_for_endless_and_dripping_bodies(engine_name, hostile):
    timeout = 2.0
    urls = [hostile.url("/endless-length"), hostile.url("/endless-chunked"), hostile.url("/drip")]
    started = time.monotonic()
    records = run_records(engine_name, urls, retries=0, robots=False, timeout=timeout, max_bytes=2_000_000_000)
    wall = time.monotonic() - started
    shown = [{key: record[key] for key in ("url", "status", "error", "detail", "fetch_ms")} for record in records]
    assert sorted(record["url"] for record in records) == sorted(urls), shown
    for record in records:
        assert record["error"] == "timeout" and record["status"] == 200 and not record["ok"], shown
        assert record["fetch_ms"] < timeout * 1000 + 1500, shown
    assert wall < timeout + 2.5, (wall, shown)


# --- 7: a robots.txt that fails is decided once per host ----------------------------------


def test_robots_txt_that_never_answers_is_decided_once_for_the_host(engine_name, server, stalled_robots):
    timeout, retries = 1.0, 0
    healthy = [server.url(f"/page/robots-ok-{i}") for i in range(100)]
    stalled = [stalled_robots.url(f"/p/{i}") for i in range(40)]
    urls, pending = [], iter(stalled)
    for i, url in enumerate(healthy):
        urls.append(url)
        if i % 5 in (0, 2):
            urls.append(next(pending))
    assert len(urls) == 140
    started = time.monotonic()
    records = run_records(engine_name, urls, robots=True, timeout=timeout, retries=retries, concurrency=8)
    wall = time.monotonic() - started
    assert Counter(record["url"] for record in records) == Counter(urls)
    got = by_url(records)
    problems = []  # all of them at once: each names a different part of the fix
    verdicts = Counter((got[url]["error"], got[url]["status"]) for url in stalled)
    if verdicts != Counter({("robots", None): 40}):
        problems.append(f"stalled host's URLs (error, status): {dict(verdicts)}, detail {got[stalled[0]]['detail']!r}")
    unnamed = [got[url]["detail"] for url in stalled if not any(word in (got[url]["detail"] or "").lower() for word in ("time", "deadline"))]
    if unnamed:
        problems.append(f"{len(unnamed)} details do not name the timeout, e.g. {unnamed[0]!r}")
    failed = Counter(got[url]["error"] for url in healthy if not got[url]["ok"])
    if failed:
        problems.append(f"healthy URLs failed: {dict(failed)}")
    robots_fetches = len(stalled_robots.requests_for("/robots.txt"))
    # Once per host per fetching process: an engine on a cluster keeps a gate per
    # worker process (2 in this suite's cluster), never one fetch per URL.
    if robots_fetches > 2 * (retries + 1):
        problems.append(f"{robots_fetches} fetches of one host's robots.txt (at most {retries + 1} per process)")
    if stalled_robots.requests_for("/p/"):
        problems.append(f"{len(stalled_robots.requests_for('/p/'))} pages of the stalled host were fetched")
    if wall >= 8:
        problems.append(f"the run took {wall:.1f} s: the stalled host cost more than one timeout")
    assert not problems, problems


def test_robots_txt_on_a_refused_port_is_connect_for_every_url(engine_name, server, refused_port):
    refused = [f"http://127.0.0.1:{refused_port}/r/{i}" for i in range(10)]
    healthy = [server.url(f"/page/refused-ok-{i}") for i in range(5)]
    urls = [url for pair in itertools.zip_longest(refused, healthy) for url in pair if url]
    started = time.monotonic()
    records = run_records(engine_name, urls, robots=True, timeout=1.0, retries=0, concurrency=4)
    wall = time.monotonic() - started
    assert Counter(record["url"] for record in records) == Counter(urls)
    got = by_url(records)
    assert Counter((got[url]["error"], got[url]["status"]) for url in refused) == Counter({("connect", None): 10}), got[refused[0]]
    assert all(got[url]["ok"] for url in healthy)
    assert wall < 8, wall


# --- 8: an exception in an exchange becomes that URL's record ------------------------------


def _answer(step) -> Response:
    if "/boom" in step.url:
        raise RuntimeError("boom")
    return Response(200, {"content-type": "text/html"}, page("fine"))


class RaisingBlocking:
    name = "raising"
    description = "test engine: run_blocking over an exchange that raises for /boom"

    def fetch(self, urls, settings):
        for url in urls:
            yield run_blocking(fetch_plan(url, settings), _answer)


class RaisingAsync:
    name = "raising"
    description = "test engine: run_async over an exchange that raises for /boom"

    def fetch(self, urls, settings):
        async def exchange(step):
            await asyncio.sleep(0)
            return _answer(step)

        loop = asyncio.new_event_loop()
        try:
            for url in urls:
                yield loop.run_until_complete(asyncio.wait_for(run_async(fetch_plan(url, settings), exchange), 10))
        finally:
            loop.close()


class RaisingGenerator:
    name = "raising"
    description = "test engine: run_coroutine over a sub-generator exchange that raises for /boom"

    def fetch(self, urls, settings):
        def exchange(step):
            return _answer(step)
            yield  # a sub-generator that never waits

        def sleep(seconds):
            time.sleep(seconds)
            return
            yield

        for url in urls:
            driver = run_coroutine(fetch_plan(url, settings), exchange, sleep)
            for _ in range(1000):  # nothing here waits on a scheduler: a few steps at most
                try:
                    next(driver)
                except StopIteration as done:
                    yield done.value
                    break
            else:
                raise AssertionError("run_coroutine kept yielding")


@pytest.mark.parametrize("engine", [RaisingBlocking(), RaisingAsync(), RaisingGenerator()], ids=["run_blocking", "run_async", "run_coroutine"])
def test_exception_in_an_exchange_becomes_that_urls_record(engine):
    urls = ["http://127.0.0.1:9/one", "http://127.0.0.1:9/boom", "http://127.0.0.1:9/two"]
    records: list[dict] = []
    settings = crawler.Settings(timeout=2.0, retries=0, robots=False, concurrency=1)
    try:
        run_engine(engine, urls, settings, RunOptions(parse=False, parse_workers=0), records.append)
    except Exception as exc:  # noqa: BLE001 - what the test is about
        pytest.fail(f"the exception ended the run: {exc!r}; records so far: {[r['url'] for r in records]}")
    assert sorted(record["url"] for record in records) == sorted(urls)
    got = by_url(records)
    boom = got["http://127.0.0.1:9/boom"]
    assert boom["error"] == "other" and not boom["ok"] and "boom" in (boom["detail"] or ""), boom
    for url in ("http://127.0.0.1:9/one", "http://127.0.0.1:9/two"):
        assert got[url]["ok"] and got[url]["status"] == 200, got[url]


# --- the real command, as a process ----------------------------------------------------------


def run_cli(args: list[str], timeout: float, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    """``python -m crawler ARGS`` in its own process group, killed whole if it outlives ``timeout``."""
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "crawler", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate(timeout=30)
        pytest.fail(f"the command ran longer than {timeout} s; stderr: {err[-2000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- 9: a name that does not resolve is dns, never timeout ----------------------------------


class NxdomainStub:
    """A UDP DNS server on port 53 of a loopback address of its own, answering NXDOMAIN to every query.

    Port 53 is fixed (resolv.conf names no port), so each stub takes a random
    address in 127.53.0.0/16 that no other stub holds: tests on parallel
    workers, or another run of this suite, each get theirs, and every query a
    stub sees is from its own test.  Where only 127.0.0.1 is loopback, it
    shares 127.0.0.1:53 (SO_REUSEPORT) with any other stub, which all answer alike.
    """

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for attempt in itertools.count():
                self.address = f"127.53.{random.randrange(256)}.{random.randrange(1, 255)}"
                try:
                    self.sock.bind((self.address, 53))
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or attempt == 50:
                        raise
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                self.sock.close()
                raise
            self.address = "127.0.0.1"
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.sock.bind((self.address, 53))
        self.sock.settimeout(0.2)
        self.names: list[bytes] = []
        self.stop = threading.Event()
        self.born = time.monotonic()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set() and time.monotonic() - self.born < SERVER_LIFE:
            try:
                query, client = self.sock.recvfrom(4096)
            except OSError:
                continue
            answer = self.nxdomain(query)
            if answer:
                try:
                    self.sock.sendto(answer, client)
                except OSError:
                    pass

    def nxdomain(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        (flags,) = struct.unpack("!H", query[2:4])
        if flags & 0x8000:
            return None  # a response, not a query
        labels, i = [], 12
        for _ in range(128):  # a name has at most 127 labels
            if i >= len(query):
                return None
            length = query[i]
            if length == 0:
                break
            if length & 0xC0:
                return None  # no compression in a question
            labels.append(query[i + 1 : i + 1 + length])
            i += 1 + length
        else:
            return None
        question_end = i + 1 + 4  # the root label, then QTYPE and QCLASS
        if question_end > len(query):
            return None
        self.names.append(b".".join(labels))
        reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | 3  # QR, opcode and RD echoed, RA, NXDOMAIN
        return query[:2] + struct.pack("!HHHHH", reply_flags, 1, 0, 0, 0) + query[12:question_end]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def private_resolver(tmp_path_factory):
    """(stub, command prefix): the prefix runs a command with /etc/resolv.conf -> the stub's address only."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    try:
        stub = NxdomainStub()
    except OSError as exc:
        pytest.skip(f"cannot bind port 53 on loopback for a DNS stub: {exc}")
    resolv = tmp_path_factory.mktemp("dns") / "resolv.conf"
    resolv.write_text(f"nameserver {stub.address}\noptions timeout:1 attempts:1\n")
    prefix = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv)]
    try:
        probe = subprocess.run([*prefix, "cat", "/etc/resolv.conf"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        probe = subprocess.CompletedProcess([], 1, "", str(exc))
    if probe.returncode != 0 or probe.stdout.split() != ["nameserver", stub.address, "options", "timeout:1", "attempts:1"]:
        stub.close()
        pytest.skip(f"no private mount namespace with our resolv.conf here: {probe.stderr.strip()[:200]}")
    yield stub, prefix
    stub.close()


@pytest.mark.parametrize("engine", COMMAND_ENGINES)  # not engine_name: the session cluster would be started for nothing
def test_unresolvable_name_is_dns_never_timeout(engine, server, private_resolver, tmp_path):
    stub, prefix = private_resolver
    missing = ["http://no-such-host.example.test/", "http://no-such-host.example.test/again", "http://also-missing.example.test:8080/x"]
    healthy = server.url("/page/dns-neighbour")
    urls_file, out = tmp_path / "urls.txt", tmp_path / "out.jsonl"
    urls_file.write_text("\n".join([missing[0], healthy, *missing[1:]]) + "\n")
    # Nothing engine-specific is passed: an engine that needs a cluster starts its own,
    # inside the namespace (a cluster outside it would resolve with the machine's resolver).
    result = run_cli([str(urls_file), "-e", engine, "--no-robots", "--retries", "0", "--timeout", "3", "--no-parse", "--out", str(out), "-q"], timeout=180, prefix=prefix)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_records(out)
    assert Counter(record["url"] for record in records) == Counter([*missing, healthy])
    got = by_url(records)
    for url in missing:
        shown = {key: got[url][key] for key in ("ok", "status", "error", "detail", "fetch_ms")}
        shown["names the stub was asked"] = sorted(set(stub.names))[:10]
        assert got[url]["error"] == "dns" and got[url]["status"] is None and not got[url]["ok"], shown
    assert got[healthy]["ok"], got[healthy]


# --- 10: every hostile case in one list, through the command ---------------------------------


def test_cli_one_list_of_every_hostile_case_gives_one_record_per_line(engine_name, server, hostile, stalled_robots, refused_port, tmp_path):
    tag = token()
    healthy = [server.url(f"/page/mixed-{i}") for i in range(20)]
    hostile_lines = [
        *(hostile.url(f"/case/{case}") for case in BYTE_CASES),  # 1, 4, 5
        "http://a b/",  # 2
        "http://[x",
        hostile.url(f"/page/long-{tag}/") + "a" * 9000,  # never fetched
        hostile.url(f"/double/{tag}-" + "a" * 114 + "/"),  # 3
        hostile.url(f"/grow/{tag}/"),
        hostile.url(f"/creep/{tag}/"),
        hostile.url("/endless-length"),  # 6
        hostile.url("/endless-chunked"),
        hostile.url("/drip"),
        *(stalled_robots.url(f"/p/{i}") for i in range(5)),  # 7
        *(f"http://127.0.0.1:{refused_port}/r/{i}" for i in range(5)),
    ]
    lines = [line for pair in itertools.zip_longest(hostile_lines, healthy) for line in pair if line]
    urls_file, out = tmp_path / "urls.txt", tmp_path / "out.jsonl"
    urls_file.write_text("\n".join(lines) + "\n")
    extra = ENGINE_SETTINGS.get(engine_name, {}).get("engine_options", {})  # e.g. a session-wide cluster
    options = [arg for key, value in extra.items() for arg in ("--engine-opt", f"{key}={value}")]
    result = run_cli([str(urls_file), "-e", engine_name, "--out", str(out), "-q", "--timeout", "2", "--retries", "0", *options], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_records(out)
    assert Counter(record["url"] for record in records) == Counter(lines)
    assert {record["engine"] for record in records} == {engine_name}
    got = by_url(records)
    assert all(got[url]["ok"] for url in healthy), [got[url] for url in healthy if not got[url]["ok"]][:3]
