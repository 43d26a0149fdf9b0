"""What fetching one URL means, defined once for every engine.

Engines differ only in how they wait.  Everything else — which URLs are
valid, how long a request may take, what is retried and how long to back
off, which redirects are followed, how bodies are decoded and capped, which
error code a failure gets — lives here.

The policy is a *sans-IO generator*, :func:`fetch_plan`.  It yields what it
needs done and is resumed with the outcome:

* it yields an :class:`Exchange` — "send one GET and read the response" — and
  is sent back a :class:`Response`, or has a :class:`FetchError` thrown in;
* it yields a :class:`Sleep` — "wait this long" (retry backoff, politeness) —
  and is sent ``None``;
* it yields an :class:`Ask` — a question for the run's per-host politeness
  gate (robots.txt, in-flight limit, delay) — and is sent the answer, when
  the run has a gate (``settings.run.gate``, which the plan carries as
  ``plan.gate`` for its driver);
* it returns (``StopIteration.value``) the final :class:`FetchResult`.

Blocking engines drive it with :func:`run_blocking`, asyncio engines with
:func:`run_async`, generator-coroutine engines with :func:`run_coroutine`; each
answers the plan's questions with ``plan.gate``, so the plan itself does no
I/O and takes no lock, and an engine whose fetches run in other processes
gets a gate that asks its parent.  An engine's only job is one exchange:
connect, send, read status and headers, stream the body through a
:class:`BodyDecoder`, honour the deadline, and turn its library's exceptions
into :class:`FetchError` codes.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import functools
import ipaddress
import random
import re
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Awaitable, Callable, Generator, Mapping, Union
from urllib.parse import urljoin, urlsplit, urlunsplit

from .engines import FetchResult, Settings
from .politeness import ROBOTS_PENDING, ROBOTS_UNKNOWN
from .urls import host_key

# SPEC §6.  Every code but "parse" (the parse stage's) comes from the fetch plan below, the same in every engine.
ERROR_CODES = (
    "invalid_url",
    "dns",
    "connect",
    "timeout",
    "too_large",
    "too_many_redirects",
    "http_status",
    "protocol",
    "robots",
    "parse",
    "other",
)
RETRYABLE_ERRORS = frozenset({"dns", "connect", "timeout"})
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
READ_CHUNK = 64 * 1024

# SPEC §6 "One response, one verdict": every engine sets its library's own
# limits above these and leaves the verdict to check_head().
MAX_URL_LENGTH = 8192
MAX_HEADER_FIELDS = 100  # every field counts, repeated names included
MAX_HEADER_LINE = 8190  # name, colon and value (no CRLF, no spaces): the common server limit
MAX_HEADER_SECTION = 64 * 1024


class FetchError(Exception):
    """One exchange failed; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, detail: str = "", *, response: "Response | None" = None):
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail or code
        self.response = response  # set when a status line had arrived


@dataclass(frozen=True)
class Exchange:
    """One GET to perform: ``url`` is already validated and IDNA-encoded."""

    url: str
    headers: Mapping[str, str]
    deadline: float  # time.monotonic() value by which the whole exchange must be done
    max_bytes: int
    started: float = field(default_factory=time.monotonic)

    def since_start(self) -> float:
        """Seconds since the exchange began: what an engine gives as ``Response.first_byte_s``."""
        return time.monotonic() - self.started

    def remaining(self) -> float:
        """Seconds left before the deadline (<= 0 means it has passed)."""
        return self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        if time.monotonic() >= self.deadline:
            raise FetchError("timeout", "request deadline passed")


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""  # decoded
    # Seconds from the start of the exchange to its status line: the server's
    # share of the wait, as the report's verdict reads it.  None if unknown.
    first_byte_s: float | None = None


@dataclass(frozen=True)
class Ask:
    """A question for the run's politeness gate: ``gate.answer(ask)`` calls its method ``question`` with ``args``.

    Questions (see :data:`crawler.politeness.QUESTIONS`) are answered; tells
    (:data:`crawler.politeness.TELLS`) are sent ``None`` and need not wait.
    """

    question: str
    args: tuple = ()


Step = Union[Exchange, Sleep, Ask]
Steps = Generator[Step, object, FetchResult]


class Plan:
    """One URL's plan, as :func:`fetch_plan` gives it: its steps (iterate, ``send``, ``throw``, ``close``), and the gate its :class:`Ask` steps are for."""

    __slots__ = ("gate", "send", "throw", "close")

    def __init__(self, steps: Steps, gate) -> None:
        self.gate = gate
        self.send, self.throw, self.close = steps.send, steps.throw, steps.close

    def __iter__(self) -> "Plan":
        return self

    def __next__(self) -> Step:
        return self.send(None)


class Abandoned(BaseException):
    """Thrown into a plan whose URL was stopped mid-way (the run closed, a task cancelled).

    The plan then tells the gate what it held (a slot in flight, a host's
    robots.txt fetch) before it ends; see :func:`_abandon`.
    """


# --- URLs --------------------------------------------------------------------------


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# What a DNS name may hold once IDNA-encoded (underscores occur in real host names).
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")


# The common URL, already fit for the wire: http(s), an ASCII host name, maybe a port,
# a path (and query) of printable ASCII without a fragment.  Most of a crawl's URLs
# are such; they skip urlsplit, the idna codec and urlunsplit (a tenth of the
# asyncio engine's own time, profiled fetch-only).
_SIMPLE_URL = re.compile(r"([Hh][Tt][Tt][Pp][Ss]?)://([A-Za-z0-9_.-]{1,253})(?::([0-9]{1,5}))?(/[!-\"$-~]*)\Z")


def http_url(url: str) -> str:
    """Return ``url`` ready for the wire, or raise ``FetchError("invalid_url")``.

    Accepts absolute http/https URLs with a host; the host is IDNA-encoded,
    the fragment dropped, and characters that cannot travel in a request
    line are percent-encoded.
    """
    simple = _SIMPLE_URL.match(url)
    if simple is not None and len(url) <= MAX_URL_LENGTH and not url.endswith("?"):
        scheme, host, port, path = simple.groups()
        labels = host.split(".")
        if all(0 < len(label) < 64 for label in labels[:-1]) and len(labels[-1]) < 64 and (port is None or int(port) <= 65535):
            netloc = host.lower() if port is None else f"{host.lower()}:{int(port)}"
            return f"{scheme.lower()}://{netloc}{path}"
    return _any_http_url(url)


def _any_http_url(url: str) -> str:
    """:func:`http_url` for any URL (the general way, which the simple one must agree with)."""
    if not url or _CONTROL_CHARS.search(url):
        raise FetchError("invalid_url", "empty URL or control characters")
    if len(url) > MAX_URL_LENGTH:
        raise FetchError("invalid_url", f"URL longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError("invalid_url", f"not an http(s) URL: scheme {scheme or 'missing'!r}")
        host = parts.hostname
        if not host:
            raise FetchError("invalid_url", "no host")
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as exc:
        raise FetchError("invalid_url", str(exc)) from None
    if ":" in host:  # an IPv6 literal
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise FetchError("invalid_url", f"bad IPv6 address {host[:100]!r}") from None
        netloc_host = f"[{host}]"
    else:
        try:
            netloc_host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise FetchError("invalid_url", f"bad host name: {exc}") from None
        # A name no DNS server could hold is refused here, before any lookup.
        if len(netloc_host) > 253 or not _HOST_NAME.fullmatch(netloc_host):
            raise FetchError("invalid_url", f"bad host name {host[:100]!r}")
    netloc = netloc_host if port is None else f"{netloc_host}:{port}"
    if parts.username is not None:
        userinfo = parts.username + (f":{parts.password}" if parts.password is not None else "")
        netloc = f"{userinfo}@{netloc}"
    path = _quote_unsafe(parts.path) or "/"
    return urlunsplit((scheme, netloc, path, _quote_unsafe(parts.query), ""))


def _quote_unsafe(text: str) -> str:
    if text.isascii() and " " not in text:
        return text
    return "".join(
        ch if ch.isascii() and ch != " " else "".join(f"%{b:02X}" for b in ch.encode("utf-8"))
        for ch in text
    )


def redirect_target(url: str, location: str) -> str:
    """Absolute target of a redirect, or ``FetchError`` for a non-http(s) target."""
    location = location.strip()
    try:
        # urljoin would read "http://" (no host) as "the same page"; an absolute
        # Location stands on its own.
        target = location if urlsplit(location).scheme else urljoin(url, location)
    except ValueError as exc:
        raise FetchError("invalid_url", f"bad redirect Location: {exc}") from None
    try:
        return http_url(target)
    except FetchError as exc:
        raise FetchError("invalid_url", f"redirect to {target[:200]!r}: {exc.detail}") from None


def check_head(fields) -> None:
    """Refuse a final response whose header section breaks SPEC §6's limits.

    ``fields`` are the (name, value) pairs as received, repeated names apart
    (str or bytes).  A line is measured as SPEC words it: name, colon and
    value (the libraries drop the spaces around a value, so they cannot
    count).  The verdict is ``protocol`` with no status: the head was not
    accepted, so the status line does not count either.
    """
    count = total = 0
    for name, value in fields:
        count += 1
        line = len(name) + 1 + len(value)
        if count > MAX_HEADER_FIELDS:
            raise FetchError("protocol", f"more than {MAX_HEADER_FIELDS} header fields")
        if line > MAX_HEADER_LINE:
            raise FetchError("protocol", f"a header line longer than {MAX_HEADER_LINE} bytes")
        total += line + 2
    if total > MAX_HEADER_SECTION:
        raise FetchError("protocol", f"header section longer than {MAX_HEADER_SECTION} bytes")


# --- bodies ------------------------------------------------------------------------


class BodyDecoder:
    """Decodes a streamed body and enforces ``max_bytes`` on the decoded size.

    Decompression is bounded at each step (``max_length``), so a compression
    bomb fails as ``too_large`` after producing at most ``max_bytes + 1``
    bytes, never holding the bomb in memory.
    """

    def __init__(self, content_encoding: str | None, max_bytes: int, deadline: float | None = None):
        self.max_bytes = max_bytes
        self.deadline = deadline  # time.monotonic() value: a body still coming then is a timeout
        self.size = 0
        self._parts: list[bytes] = []
        encoding = (content_encoding or "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._inflater = None  # zlib-wrapped or raw: decided by the first bytes
            self._deflate_pending = True
        elif encoding in ("identity", ""):
            self._inflater = None
            self._deflate_pending = False
        else:
            raise FetchError("protocol", f"unsupported Content-Encoding {encoding!r}")
        self._encoded = encoding not in ("identity", "")

    def feed(self, data: bytes) -> None:
        if not data:
            return
        # Checked per chunk: an endless body read at memory speed never lets a
        # library's own timer fire, and must not pile up until it does.
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self._parts.clear()
            raise FetchError("timeout", "no complete response within the deadline")
        if not self._encoded:
            self._keep(data)
            return
        if self._inflater is None:
            # RFC 9110 says zlib-wrapped; some servers send raw deflate.
            wrapped = len(data) >= 2 and (data[0] & 0x0F) == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        try:
            while data:
                out = self._inflater.decompress(data, self.max_bytes - self.size + 1)
                self._keep(out)
                data = self._inflater.unconsumed_tail
        except zlib.error as exc:
            raise FetchError("protocol", f"bad compressed body: {exc}") from None

    def _keep(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            self._parts.clear()
            raise FetchError("too_large", f"body larger than {self.max_bytes} bytes")
        self._parts.append(data)

    def finish(self) -> bytes:
        if self._encoded and self._inflater is not None:
            try:
                self._keep(self._inflater.flush())
            except zlib.error as exc:
                raise FetchError("protocol", f"bad compressed body: {exc}") from None
        body = b"".join(self._parts)
        self._parts = [body]
        return body


# --- the policy --------------------------------------------------------------------


def request_headers(settings: Settings) -> Mapping[str, str]:
    """The headers every engine sends (one shared, read-only mapping per user agent)."""
    return _headers_for(settings.user_agent or default_user_agent())


@functools.lru_cache(maxsize=8)
def _headers_for(user_agent: str) -> Mapping[str, str]:
    return MappingProxyType({"User-Agent": user_agent, "Accept": "*/*", "Accept-Encoding": "gzip, deflate"})


@functools.lru_cache(maxsize=1)  # asked for every URL that sets no --user-agent
def default_user_agent() -> str:
    from . import __version__
    from .engines import DEFAULT_USER_AGENT

    return DEFAULT_USER_AGENT.format(version=__version__)


def backoff_delay(retry: int, settings: Settings) -> float:
    """Seconds before retry number ``retry`` (1-based): exponential, full jitter."""
    ceiling = min(settings.backoff_max, settings.backoff_base * 2 ** (retry - 1))
    return random.uniform(ceiling / 2, ceiling)


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def fetch_plan(url: str, settings: Settings, headers: Mapping[str, str] | None = None) -> Plan:
    """The life of one URL: validate, exchange, retry, follow redirects, conclude.

    Whatever goes wrong inside (a bug here, a plugin's exchange raising
    something other than :class:`FetchError`) ends as this URL's record with
    ``other``, never as an exception out of the engine.
    """
    return Plan(_guarded(url, settings, headers), settings.run.gate)


def _guarded(url: str, settings: Settings, headers: Mapping[str, str] | None) -> Steps:
    started = time.monotonic()
    try:
        return (yield from _plan(url, settings, headers, started))
    except Exception as exc:
        return FetchResult(url=url, error="other", detail=describe(exc), elapsed=time.monotonic() - started)


def _plan(url: str, settings: Settings, headers: Mapping[str, str] | None, started: float) -> Steps:
    """:func:`fetch_plan` without its guard.

    Each try of a hop gets ``settings.timeout`` seconds for connect, headers
    and body together; connection errors, timeouts and 502/503/504 are tried
    again up to ``settings.retries`` times per hop, after :func:`backoff_delay`,
    and so are 429 and 503, after the wait their ``Retry-After`` asks for
    (unless it is longer than ``settings.max_retry_after``).
    """

    def result(**fields) -> FetchResult:
        return FetchResult(url=url, elapsed=time.monotonic() - started, **fields)

    try:
        current = http_url(url)
    except FetchError as exc:
        return result(error=exc.code, detail=exc.detail)
    headers = headers or request_headers(settings)
    polite = settings.run.gate is not None
    redirects = 0
    retry = 0
    while True:
        held = None
        if polite:
            held = host_key(current)
            refusal = yield from _admitted(held, current, headers, settings)
            if refusal is not None:
                code, detail = refusal
                return result(error=code, detail=detail)
        try:
            response = yield from _exchange(current, headers, settings, holds=held)
        except FetchError as exc:
            if exc.code in RETRYABLE_ERRORS and retry < settings.retries:
                retry += 1
                yield Sleep(backoff_delay(retry, settings))
                continue
            got = exc.response
            return result(
                error=exc.code,
                detail=exc.detail,
                status=got.status if got else None,
                headers=got.headers if got else {},
                final_url=current if got else None,
                first_byte_s=got.first_byte_s if got else None,
            )
        if response.status in RETRYABLE_STATUSES and retry < settings.retries:
            wait = retry_after(response.headers.get("retry-after"))
            if wait is None or wait <= settings.max_retry_after:
                retry += 1
                yield Sleep(backoff_delay(retry, settings) if wait is None else wait)
                continue
        location = response.headers.get("location")
        if response.status in REDIRECT_STATUSES and location is not None:
            if redirects >= settings.max_redirects:
                return result(
                    error="too_many_redirects",
                    detail=f"more than {settings.max_redirects} redirects",
                    status=response.status,
                    headers=response.headers,
                    final_url=current,
                )
            try:
                current = redirect_target(current, location)
            except FetchError as exc:
                return result(
                    error=exc.code,
                    detail=exc.detail,
                    status=response.status,
                    headers=response.headers,
                    final_url=current,
                )
            redirects += 1
            retry = 0
            continue
        ok = 200 <= response.status < 300
        return result(
            status=response.status,
            headers=response.headers,
            body=response.body,
            final_url=current,
            first_byte_s=response.first_byte_s,
            error=None if ok else "http_status",
            detail=None if ok else f"HTTP {response.status}",
        )


def _exchange(url: str, headers: Mapping[str, str], settings: Settings, max_bytes: int | None = None, holds: str | None = None):
    """One exchange; ``holds``: the host whose gate slot this request was given, handed back when it ends."""
    step = Exchange(url, headers, time.monotonic() + settings.timeout, max_bytes or settings.max_bytes)
    if holds is None:
        return (yield step)
    try:
        response = yield step
    except (FetchError, Abandoned):
        yield Ask("finish", (holds,))
        raise
    yield Ask("finish", (holds,))
    return response


def _slot(key: str):
    """Wait until the host's in-flight limit and delay let a request start (politeness waits are not timed as the request)."""
    while (wait := (yield Ask("try_start", (key,)))) > 0:
        yield Sleep(wait)


def _admitted(key: str, url: str, headers: Mapping[str, str], settings: Settings):
    """Wait until the gate lets ``url`` start: None once it holds a slot, else the refusal's (error code, detail).

    One question answers both robots.txt and the limits (see
    :meth:`crawler.politeness.HostGate.admit`): for a worker process, one
    round trip to its parent per request.  One URL per host fetches
    robots.txt; the host's other URLs wait for it and share its outcome, a
    failure included (decided once per run).
    """
    while True:
        answer = yield Ask("admit", (key, url))
        if isinstance(answer, float):
            if answer <= 0:
                return None
            yield Sleep(answer)
        elif answer == ROBOTS_PENDING:
            yield Sleep(0.01)
        elif answer == ROBOTS_UNKNOWN:
            yield from _learn_robots(key, url, headers, settings)
        else:
            return answer


ROBOTS_MAX_BYTES = 512 * 1024  # what Google reads of a robots.txt


def _fetch_robots(robots_url: str, headers: Mapping[str, str], settings: Settings):
    """GET robots.txt with the same retries as any request, following a few redirects."""
    retry = 0
    redirects = 0
    while True:
        key = host_key(robots_url)
        yield from _slot(key)
        try:
            response = yield from _exchange(robots_url, headers, settings, ROBOTS_MAX_BYTES, holds=key)
        except FetchError as exc:
            if exc.code in RETRYABLE_ERRORS and retry < settings.retries:
                retry += 1
                yield Sleep(backoff_delay(retry, settings))
                continue
            raise
        location = response.headers.get("location")
        if response.status in REDIRECT_STATUSES and location and redirects < 5:
            robots_url = redirect_target(robots_url, location)
            redirects += 1
            continue
        return response


def _learn_robots(key: str, url: str, headers: Mapping[str, str], settings: Settings):
    """Fetch the host's robots.txt (this URL was given the job) and tell the gate what it says."""
    try:
        response = yield from _fetch_robots(urljoin(url, "/robots.txt"), headers, settings)
    except FetchError as exc:
        if exc.code == "too_large" and exc.response:
            yield Ask("learn_robots", (key, 200, ""))  # an absurd robots.txt is no robots.txt
        else:
            yield Ask("robots_failed", (key, exc.code, f"robots.txt: {exc.detail}"))
        return
    except Abandoned:  # this URL was stopped mid-fetch: another one will ask
        yield Ask("robots_abandoned", (key,))
        raise
    yield Ask("learn_robots", (key, response.status, response.body.decode("utf-8", "replace")))


class InFlight:
    """Requests in flight in one engine run, and the most there ever were.

    The drivers count each exchange while it runs, so ``peak`` is what the
    network saw, whatever an engine reads ahead or keeps waiting in a queue.
    """

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __enter__(self) -> "InFlight":
        with self._lock:
            self.now += 1
            if self.now > self.peak:
                self.peak = self.now
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self.now -= 1


_UNCOUNTED = contextlib.nullcontext()


def run_blocking(
    plan: Plan,
    exchange: Callable[[Exchange], Response],
    sleep: Callable[[float], object] = time.sleep,
    in_flight: InFlight | None = None,
) -> FetchResult:
    """Drive a plan with a blocking ``exchange`` function (threads, processes).

    ``sleep`` waits out backoffs and politeness; an engine that must stop
    promptly passes one it can cut short (e.g. ``threading.Event().wait``).
    ``in_flight`` counts the exchanges while they run.  Every driver answers
    the plan's :class:`Ask` steps with ``plan.gate``, at once.
    """

    def exchange_now(step: Exchange):
        return exchange(step)
        yield  # a generator that never waits: the call above already blocked

    def sleep_now(seconds: float):
        sleep(seconds)
        return
        yield

    try:
        next(run_coroutine(plan, exchange_now, sleep_now, in_flight))
    except StopIteration as done:
        return done.value
    raise AssertionError("a blocking plan never waits on a scheduler")


def run_coroutine(
    plan: Plan,
    exchange: Callable[[Exchange], Generator],
    sleep: Callable[[float], Generator],
    in_flight: InFlight | None = None,
):
    """Drive a plan from a generator coroutine (``yield from run_coroutine(...)``).

    ``exchange(step)`` and ``sleep(seconds)`` are sub-generators that yield
    whatever the caller's scheduler waits on; the result is the return value.
    """
    counted = in_flight or _UNCOUNTED
    gate = getattr(plan, "gate", None)
    try:
        step = next(plan)
        while True:
            if isinstance(step, Ask):
                step = _answer(plan, step, gate)
                continue
            if isinstance(step, Sleep):
                yield from sleep(step.seconds)
                step = plan.send(None)
                continue
            try:
                with counted:
                    response = yield from exchange(step)
            except Exception as exc:
                step = plan.throw(exchange_error(exc))
            else:
                step = plan.send(response)
    except StopIteration as done:
        return done.value
    except BaseException:
        _abandon(plan, gate)
        raise


async def run_async(
    plan: Plan, exchange: Callable[[Exchange], Awaitable[Response]], in_flight: InFlight | None = None
) -> FetchResult:
    """Drive a plan with an ``async`` exchange function (asyncio engines)."""
    import asyncio

    counted = in_flight or _UNCOUNTED
    gate = getattr(plan, "gate", None)
    try:
        step = next(plan)
        while True:
            if isinstance(step, Ask):
                step = _answer(plan, step, gate)
                continue
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                step = plan.send(None)
                continue
            try:
                with counted:
                    response = await exchange(step)
            except Exception as exc:
                step = plan.throw(exchange_error(exc))
            else:
                step = plan.send(response)
    except StopIteration as done:
        return done.value
    except BaseException:
        _abandon(plan, gate)
        raise


def _answer(plan: Plan, ask: Ask, gate) -> Step:
    """Answer the plan's question with ``gate`` (at once: a gate never makes a driver wait) and resume it."""
    if gate is None:
        return plan.throw(TypeError(f"a plan without a gate asked it {ask.question!r}"))
    try:
        answer = gate.answer(ask)
    except Exception as exc:  # a gate in another process that went away (the run is ending)
        return plan.throw(exc)
    return plan.send(answer)


def _abandon(plan: Plan, gate) -> None:
    """The driver was stopped (closed, cancelled, interrupted): let the plan give back what it held at the gate.

    Runs without waiting, so it works even inside a generator's ``close()``:
    :class:`Abandoned` is thrown in, and the tells the plan yields on its way
    out are answered here.
    """
    try:
        step = plan.throw(Abandoned())
        while isinstance(step, Ask) and gate is not None:
            step = plan.send(gate.answer(step))
    except (Abandoned, Exception):  # ended; or the gate went with the run: nothing left to give back
        pass
    finally:
        plan.close()


def exchange_error(exc: Exception) -> FetchError:
    """The :class:`FetchError` an exchange's exception stands for.

    Engines map their library's exceptions themselves; this catches the rest
    in the drivers (a library's bug, a plugin's exchange), so that no
    exception out of one exchange can end a run or cost another URL its
    record.  Standard errors get their code, anything else is ``other``.
    """
    if isinstance(exc, FetchError):
        return exc
    detail = describe(exc)
    if isinstance(exc, socket.gaierror):
        return FetchError("dns", detail)
    if isinstance(exc, TimeoutError):
        return FetchError("timeout", detail)
    if isinstance(exc, OSError):  # refused, reset, unreachable, TLS (ssl.SSLError)
        return FetchError("connect", detail)
    return FetchError("other", detail)


def describe(exc: BaseException) -> str:
    """A short ``detail`` for a record: the exception's type and message."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


def join_headers(pairs) -> dict[str, str]:
    """Lower-cased header dict from (name, value) pairs; repeats joined with ', '."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers
