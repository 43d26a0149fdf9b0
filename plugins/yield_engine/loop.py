"""The ``yield`` engine's work, imported when a run starts (not by ``crawl --list-engines``): the scheduler, the exchange, producer and consumers (see the package's docstring)."""

from __future__ import annotations

import base64
import errno
import heapq
import itertools
import selectors
import socket
import ssl
import time
from collections import deque
from functools import partial
from typing import Iterable, Iterator
from urllib.parse import unquote, urlsplit

import h11

import crawler
from crawler.fetching import (
    MAX_HEADER_SECTION,
    READ_CHUNK,
    BodyDecoder,
    Exchange,
    FetchError,
    InFlight,
    Response,
    check_head,
    describe,
    fetch_plan,
    join_headers,
    request_headers,
    run_coroutine,
)

# --- 1. the scheduler --------------------------------------------------------------


class Readable:
    """Wait until ``sock`` can be read, or until ``deadline`` (a time.monotonic() value)."""

    __slots__ = ("sock", "deadline")
    event = selectors.EVENT_READ

    def __init__(self, sock, deadline: float):
        self.sock = sock
        self.deadline = deadline


class Writable(Readable):
    __slots__ = ()
    event = selectors.EVENT_WRITE


class Timer:
    """Wait until ``deadline``."""

    __slots__ = ("deadline",)
    sock = None

    def __init__(self, deadline: float):
        self.deadline = deadline


PASS = Timer(0.0)  # "let the others run, then resume me": no timer involved


class Task:
    __slots__ = ("coro", "sock", "timer")

    def __init__(self, coro):
        self.coro = coro
        self.sock = None  # the socket it waits on, registered in the selector
        self.timer = None  # its live heap entry [deadline, seq, task]


class Loop:
    """Steps generator coroutines when their socket is ready or their deadline passes."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.timers: list = []  # heap of [deadline, seq, task]; task None = cancelled
        self.cancelled = 0
        self.seq = itertools.count()
        self.ready: list[Task] = []
        self.tasks: set[Task] = set()

    def spawn(self, coro) -> None:
        task = Task(coro)
        self.tasks.add(task)
        self.ready.append(task)

    def step(self, task: Task, value=None, error: BaseException | None = None) -> None:
        try:
            wait = task.coro.send(value) if error is None else task.coro.throw(error)
        except StopIteration:
            self._forget(task)
            return
        except BaseException:  # a bug (or the URL list failing): raised out of fetch()
            self._forget(task)
            raise
        sock = wait.sock
        if sock is not None:
            self.selector.register(sock, wait.event, task)
            task.sock = sock
        elif wait is PASS:
            self._disarm(task)
            self.ready.append(task)
            return
        # One live timer per task: a request's waits share its deadline, so the
        # heap gets one entry per request, not one per socket wait.
        timer = task.timer
        if timer is None or timer[0] != wait.deadline:
            self._disarm(task)
            task.timer = timer = [wait.deadline, next(self.seq), task]
            heapq.heappush(self.timers, timer)

    def _forget(self, task: Task) -> None:
        self.tasks.discard(task)
        self._disarm(task)

    def _disarm(self, task: Task) -> None:
        if task.timer is not None:
            task.timer[2] = None
            task.timer = None
            self.cancelled += 1
            if self.cancelled > 256 and self.cancelled * 2 > len(self.timers):
                self.timers = [t for t in self.timers if t[2] is not None]
                heapq.heapify(self.timers)
                self.cancelled = 0

    def run_once(self) -> None:
        ready, self.ready = self.ready, []
        for task in ready:
            self.step(task)
        if not self.tasks:
            return
        if self.ready:
            timeout = 0.0
        elif self.timers:
            timeout = max(0.0, self.timers[0][0] - time.monotonic())
        else:
            timeout = None
        for key, _ in self.selector.select(timeout):
            task = key.data
            if task.sock is key.fileobj:
                self.selector.unregister(key.fileobj)
                task.sock = None
                self.step(task)
        timers = self.timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, task = heapq.heappop(timers)
            if task is None:
                self.cancelled -= 1
                continue
            task.timer = None
            if task.sock is not None:  # a socket wait outlived its request's deadline
                self.selector.unregister(task.sock)
                task.sock = None
                self.step(task, error=FetchError("timeout", "no complete response within the deadline"))
            else:
                self.step(task)

    def close(self) -> None:
        for task in list(self.tasks):
            task.coro.close()  # GeneratorExit at its yield: the exchange closes its socket
        self.tasks.clear()
        self.selector.close()


# --- 2. the HTTP exchange ----------------------------------------------------------


class Connection:
    __slots__ = ("key", "sock", "h11", "tls", "pool")

    def __init__(self, key, sock, pool: "Pool"):
        self.key, self.sock, self.pool = key, sock, pool
        # h11 caps a head at 16 KiB by default, below SPEC's limits: check_head decides.
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=2 * MAX_HEADER_SECTION)
        self.tls = False
        pool.open.add(self)

    def close(self) -> None:
        self.pool.open.discard(self)
        self.sock.close()


class Pool:
    """Keep-alive connections per (scheme, host, port), plus the DNS cache."""

    def __init__(self, settings: crawler.Settings):
        self.settings = settings
        self.idle: dict[tuple, list[Connection]] = {}
        self.idle_count = 0
        self.idle_limit = max(settings.concurrency, 1)
        self.open: set[Connection] = set()  # every socket not yet closed, for close()
        self.addresses: dict[tuple, object] = {}
        self._ssl_context: ssl.SSLContext | None = None

    def take(self, key) -> Connection | None:
        conns = self.idle.get(key)
        if not conns:
            return None
        conn = conns.pop()  # the most recently used is the least likely to be stale
        if not conns:
            del self.idle[key]
        self.idle_count -= 1
        return conn

    def release(self, conn: Connection) -> None:
        if self.idle_count >= self.idle_limit:  # many hosts: drop the longest-idle host's oldest
            oldest_key = next(iter(self.idle))
            conns = self.idle[oldest_key]
            conns.pop(0).close()
            if not conns:
                del self.idle[oldest_key]
            self.idle_count -= 1
        self.idle.setdefault(conn.key, []).append(conn)
        self.idle_count += 1

    def resolve(self, host: str, port: int) -> list:
        found = self.addresses.get((host, port))
        if found is None or isinstance(found, tuple) and found[0] < time.monotonic():
            try:
                # THE blocking call: every coroutine waits while this one resolves.
                # An IP literal returns at once (no lookup happens).
                found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                # A failure is remembered briefly, so a dead host does not
                # stall the thread once per URL, yet a retry later may succeed.
                found = (time.monotonic() + 10.0, FetchError("dns", describe(exc)))
            self.addresses[(host, port)] = found
        if isinstance(found, tuple):
            raise FetchError("dns", found[1].detail)
        return found

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context(cafile=self.settings.ca_file)
        return self._ssl_context

    def connect(self, key, deadline: float):
        """Open a connection (TCP, then TLS for https) without blocking."""
        scheme, host, port = key
        error: OSError | None = None
        for family, kind, proto, _, address in self.resolve(host, port):
            conn = Connection(key, socket.socket(family, kind, proto), self)
            try:
                conn.sock.setblocking(False)
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                code = conn.sock.connect_ex(address)
                if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                    yield Writable(conn.sock, deadline)
                    code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, f"connect to {host}:{port}: {errno.errorcode.get(code, code)}")
                if scheme == "https":
                    conn.sock = self.ssl_context().wrap_socket(conn.sock, server_hostname=host, do_handshake_on_connect=False)
                    conn.tls = True
                    while True:
                        try:
                            conn.sock.do_handshake()
                            break
                        except ssl.SSLWantReadError:
                            yield Readable(conn.sock, deadline)
                        except ssl.SSLWantWriteError:
                            yield Writable(conn.sock, deadline)
                return conn
            except OSError as exc:  # refused, unreachable, reset, certificate errors (ssl.SSLError)
                conn.close()
                error = exc
            except BaseException:
                conn.close()
                raise
        raise FetchError("connect", describe(error) if error else f"no address for {host}")


def _send(conn: Connection, data: bytes, deadline: float):
    while data:
        try:
            data = data[conn.sock.send(data) :]
        except (BlockingIOError, ssl.SSLWantWriteError):
            yield Writable(conn.sock, deadline)
        except ssl.SSLWantReadError:
            yield Readable(conn.sock, deadline)


def _recv(conn: Connection, deadline: float):
    sock = conn.sock
    # TLS may already hold decrypted bytes the socket will never signal again.
    if not (conn.tls and sock.pending()):
        yield Readable(sock, deadline)
    while True:
        try:
            return sock.recv(READ_CHUNK)
        except (BlockingIOError, ssl.SSLWantReadError):
            yield Readable(sock, deadline)
        except ssl.SSLWantWriteError:
            yield Writable(sock, deadline)


class ServerClosed(ConnectionError):
    """The server closed the connection before sending a response."""


def exchange(pool: Pool, step: Exchange):
    """One GET: connect or reuse, send, read head and body; returns a Response."""
    key, request = _request(step)
    conn = pool.take(key)
    while True:
        fresh = conn is None
        if fresh:
            conn = yield from pool.connect(key, step.deadline)
        response = yield from _attempt(conn, request, step, reused=not fresh)
        if response is not None:
            return response
        conn = None  # a stale keep-alive: try once more on a new connection


def _request(step: Exchange) -> tuple[tuple[str, str, int], h11.Request]:
    """The connection key ``(scheme, host, port)`` and the h11 request for ``step``."""
    parts = urlsplit(step.url)
    scheme, host, port = parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    authority = f"[{host}]" if ":" in host else host
    if port != (443 if scheme == "https" else 80):
        authority = f"{authority}:{port}"
    headers = [("Host", authority), *step.headers.items()]
    if parts.username is not None:
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers.append(("Authorization", "Basic " + base64.b64encode(userinfo.encode()).decode()))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, host, port), h11.Request(method="GET", target=target, headers=headers)


def _attempt(conn: Connection, request: h11.Request, step: Exchange, reused: bool):
    """Send ``request`` on ``conn`` and read the response; returns it, or None when a ``reused``
    connection turns out stale (closed before any byte of a response)."""
    deadline = step.deadline
    got: Response | None = None
    answered = False  # any response byte yet
    try:
        http = conn.h11
        yield from _send(conn, http.send(request) + http.send(h11.EndOfMessage()), deadline)
        while True:  # the head; 1xx responses are skipped
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = yield from _recv(conn, deadline)
                if not data and not answered:
                    raise ServerClosed("server closed the connection before responding")
                answered = True
                http.receive_data(data)
            elif type(event) is h11.Response:
                break
        check_head(event.headers)
        got = Response(event.status_code, join_headers(event.headers), first_byte_s=step.since_start())
        body = yield from _read_body(conn, got, step)
    except OSError as exc:  # reset, broken pipe, EOF, TLS errors
        conn.close()
        if not answered and reused:
            return None
        raise FetchError("connect" if got is None else "protocol", describe(exc), response=got) from None
    except h11.RemoteProtocolError as exc:  # bad chunking, body shorter than Content-Length ...
        conn.close()
        raise FetchError("protocol", describe(exc), response=got) from None
    except FetchError as exc:  # timeout, too_large, bad encoding
        conn.close()
        exc.response = exc.response or got
        raise
    except BaseException:  # GeneratorExit when the crawl is closed, or a bug
        conn.close()
        raise
    if http.our_state is h11.DONE and http.their_state is h11.DONE:
        http.start_next_cycle()
        conn.pool.release(conn)
    else:  # Connection: close, or a body delimited by EOF
        conn.close()
    return Response(got.status, got.headers, body, got.first_byte_s)


def _read_body(conn: Connection, got: Response, step: Exchange):
    """The body, decoded (and capped) as it arrives."""
    http = conn.h11
    decoder = BodyDecoder(got.headers.get("content-encoding"), step.max_bytes, step.deadline)
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            http.receive_data((yield from _recv(conn, step.deadline)))
        elif type(event) is h11.Data:
            decoder.feed(event.data)
        elif type(event) is h11.EndOfMessage:
            return decoder.finish()


# --- 3. producer and consumers -----------------------------------------------------


def consumer(producer: Iterator[str], settings: crawler.Settings, pool: Pool, results: deque, in_flight: InFlight):
    """Take URLs while the producer has them; hand each result over, then let others run."""
    headers = request_headers(settings)  # built once, not once per URL
    for url in producer:
        try:
            result = yield from run_coroutine(fetch_plan(url, settings, headers), partial(exchange, pool), backoff, in_flight)
        except Exception as exc:  # a bug must not lose the URL's record
            result = crawler.FetchResult(url=url, error="other", detail=describe(exc))
        results.append(result)
        yield PASS  # fetch() hands the result on before this consumer takes another URL


def backoff(seconds: float):
    yield Timer(time.monotonic() + seconds)


def producer(urls: Iterable[str]) -> Iterator[str]:
    # Pulled by a consumer only when it is free: the list is never materialised.
    yield from urls


def fetch(urls: Iterable[str], settings: crawler.Settings) -> Iterator[crawler.FetchResult]:
    """What :meth:`YieldEngine.fetch` does: the loop runs in the caller's thread, each result handed on as soon as it is done."""
    loop = Loop()
    pool = Pool(settings)
    results: deque = deque()
    urls_out = producer(urls)
    in_flight = InFlight()
    try:
        for _ in range(max(settings.concurrency, 1)):
            loop.spawn(consumer(urls_out, settings, pool, results, in_flight))
        while loop.tasks:
            loop.run_once()
            while results:
                yield results.popleft()
        return {"peak_in_flight": in_flight.peak}
    finally:
        loop.close()
        for conn in list(pool.open):
            conn.close()
        urls_out.close()
