"""One HTTP exchange with requests: shared by the ``threads`` and ``pool`` engines.

The policy (retries, redirects, error codes) comes from
:mod:`crawler.fetching`; this module only performs one GET on a
``requests.Session`` and maps requests'/urllib3's exceptions onto the
shared error codes.
"""

from __future__ import annotations

import socket
import ssl

import requests
import urllib3

from crawler.fetching import READ_CHUNK, BodyDecoder, Exchange, FetchError, Response, describe


def new_session(concurrency: int = 1) -> requests.Session:
    session = requests.Session()
    # Proxies and .netrc from the environment are off, as they are in aiohttp,
    # so every engine sends the same request; it also saves a lookup per request.
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=max(1, concurrency), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def exchange(session: requests.Session, step: Exchange, verify: bool | str = True) -> Response:
    """GET ``step.url`` once; the decoded body is capped and the deadline kept."""
    remaining = step.remaining()
    if remaining <= 0:
        raise FetchError("timeout", "request deadline passed")
    try:
        resp = session.get(
            step.url,
            headers=step.headers,
            timeout=remaining,
            stream=True,
            allow_redirects=False,
            verify=verify,
        )
    except requests.exceptions.RequestException as exc:
        raise _classify(exc) from None
    try:
        headers = {name.lower(): value for name, value in resp.headers.items()}
        got = Response(resp.status_code, headers)
        decoder = BodyDecoder(headers.get("content-encoding"), step.max_bytes)
        raw = resp.raw
        while True:
            # read1 returns what one recv gave, so a dripping server meets the
            # deadline check below instead of filling a 64 KB read forever.
            chunk = raw.read1(READ_CHUNK, decode_content=False)
            if not chunk:
                break
            decoder.feed(chunk)
            if step.remaining() <= 0:
                raise FetchError("timeout", "request deadline passed while reading the body", response=got)
            _set_read_timeout(raw, step.remaining())
        return Response(resp.status_code, headers, decoder.finish())
    except FetchError as exc:
        exc.response = exc.response or Response(resp.status_code, headers)
        resp.close()
        raise
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        resp.close()
        error = _classify(exc)
        error.response = Response(resp.status_code, headers)
        if error.code == "connect":  # the status line arrived, so the connection worked
            error = FetchError("protocol", error.detail, response=error.response)
        raise error from None


def _set_read_timeout(raw, seconds: float) -> None:
    sock = getattr(getattr(raw, "_connection", None), "sock", None) or getattr(getattr(raw, "_fp", None), "fp", None)
    sock = getattr(sock, "raw", sock)
    sock = getattr(sock, "_sock", sock)
    if isinstance(sock, socket.socket):
        sock.settimeout(max(seconds, 0.001))


def _classify(exc: BaseException) -> FetchError:
    """Map a requests/urllib3/socket exception to a shared error code."""
    detail = describe(exc)
    chain = _causes(exc)
    # urllib3's NewConnectionError subclasses ConnectTimeoutError: test it first.
    if any(isinstance(e, (ConnectionRefusedError, urllib3.exceptions.NewConnectionError)) for e in chain) and not any(
        isinstance(e, (socket.gaierror, urllib3.exceptions.NameResolutionError)) for e in chain
    ):
        return FetchError("connect", detail)
    if any(isinstance(e, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError)) for e in chain):
        return FetchError("timeout", detail)
    if any(isinstance(e, (urllib3.exceptions.NameResolutionError, socket.gaierror)) for e in chain):
        return FetchError("dns", detail)
    if any(isinstance(e, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema, urllib3.exceptions.LocationParseError)) for e in chain):
        return FetchError("invalid_url", detail)
    if any(isinstance(e, (ssl.SSLError, requests.exceptions.SSLError)) for e in chain):
        return FetchError("connect", detail)
    if any(isinstance(e, (urllib3.exceptions.ProtocolError, requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)) for e in chain):
        if any(isinstance(e, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)) for e in chain) or "RemoteDisconnected" in detail:
            return FetchError("connect", detail)
        return FetchError("protocol", detail)
    if any(isinstance(e, (requests.exceptions.ConnectionError, ConnectionError, urllib3.exceptions.NewConnectionError)) for e in chain):
        return FetchError("connect", detail)
    if any(isinstance(e, OSError) for e in chain):
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
