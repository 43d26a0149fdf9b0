"""Being a good citizen of other people's servers, once for every engine.

A :class:`HostGate` holds, per host (hostname and port), the requests in
flight, when the last one started, and what its robots.txt says.  The
shared fetch policy (:func:`crawler.fetching.fetch_plan`) asks it before
every exchange, and waits with the ``Sleep`` steps every engine already
knows how to perform, so no engine carries its own copy of these rules.

The gate is plain, thread-safe Python; engines that fetch in several
processes get it behind a ``multiprocessing`` manager (see
:func:`shared_gate`), so that the limits hold across all their workers.
"""

from __future__ import annotations

import threading
import time
from multiprocessing.managers import BaseManager
from dataclasses import dataclass

from protego import Protego

from .processes import follow_parent, start_context

# What :meth:`HostGate.robots` tells the fetch policy about a host's robots.txt.
ROBOTS_UNKNOWN = "unknown"  # nobody has fetched it yet: the caller must
ROBOTS_PENDING = "pending"  # another request is fetching it: wait
ROBOTS_KNOWN = "known"


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


class GateManager(BaseManager):
    """Serves one :class:`HostGate` to every worker process of an engine."""


GateManager.register("HostGate", HostGate)


def shared_gate(per_host: int | None, delay: float, robots: bool, user_agent: str):
    """A :class:`HostGate` served by a manager process, for engines whose workers are processes.

    Returns ``(gate_proxy, manager)``; shut the manager down after the run.
    """
    manager = GateManager(ctx=start_context())
    manager.start(initializer=follow_parent)  # a kill -9 of the crawl takes the manager with it
    return manager.HostGate(per_host, delay, robots, user_agent), manager
