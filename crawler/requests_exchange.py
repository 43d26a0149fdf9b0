"""One HTTP exchange with requests: shared by the ``threads`` and ``pool`` engines.

The policy (retries, redirects, error codes) comes from
:mod:`crawler.fetching`; this module only performs one GET on a requests
``HTTPAdapter`` and maps requests'/urllib3's exceptions onto the shared
error codes.

Each thread or process has its ``requests.Session``, which holds the
connection pool (its mounted adapter), but requests go straight to that
adapter, not through ``Session.send``: ``Session.send`` prepares the next hop
of every redirect even when told not to follow it (and raises on a
``Location`` it cannot parse, losing the response), keeps cookies the other
engines never send, and adds headers of its own.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import socket
import ssl
import threading
import time

import requests
import urllib3

from crawler.fetching import MAX_HEADER_FIELDS, MAX_HEADER_SECTION, READ_CHUNK, BodyDecoder, Exchange, FetchError, Response, check_head, describe, join_headers


class _Deadlines:
    """One thread per process that shuts down sockets whose request ran out of time.

    requests' timeouts are per socket operation: a server that drips a byte
    at a time never trips them.  Shutting the socket down from outside
    wakes the blocked read at the deadline, wherever it is (headers or body).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, "_Guard"]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, guard: "_Guard") -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._run, name="crawl-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (guard.deadline, next(self._seq), guard))
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and not self._heap[0][2].active:
                    heapq.heappop(self._heap)
                if not self._heap:
                    # idle: end, so that no thread outlives the crawl (add() starts a new one)
                    if not self._cond.wait(IDLE_EXIT_S) and not self._heap:
                        self._thread = None
                        return
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)[2].expire()


# Seconds the deadline thread waits with no request to watch before it ends.
IDLE_EXIT_S = 1.0

_deadlines = _Deadlines()
_current = threading.local()  # the guard of the request this thread is making


class _Guard:
    def __init__(self, deadline: float):
        self.deadline = deadline
        self.active = True
        self.expired = False
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self.sock = sock
            if self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            if self.active:
                self.expired = True
                _shutdown(self.sock)

    def __enter__(self) -> "_Guard":
        _current.guard = self
        _deadlines.add(self)
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self.active = False
        _current.guard = None


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


class _FinalResponse(http.client.HTTPResponse):
    """An http.client response that skips every interim 1xx, as the other engines do.

    http.client skips ``100 Continue`` only, and would hand a ``103 Early
    Hints`` over as the response.  ``_read_status`` is its hook for the status
    line (CPython 3.11 to 3.14; the conformance suite checks it).
    """

    def _read_status(self):
        while True:
            version, status, reason = super()._read_status()
            if status == 100 or status == 101 or not 100 <= status < 200:
                return version, status, reason  # begin() itself skips 100
            for _ in range(MAX_HEADER_FIELDS + 1):  # the interim response's header lines
                if self.fp.readline(MAX_HEADER_SECTION + 1) in (b"\r\n", b"\n", b""):
                    break
            else:
                raise http.client.HTTPException(f"more than {MAX_HEADER_FIELDS} header fields in a {status} response")


# http.client counts the blank line that ends a head as a header line, so it
# refuses 100 fields (SPEC §6 accepts them; check_head refuses 101).  Its limit
# is a module global with no public setter: raised by exactly that line.
if getattr(http.client, "_MAXHEADERS", None) == MAX_HEADER_FIELDS:
    http.client._MAXHEADERS = MAX_HEADER_FIELDS + 1


class _WatchedConnection(urllib3.connection.HTTPConnection):
    response_class = _FinalResponse

    def getresponse(self, *args, **kwargs):
        guard = getattr(_current, "guard", None)
        if guard is not None:
            guard.watch(self.sock)  # from here on the server can stall us: headers, then body
        return super().getresponse(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _FinalResponse
    getresponse = _WatchedConnection.getresponse


class _WatchedPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedHTTPSPool}


def new_session(concurrency: int = 1) -> requests.Session:
    """One thread's or process's connections: keep-alive pooled, no retries of urllib3's own."""
    session = requests.Session()
    # Proxies and .netrc from the environment are off, as they are in aiohttp,
    # so every engine sends the same request.
    session.trust_env = False
    adapter = _WatchedAdapter(pool_connections=16, pool_maxsize=max(1, concurrency), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def abort(session: requests.Session) -> None:
    """The crawl is stopping: wake the request ``session`` is blocked in, and any it starts later, at once."""
    session.crawl_stopped = True
    guard = getattr(session, "crawl_guard", None)
    if guard is not None:
        guard.expire()


def exchange(session: requests.Session, step: Exchange, verify: bool | str = True) -> Response:
    """GET ``step.url`` once; the decoded body is capped and the deadline kept."""
    remaining = step.remaining()
    if remaining <= 0:
        raise FetchError("timeout", "request deadline passed")
    with _Guard(step.deadline) as guard:
        session.crawl_guard = guard
        if getattr(session, "crawl_stopped", False):
            guard.expire()
        try:
            response = _exchange(session, step, remaining, verify)
        except FetchError as exc:
            if guard.expired and exc.code != "too_large":
                raise FetchError("timeout", "no complete response within the deadline", response=exc.response) from None
            raise
    if guard.expired:  # the shut-down socket read as a clean end of the message
        raise FetchError("timeout", "no complete response within the deadline", response=response)
    return response


def _exchange(session: requests.Session, step: Exchange, remaining: float, verify: bool | str) -> Response:
    try:
        request = requests.Request("GET", step.url, headers=step.headers).prepare()
        resp = session.get_adapter(step.url).send(request, stream=True, timeout=remaining, verify=verify)
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        raise _classify(exc) from None
    try:
        check_head(resp.raw.headers.items())
    except FetchError:
        resp.close()
        raise
    headers = join_headers(resp.raw.headers.items())
    got = Response(resp.status_code, headers, first_byte_s=step.since_start())
    try:
        decoder = BodyDecoder(headers.get("content-encoding"), step.max_bytes, step.deadline)
        # read1 returns what one recv gave: the body streams through the
        # decoder (and its size limit) as it arrives.
        while chunk := resp.raw.read1(READ_CHUNK, decode_content=False):
            decoder.feed(chunk)
        return Response(resp.status_code, headers, decoder.finish(), got.first_byte_s)
    except FetchError as exc:
        exc.response = exc.response or got
        resp.close()
        raise
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        resp.close()
        error = _classify(exc)
        if error.code == "connect":  # the status line arrived, so the connection worked
            error = FetchError("protocol", error.detail)
        error.response = got
        raise error from None


def _classify(exc: BaseException) -> FetchError:
    """Map a requests/urllib3/socket exception to a shared error code."""
    detail = describe(exc)
    chain = _causes(exc)

    def found(*kinds) -> bool:
        return any(isinstance(e, kinds) for e in chain)

    # Name resolution first: urllib3's NameResolutionError subclasses
    # NewConnectionError, which subclasses ConnectTimeoutError.
    if found(socket.gaierror, urllib3.exceptions.NameResolutionError):
        return FetchError("dns", detail)
    if found(ConnectionRefusedError, urllib3.exceptions.NewConnectionError):
        return FetchError("connect", detail)
    if found(requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError):
        return FetchError("timeout", detail)
    if found(requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema, urllib3.exceptions.LocationParseError):
        return FetchError("invalid_url", detail)
    if found(ssl.SSLError, requests.exceptions.SSLError):
        return FetchError("connect", detail)
    if found(http.client.RemoteDisconnected):  # closed before a status line: nothing was answered
        return FetchError("connect", detail)
    if found(http.client.HTTPException):  # a bad status line, too many or too long header lines
        return FetchError("protocol", detail)
    if found(urllib3.exceptions.ProtocolError, requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
        if found(ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return FetchError("connect", detail)
        return FetchError("protocol", detail)
    if found(requests.exceptions.ConnectionError, ConnectionError, OSError):
        return FetchError("connect", detail)
    return FetchError("other", detail)


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return seen
