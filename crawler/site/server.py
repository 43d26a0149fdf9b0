"""The synthetic site's web server: its pages served by aiohttp on loopback.

Routes: ``GET /page/{n}`` (``n >= pages`` serves page ``n % pages``, so URL
lists of any length can be made of one site), ``GET /`` (a small index),
``GET /urls.txt`` (the URL list) and ``GET /robots.txt`` (allows all).
``delay`` seconds are slept before each page response, to model a slow
server: that is what makes concurrency pay off.

The server shares the CPU with the client under test (often on two cores),
so it must cost as little as possible: every page is generated once, before
the server listens, and the handlers only hand out prebuilt bytes; access
logging is off.

aiohttp is imported only by the functions that serve, so that importing
this module (as ``crawl --demo`` does, to start the server in a child
process) does not pay for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING

from .pages import SyntheticSite

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["make_app", "serve"]

_HTML_HEADERS = {"Content-Type": "text/html; charset=utf-8"}
_TEXT_HEADERS = {"Content-Type": "text/plain; charset=utf-8"}
_ROBOTS = b"User-agent: *\nAllow: /\n"


def _index_page(site: SyntheticSite, first: int = 100) -> bytes:
    items = "".join(
        f'<li><a href="/page/{n}">Page {n}</a></li>\n' for n in range(min(first, site.pages))
    )
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<title>Synthetic Site</title>\n</head>\n<body>\n<h1>Synthetic Site</h1>\n"
        f"<p>{site.pages} pages, seed {site.seed}. "
        '<a href="/urls.txt">All page URLs</a>.</p>\n'
        f"<ul>\n{items}</ul>\n</body>\n</html>\n"
    ).encode("utf-8")


def make_app(site: SyntheticSite) -> "web.Application":
    """An :class:`aiohttp.web.Application` serving ``site``.

    Every page is generated here, up front, so the handlers only hand out
    prebuilt bytes.  ``GET /page/{n}`` serves page ``n % site.pages`` after
    sleeping ``site.delay`` seconds (if > 0).
    """
    from aiohttp import web

    site.generate_all()
    bodies = [site.page(n) for n in range(site.pages)]
    npages = len(bodies)
    delay = site.delay
    index = _index_page(site)
    url_lists: dict[str, bytes] = {}

    if delay > 0:

        async def page(request: web.Request) -> web.Response:
            n = int(request.match_info["n"])
            await asyncio.sleep(delay)
            return web.Response(body=bodies[n % npages], headers=_HTML_HEADERS)

    else:

        async def page(request: web.Request) -> web.Response:
            return web.Response(body=bodies[int(request.match_info["n"]) % npages], headers=_HTML_HEADERS)

    async def root(request: web.Request) -> web.Response:
        return web.Response(body=index, headers=_HTML_HEADERS)

    async def urls_txt(request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        body = url_lists.get(base)
        if body is None:
            body = ("\n".join(site.urls(base)) + "\n").encode("utf-8")
            if len(url_lists) < 16:  # (the Host header is the client's: bound the cache)
                url_lists[base] = body
        return web.Response(body=body, headers=_TEXT_HEADERS)

    async def robots(request: web.Request) -> web.Response:
        return web.Response(body=_ROBOTS, headers=_TEXT_HEADERS)

    app = web.Application()
    app["site"] = site
    app.router.add_get(r"/page/{n:\d{1,60}}", page)  # (longer numbers: 404, not int() errors)
    app.router.add_get("/", root)
    app.router.add_get("/urls.txt", urls_txt)
    app.router.add_get("/robots.txt", robots)
    return app


def _base_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def _serve_async(
    site: SyntheticSite, host: str, port: int, print_urls: bool, exit_on_stdin_eof: bool, terminated: list[int]
) -> None:
    from aiohttp import web

    app = make_app(site)  # generates every page before we listen
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        tcp = web.TCPSite(runner, host, port, backlog=1024)
        await tcp.start()
        addr = runner.addresses[0]
        base = _base_url(host, addr[1])

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
                pass
        if exit_on_stdin_eof and sys.stdin is not None:
            # Our parent holds the other end of stdin: if it dies, we stop (no orphan).
            fd = sys.stdin.fileno()

            def on_stdin() -> None:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    data = b""
                if not data:
                    loop.remove_reader(fd)
                    stop.set()

            loop.add_reader(fd, on_stdin)
        if terminated:  # SIGTERM came while the loop was starting
            stop.set()

        if stop.is_set():
            return
        lines = [f"# crawler site {base} pages={site.pages} seed={site.seed} delay={site.delay:g}"]
        if print_urls:
            lines.extend(site.urls(base))
        try:
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError, OSError):
            # Nobody reads our stdout (e.g. `| head`): keep serving, silently.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)

        await stop.wait()
    finally:
        await runner.cleanup()  # (our signal handlers stay until asyncio.run closes the loop)


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    pages: int = 1000,
    seed: int = 0,
    delay: float = 0.0,
    mean_kb: float = 30.0,
    print_urls: bool = True,
    exit_on_stdin_eof: bool = False,
) -> None:
    """Serve a :class:`SyntheticSite` on ``host:port`` until SIGINT or SIGTERM.

    ``port=0`` lets the OS pick a free port.  All pages are generated before
    listening; then the first stdout line is
    ``# crawler site http://HOST:PORT pages=N seed=S delay=D`` (meaning
    "ready"), followed, if ``print_urls``, by every page URL.
    ``exit_on_stdin_eof`` also stops the server when stdin reaches end of
    file, i.e. when the parent process holding its other end is gone.
    """
    site = SyntheticSite(pages=pages, seed=seed, delay=delay, mean_kb=mean_kb)
    terminated: list[int] = []

    def term_interrupts(signum, frame):  # while generating: the same as Ctrl-C
        raise KeyboardInterrupt

    def term_requests_stop(signum, frame):  # while the loop starts: noted, acted on once it runs
        terminated.append(signum)

    try:
        previous = signal.signal(signal.SIGTERM, term_interrupts)
    except ValueError:  # not the main thread: signals are the caller's business
        previous = None
    try:
        from aiohttp import web  # noqa: F401  (imported and generated before the loop:
        site.generate_all()  #      an interrupt here cannot land inside asyncio)
        if previous is not None:
            signal.signal(signal.SIGTERM, term_requests_stop)
        asyncio.run(_serve_async(site, host, port, print_urls, exit_on_stdin_eof, terminated))
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
