"""The ``yield`` engine's own promises (shared semantics are in test_conformance.py).

Every request goes to a server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import Counter

import psutil
import pytest
import trustme
from aiohttp import web
from conftest import LocalServer, build_app, html_page, run_records

import crawler
from crawler.plugins import engines as registered_engines
from crawler.plugins import get_plugin_manager


def yield_engine():
    return registered_engines(get_plugin_manager())["yield"]


class PeerServer(LocalServer):
    """Serves /page/{name} and records each request's client port; idle connections close after ``keepalive``."""

    def __init__(self, keepalive: float = 75.0):
        self.ports: list[int] = []
        self.keepalive = keepalive

        async def page(request):
            self.ports.append(request.transport.get_extra_info("peername")[1])
            return web.Response(body=html_page(request.match_info["name"]), content_type="text/html")

        app = web.Application()
        app.router.add_get("/page/{name}", page)
        super().__init__(app)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=self.keepalive)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        self.port = runner.addresses[0][1]
        ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())


@pytest.fixture(scope="module")
def tls_server():
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    srv = LocalServer(build_app(Counter()), ssl_context=context)
    srv.ca = ca
    yield srv
    srv.close()


def test_https_with_a_trusted_ca(tls_server, tmp_path):
    ca_file = tmp_path / "ca.pem"
    tls_server.ca.cert_pem.write_to_path(str(ca_file))
    urls = [tls_server.url("/page/secure"), tls_server.url("/gzip"), tls_server.url("/chunked"), tls_server.url("/big?n=3000000")]
    records = run_records("yield", urls, ca_file=str(ca_file), concurrency=2)
    assert all(r["ok"] for r in records), records
    assert {r["title"] for r in records} == {"secure", "compressed", "chunks", None}
    assert max(r["bytes"] for r in records) == 3000000


def test_https_with_an_unknown_ca_is_connect(tls_server):
    [record] = run_records("yield", [tls_server.url("/page/secure")], retries=0)
    assert record["error"] == "connect" and "CERTIFICATE_VERIFY_FAILED" in record["detail"]


def test_keep_alive_connections_are_reused():
    srv = PeerServer()
    try:
        records = run_records("yield", [srv.url(f"/page/{i}") for i in range(20)], concurrency=2)
    finally:
        srv.close()
    assert all(r["ok"] for r in records) and len(srv.ports) == 20
    assert len(set(srv.ports)) <= 3


def test_stale_keep_alive_connection_is_retried_transparently():
    srv = PeerServer(keepalive=0.1)

    def urls():
        yield srv.url("/page/first")
        time.sleep(0.4)  # the server drops the idle connection meanwhile
        yield srv.url("/page/second")

    try:  # fetch() directly: run_records would read the whole list up front
        results = list(yield_engine().fetch(urls(), crawler.Settings(concurrency=1, retries=0, timeout=5)))
    finally:
        srv.close()
    assert [r.error for r in results] == [None, None], results
    assert len(set(srv.ports)) == 2  # the second request did go out on a new connection


def test_concurrency_one_is_sequential_and_twenty_overlaps(server):
    started = time.monotonic()
    records = run_records("yield", [server.url(f"/delay?s=0.3&seq={i}") for i in range(10)], concurrency=1)
    sequential = time.monotonic() - started
    assert all(r["ok"] for r in records)
    assert sequential >= 2.9

    started = time.monotonic()
    records = run_records("yield", [server.url(f"/delay?s=0.3&par={i}") for i in range(40)], concurrency=20)
    assert all(r["ok"] for r in records) and len(records) == 40
    # One at a time, 40 x 0.3 s = 12 s; twenty at once, 0.6 s.  Half the sequential time
    # proves they overlapped, with room for a loaded machine.
    assert time.monotonic() - started < 6.0


def test_one_thread_and_no_asyncio(server):
    threads_before = set(threading.enumerate())
    urls = [server.url(f"/delay?s=0.05&t={i}") for i in range(30)]
    seen = 0
    for result in yield_engine().fetch(iter(urls), crawler.Settings(concurrency=10, timeout=5)):
        assert result.ok
        # none started (a thread of an earlier test, e.g. requests' idle deadline thread, may end meanwhile)
        assert set(threading.enumerate()) - threads_before == set()
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        seen += 1
    assert seen == 30


def test_urls_are_read_lazily(server):
    pulled = 0

    def urls():
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield server.url(f"/page/lazy{i}")

    results = yield_engine().fetch(urls(), crawler.Settings(concurrency=4, timeout=5))
    next(results)
    results.close()
    assert pulled <= 8


def client_sockets(*ports: int) -> list:
    return [c for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port in ports]


def test_closing_early_closes_every_socket(server, silent_port):
    urls = [server.url("/page/early1"), server.url("/page/early2")]
    urls += [f"http://127.0.0.1:{silent_port}/hang{i}" for i in range(18)]
    results = yield_engine().fetch(iter(urls), crawler.Settings(concurrency=10, timeout=10))
    done = [next(results), next(results)]
    assert all(r.ok for r in done)
    assert len(client_sockets(server.port, silent_port)) >= 8  # in flight and idle
    results.close()
    assert client_sockets(server.port, silent_port) == []
