"""Local servers for the tests: every fetch in the suite goes to 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import logging
import socket
import struct
import threading
import zlib
from collections import Counter

import pytest
from aiohttp import web

import crawler
from crawler.pipeline import RunOptions, run_engine
from crawler.plugins import engines as registered_engines
from crawler.plugins import get_plugin_manager


def html_page(title: str, body: str = "<p>hello world from a local page</p>", head: str = "") -> bytes:
    return f"<!doctype html><html><head>{head}<title>{title}</title></head><body>{body}</body></html>".encode()


BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # ~64 KB on the wire, 64 MB inflated


def build_app(hits: Counter) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/page/{name}")
    async def page(request):
        hits[request.path] += 1
        return web.Response(body=html_page(request.match_info["name"]), content_type="text/html")

    @routes.get("/links/{n}")
    async def links(request):
        n = int(request.match_info["n"])
        anchors = "".join(f'<a href="/page/link-{i}">{i}</a>' for i in range(n))
        return web.Response(body=html_page(f"links-{n}", anchors), content_type="text/html")

    @routes.get("/status/{code}")
    async def status(request):
        code = int(request.match_info["code"])
        return web.Response(status=code, body=html_page(f"status {code}"), content_type="text/html")

    @routes.get("/redirect/{n}")
    async def redirect(request):
        n = int(request.match_info["n"])
        target = f"/redirect/{n - 1}" if n > 1 else "/page/final"
        raise web.HTTPFound(target)

    @routes.get("/loop")
    async def loop(request):
        raise web.HTTPFound("/loop")

    @routes.get("/redirect-to")
    async def redirect_to(request):
        return web.Response(status=302, headers={"Location": request.query["url"]})

    @routes.get("/flaky/{key}")
    async def flaky(request):
        hits[request.path] += 1
        if hits[request.path] == 1:
            return web.Response(status=503, text="try again")
        return web.Response(body=html_page("recovered"), content_type="text/html")

    @routes.get("/retry-after/{key}")
    async def retry_later(request):
        hits[request.path] += 1
        if hits[request.path] == 1:
            return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        return web.Response(body=html_page("patience"), content_type="text/html")

    @routes.get("/delay")
    async def delay(request):
        await asyncio.sleep(float(request.query.get("s", "0.3")))
        return web.Response(body=html_page("late"), content_type="text/html")

    @routes.get("/big")
    async def big(request):
        n = int(request.query["n"])
        return web.Response(body=b"x" * n, content_type="application/octet-stream")

    @routes.get("/gzip")
    async def gzipped(request):
        body = gzip.compress(html_page("compressed", "<p>" + "squeeze me " * 500 + "</p>"))
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/html"})

    @routes.get("/deflate")
    async def deflated(request):
        body = zlib.compress(html_page("deflated"))
        return web.Response(body=body, headers={"Content-Encoding": "deflate", "Content-Type": "text/html"})

    @routes.get("/bomb")
    async def bomb(request):
        return web.Response(body=BOMB, headers={"Content-Encoding": "gzip", "Content-Type": "text/html"})

    @routes.get("/latin1")
    async def latin1(request):
        body = html_page("café crème", head='<meta charset="iso-8859-1">').decode().encode("latin-1")
        return web.Response(body=body, headers={"Content-Type": "text/html"})

    @routes.get("/image")
    async def image(request):
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, content_type="image/png")

    @routes.get("/chunked")
    async def chunked(request):
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"<!doctype html><html><head><title>chunks</title></head><body>", b"<p>one</p>" * 50, b"</body></html>"):
            await response.write(part)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    @routes.get("/truncated")
    async def truncated(request):
        # promises 10,000 bytes, sends 100 and closes: a body shorter than its Content-Length
        response = web.StreamResponse(headers={"Content-Type": "text/html", "Content-Length": "10000"})
        await response.prepare(request)
        await response.write(b"<html>" + b"x" * 94)
        await asyncio.sleep(0.05)
        request.transport.close()
        return response

    @routes.get("/drip")
    async def drip(request):
        response = web.StreamResponse(headers={"Content-Type": "text/html", "Content-Length": "100000"})
        await response.prepare(request)
        for _ in range(100000):
            await response.write(b"x")
            await asyncio.sleep(0.2)
        return response

    @routes.get("/user-agent")
    async def user_agent(request):
        return web.Response(text=request.headers.get("User-Agent", ""), content_type="text/plain")

    app = web.Application()
    app.add_routes(routes)
    return app


class LocalServer:
    """An aiohttp app on 127.0.0.1:<free port>, served from a background thread."""

    def __init__(self, app: web.Application, ssl_context=None):
        self.app = app
        self.ssl_context = ssl_context
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)
        scheme = "https" if ssl_context else "http"
        self.base = f"{scheme}://127.0.0.1:{self.port}"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        self.loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self.runner = runner
        ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def hits() -> Counter:
    return Counter()


@pytest.fixture(scope="session")
def server(hits):
    srv = LocalServer(build_app(hits))
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def silent_port():
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    accepted = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    sock.close()


@pytest.fixture(scope="session")
def refused_port():
    """A port bound but not listening: connecting to it is refused, and no one else can take it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


ENGINE_NAMES = sorted(registered_engines(get_plugin_manager()))

# Every engine, for a test that runs the command without the session's resources
# (dask: the run starts a LocalCluster of its own), where engine_name would
# start the session cluster for nothing.
COMMAND_ENGINES = [
    pytest.param(name, marks=pytest.mark.skipif(not importlib.util.find_spec("distributed"), reason="dask not installed"))
    if name == "dask" else name
    for name in ENGINE_NAMES
]  # fmt: skip


# Engines that run on a resource shared by the whole session: the fixture giving
# their extra settings.  run_records() adds ENGINE_SETTINGS[name] to every run.
ENGINE_SETTINGS_FIXTURES = {"dask": "dask_settings"}
ENGINE_SETTINGS: dict[str, dict] = {}


@pytest.fixture(params=ENGINE_NAMES)
def engine_name(request) -> str:
    fixture = ENGINE_SETTINGS_FIXTURES.get(request.param)
    if fixture:
        ENGINE_SETTINGS[request.param] = request.getfixturevalue(fixture)
    return request.param


def uses_session_cluster(item) -> bool:
    """Whether a test connects to the session's LocalCluster (dask_scheduler), directly or through engine_name."""
    callspec = getattr(item, "callspec", None)
    return "dask_scheduler" in getattr(item, "fixturenames", ()) or (callspec is not None and callspec.params.get("engine_name") == "dask")


def pytest_collection_modifyitems(config, items):
    # Under pytest-xdist (README: -n N --dist loadgroup) each worker process has its
    # own session fixtures: every worker running a test of the session cluster would
    # start a LocalCluster of its own (2-3 s of CPU to start, then about a tenth of a
    # core while idle, for the rest of the run).  One group: one worker, one cluster.
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if uses_session_cluster(item):
            item.add_marker(pytest.mark.xdist_group("dask-session-cluster"))


@pytest.fixture(scope="session")
def dask_scheduler():
    """One LocalCluster for the session (2 single-threaded worker processes): a dask run only connects to it.

    One per process: under pytest-xdist, the tests using it are grouped on one
    worker (pytest_collection_modifyitems), so that the run has one cluster.
    """
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR,
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},  # not 8787: it may be taken
    ) as cluster:  # fmt: skip
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def dask_settings(dask_scheduler) -> dict:
    return {"engine_options": {"scheduler": dask_scheduler}}


def run_records(engine_name: str, urls, parse: bool = True, **settings) -> list[dict]:
    """Run one engine through the real pipeline (parsing inline) and return its records."""
    engine = registered_engines(get_plugin_manager())[engine_name]
    records: list[dict] = []
    settings.setdefault("timeout", 5.0)
    settings.setdefault("concurrency", 8)
    settings.setdefault("backoff_base", 0.05)
    extra = ENGINE_SETTINGS.get(engine_name, {})
    settings = {**extra, **settings, "engine_options": {**extra.get("engine_options", {}), **settings.get("engine_options", {})}}
    following = {key[len("follow_") :] if key.startswith("follow_") else key: settings.pop(key) for key in ("follow_depth", "same_host", "max_pages") if key in settings}
    options = RunOptions(parse=parse, parse_workers=0, **following)
    run_engine(engine, list(urls), crawler.Settings(**settings), options, records.append)
    return records


def by_url(records: list[dict]) -> dict[str, dict]:
    return {record["url"]: record for record in records}


class RawServer:
    """A loopback TCP server answering each path with hand-written bytes, to break HTTP on purpose.

    ``routes[path]`` is a list of actions: ``bytes`` are sent, a float sleeps,
    ``"reset"`` closes with RST, ``"close"`` closes cleanly, ``"hold"`` keeps
    the connection open until the server stops.
    """

    def __init__(self, routes: dict):
        self.routes = routes
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    return
                request += data
            path = request.split(b" ")[1].decode()
            for action in self.routes.get(path, [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "close"]):
                if isinstance(action, bytes):
                    conn.sendall(action)
                elif isinstance(action, float):
                    if self.stop.wait(action):
                        return
                elif action == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()
                    return
                elif action == "hold":
                    self.stop.wait()
                elif action == "close":
                    break
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"


@pytest.fixture(scope="session")
def raw_server():
    srv = RawServer(
        {
            "/reset-mid-body": [HEAD + b"Content-Length: 100000\r\n\r\n" + b"x" * 5000, 0.05, "reset"],
            "/bad-chunked": [HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\nnot a chunk\r\n", "close"],
            "/short-body": [HEAD + b"Content-Length: 5000\r\n\r\n" + b"<html>" + b"x" * 100, "close"],
            "/garbage-status": [b"HTCPCP/1.0 I'm a teapot\r\n\r\n", "close"],
            "/headers-then-stall": [HEAD + b"Content-Length: 100\r\n\r\n", "hold"],
            "/drip-headers": [b"HTTP/1.1 200 OK\r\n"] + [x for _ in range(200) for x in (b"X-Drip: 1\r\n", 0.1)] + ["close"],
            "/close-before-status": ["close"],
            "/bad-gzip": [HEAD + b"Content-Encoding: gzip\r\nContent-Length: 20\r\n\r\n" + b"\x1f\x8b" + b"\x00" * 18, "close"],
        }
    )
    yield srv
    srv.close()
