"""Being a good citizen of other people's servers, once for every engine.

A :class:`HostGate` holds, per host (hostname and port), the requests in
flight, when the last one started, and what its robots.txt says.  The
shared fetch policy (:func:`crawler.fetching.fetch_plan`) asks it before
every exchange with ``Ask`` steps, which the engine's driver answers with
``gate.answer(ask)``, and waits with the ``Sleep`` steps every engine already
knows how to perform, so no engine carries its own copy of these rules.

The gate is plain, thread-safe Python that lives in the crawl's process.
Engines that fetch in worker processes get a :class:`RemoteGate` instead: it
sends each question to a :class:`GateServer`, a thread of the parent that
answers it from the one gate, so the limits hold across all the workers.  A
worker that dies gives back what it held (slots in flight, a robots.txt
fetch): its connection's end says so.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Listener, Pipe, wait

from protego import Protego

# What :meth:`HostGate.robots` tells the fetch policy about a host's robots.txt.
ROBOTS_UNKNOWN = "unknown"  # nobody has fetched it yet: the caller must
ROBOTS_PENDING = "pending"  # another request is fetching it: wait
ROBOTS_KNOWN = "known"

# What a plan may ask a gate (``Ask.question``): questions wait for the answer,
# tells are answered None and a gate in another process need not reply.
QUESTIONS = frozenset({"admit", "try_start"})
TELLS = frozenset({"finish", "learn_robots", "robots_failed", "robots_abandoned"})


@dataclass(frozen=True)
class _Refused:
    """The host is not crawled this run: ``code`` and ``reason`` become each URL's error and detail."""

    reason: str
    code: str = "robots"


@dataclass
class _Host:
    in_flight: int = 0
    last_start: float = float("-inf")
    delay: float = 0.0
    robots: object = ROBOTS_UNKNOWN  # ROBOTS_UNKNOWN/PENDING, a Protego parser, or _Refused


class HostGate:
    """Per-host in-flight limit, minimum gap between request starts, robots.txt rules."""

    def __init__(self, per_host: int | None, delay: float, robots: bool, user_agent: str):
        self.per_host = per_host
        self.delay = delay
        self.obey_robots = robots
        self.user_agent = user_agent
        self._hosts: dict[str, _Host] = {}
        self._lock = threading.Lock()
        self.peak_in_flight: dict[str, int] = {}

    # Pickling gives an independent copy (the lock is remade): an engine that
    # ships settings to other machines gets politeness per worker, not global.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _host(self, key: str) -> _Host:
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(delay=self.delay)
        return host

    def answer(self, ask):
        """Answer a fetch plan's :class:`~crawler.fetching.Ask` step."""
        return self.handle(ask.question, ask.args)

    def handle(self, question: str, args: tuple):
        if question not in QUESTIONS and question not in TELLS:
            raise ValueError(f"a politeness gate has no question {question!r}")
        return getattr(self, question)(*args)

    # --- limits -------------------------------------------------------------------------

    def try_start(self, key: str) -> float:
        """Start a request to ``key`` now (returns 0.0), or say how long to wait before asking again."""
        with self._lock:
            host = self._host(key)
            if self.per_host and host.in_flight >= self.per_host:
                return 0.01  # a slot frees when a response ends: poll soon
            now = time.monotonic()
            wait = host.last_start + host.delay - now
            if wait > 0:
                return wait
            host.in_flight += 1
            host.last_start = now
            self.peak_in_flight[key] = max(self.peak_in_flight.get(key, 0), host.in_flight)
            return 0.0

    def finish(self, key: str) -> None:
        with self._lock:
            self._host(key).in_flight -= 1

    # --- robots.txt ---------------------------------------------------------------------

    def robots(self, key: str) -> str:
        """:data:`ROBOTS_UNKNOWN` to exactly one caller per host (who then fetches it), pending until it is known."""
        if not self.obey_robots:
            return ROBOTS_KNOWN
        with self._lock:
            host = self._host(key)
            if host.robots == ROBOTS_UNKNOWN:
                host.robots = ROBOTS_PENDING
                return ROBOTS_UNKNOWN
            return ROBOTS_PENDING if host.robots == ROBOTS_PENDING else ROBOTS_KNOWN

    def learn_robots(self, key: str, status: int, text: str | None) -> None:
        """Record the robots.txt answer: 2xx rules, 4xx allow all, 5xx refuse all."""
        with self._lock:
            host = self._host(key)
            if 200 <= status < 300:
                rules = Protego.parse(text or "")
                host.robots = rules
                crawl_delay = rules.crawl_delay(self.user_agent)
                if crawl_delay:
                    host.delay = max(host.delay, float(crawl_delay))
            elif 400 <= status < 500:
                host.robots = Protego.parse("")  # the usual convention: no robots.txt, no rules
            else:
                host.robots = _Refused(f"robots.txt answered HTTP {status}: the host is treated as disallowed")

    def robots_failed(self, key: str, code: str, detail: str) -> None:
        """robots.txt could not be fetched (after retries): decided for the whole run.

        A host that cannot be reached at all (``dns``, ``connect``) gives its
        URLs that code; any other failure disallows the host, like a 5xx.
        """
        with self._lock:
            self._host(key).robots = _Refused(detail, code if code in ("dns", "connect") else "robots")

    def robots_abandoned(self, key: str) -> None:
        """The URL fetching robots.txt was stopped before an answer: the next one asks."""
        with self._lock:
            host = self._host(key)
            if host.robots == ROBOTS_PENDING:
                host.robots = ROBOTS_UNKNOWN

    def admit(self, key: str, url: str):
        """May ``url`` start now?  Robots.txt first, then the limits, in one question.

        :data:`ROBOTS_UNKNOWN` (the caller fetches robots.txt) or
        :data:`ROBOTS_PENDING` (wait) while the rules are not known; the
        (error code, detail) of a URL robots.txt refuses; else
        :meth:`try_start`'s answer: seconds to wait, or ``0.0``: started, and
        the caller must :meth:`finish`.
        """
        state = self.robots(key)
        if state != ROBOTS_KNOWN:
            return state
        return self.allowed(key, url) or self.try_start(key)

    def allowed(self, key: str, url: str) -> tuple[str, str] | None:
        """None if ``url`` may be fetched, else the (error code, detail) of its record."""
        if not self.obey_robots:
            return None
        with self._lock:
            rules = self._host(key).robots
        if isinstance(rules, _Refused):
            return rules.code, rules.reason
        if isinstance(rules, Protego) and not rules.can_fetch(url, self.user_agent):
            return "robots", "disallowed by robots.txt"
        return None

    def stats(self) -> dict:
        with self._lock:
            return {"hosts": len(self._hosts), "peak_in_flight_per_host": max(self.peak_in_flight.values(), default=0)}


class RemoteGate:
    """A :class:`HostGate` in the parent process, as a worker process asks it: through a :class:`GateServer`.

    Pickled into the workers' settings; each process connects on its first
    question.  Tells are sent without waiting for a reply.
    """

    def __init__(self, address, authkey: bytes):
        self.address = address
        self.authkey = authkey
        self._conn = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"address": self.address, "authkey": self.authkey}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["address"], state["authkey"])

    def answer(self, ask):
        with self._lock:
            if self._conn is None:
                self._conn = Client(self.address, authkey=self.authkey)
            self._conn.send((ask.question, ask.args))
            if ask.question not in QUESTIONS:
                return None
            reply = self._conn.recv()
        if isinstance(reply, _Failed):
            raise RuntimeError(f"politeness gate: {reply.detail}")
        return reply


@dataclass(frozen=True)
class _Failed:
    """The gate raised answering a question: the asker's plan gets the error (that URL's record), the server goes on."""

    detail: str


@dataclass
class _Held:
    """What one worker holds at the gate: given back when its connection ends (the worker died)."""

    in_flight: collections.Counter = field(default_factory=collections.Counter)
    robots: set = field(default_factory=set)  # hosts whose robots.txt it is fetching


class GateServer:
    """Answers the questions of worker processes' :class:`RemoteGate` from one :class:`HostGate`, in a thread.

    The connection is a Unix socket (a named pipe on Windows) with a random
    key: never the network.  ``remote`` goes into the workers' settings;
    :meth:`close` ends the threads.
    """

    def __init__(self, gate: HostGate):
        self.gate = gate
        authkey = os.urandom(32)
        self._listener = Listener(authkey=authkey)
        self.remote = RemoteGate(self._listener.address, authkey)
        self._wake_reader, self._wake_writer = Pipe(duplex=False)
        self._arrived: list = []
        self._closed = False
        self._threads = [
            threading.Thread(target=self._accept, name="crawl-gate-accept", daemon=True),
            threading.Thread(target=self._serve, name="crawl-gate", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except Exception:  # a peer gone mid-handshake (a worker killed), a wrong key; or closed
                if self._closed:
                    return
                continue
            if self._closed:
                conn.close()
                return
            self._arrived.append(conn)
            self._wake_writer.send_bytes(b"")

    def _serve(self) -> None:
        held: dict = {}
        while True:
            for conn in wait([self._wake_reader, *held]):
                if conn is self._wake_reader:
                    conn.recv_bytes()
                    if self._closed:
                        for other in held:
                            other.close()
                        return
                    while self._arrived:
                        held[self._arrived.pop()] = _Held()
                    continue
                try:
                    question, args = conn.recv()
                except (EOFError, OSError):
                    self._give_back(held.pop(conn))
                    conn.close()
                    continue
                try:
                    answer = self._answer(held[conn], question, args)
                except Exception as exc:  # as a local gate's error would: one record, not every worker hung
                    answer = _Failed(f"{type(exc).__name__}: {exc}")
                if question in QUESTIONS:
                    try:
                        conn.send(answer)
                    except OSError:
                        pass  # the worker is gone: its end is read next

    def _answer(self, held: _Held, question: str, args: tuple):
        answer = self.gate.handle(question, args)
        key = args[0]
        if question in ("try_start", "admit") and answer == 0.0:
            held.in_flight[key] += 1
        elif question == "finish":
            held.in_flight[key] -= 1
        elif question == "admit" and answer == ROBOTS_UNKNOWN:
            held.robots.add(key)
        elif question in ("learn_robots", "robots_failed", "robots_abandoned"):
            held.robots.discard(key)
        return answer

    def _give_back(self, held: _Held) -> None:
        for key, count in held.in_flight.items():
            for _ in range(count):
                self.gate.finish(key)
        for key in held.robots:
            self.gate.robots_abandoned(key)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake_writer.send_bytes(b"")
        try:  # accept() does not end when its socket is closed under it: knock once, with no
            Client(self.remote.address).close()  # key, so that nothing here waits for a handshake
        except OSError:
            pass
        self._listener.close()
        for thread in self._threads:
            thread.join(5)
