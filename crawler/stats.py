"""Per-engine-run statistics: counters, a latency histogram, CPU and memory.

One :class:`RunStats` per engine run (after Scrapy's ``StatsCollector``);
:mod:`crawler.report` formats what :meth:`RunStats.summary` returns.
Nothing here grows with the URL list: latencies go into a fixed histogram.
"""

from __future__ import annotations

import math
import resource
import threading
import time
from collections import Counter

import psutil

from .fetching import ERROR_CODES


class LatencyHistogram:
    """Log-bucketed histogram (1 % wide buckets): percentiles in bounded memory."""

    GROWTH = 1.01

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.max = 0.0

    def add(self, ms: float) -> None:
        self.count += 1
        self.max = max(self.max, ms)
        self.buckets[math.floor(math.log(max(ms, 0.01), self.GROWTH))] += 1

    def percentile(self, p: float) -> float:
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * p / 100))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                # upper edge of the bucket, but never above the exact maximum
                return min(self.GROWTH ** (bucket + 1), self.max)
        return self.max


class MemorySampler:
    """Samples the RSS of this process plus its children (minus ``exclude``)."""

    def __init__(self, exclude: frozenset[int] = frozenset(), interval: float = 0.1):
        self.exclude = exclude
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crawl-rss", daemon=True)
        self._me = psutil.Process()

    def sample(self) -> None:
        total = self._me.memory_info().rss
        for child in self._me.children(recursive=True):
            if child.pid in self.exclude:
                continue
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass  # ended between listing and reading
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def cpu_seconds() -> float:
    """User+sys CPU of this process and of its children already reaped."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _machine_cpu_s() -> float:
    """CPU seconds every core of the machine has spent busy (not idle, not waiting for I/O) since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class CpuMeter:
    """CPU of this process and every process under it, minus ``exclude`` (the demo site).

    Worker processes are often grandchildren (a forkserver's children): their
    CPU shows in no rusage of ours, so the live descendants are read one by
    one, each with what its own reaped children used.
    """

    def __init__(self, exclude: frozenset[int] = frozenset()):
        self.exclude = exclude
        self._me = psutil.Process()
        self._own = 0.0
        self._descendants: dict[int, float] = {}

    def _read(self) -> tuple[float, dict[int, float]]:
        descendants = {}
        for child in self._me.children(recursive=True):
            if child.pid in self.exclude:
                continue
            try:
                t = child.cpu_times()
            except psutil.Error:
                continue  # ended between listing and reading: its parent's rusage has it
            descendants[child.pid] = t.user + t.system + t.children_user + t.children_system
        return cpu_seconds(), descendants

    def start(self) -> None:
        self._own, self._descendants = self._read()

    def elapsed(self) -> float:
        own, descendants = self._read()
        return own - self._own + sum(cpu - self._descendants.get(pid, 0.0) for pid, cpu in descendants.items())


class RunStats:
    """Everything the report says about one engine's run."""

    def __init__(self, engine: str, exclude_pids: frozenset[int] = frozenset()):
        self.engine = engine
        self.lines_read = 0
        self.skipped = 0
        self.records = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.bytes = 0
        self.latency = LatencyHistogram()
        self.parse_cpu_s = 0.0
        self.parsed_pages = 0
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.peak_rss_mb = 0.0
        self.interrupted = False
        self.concurrency = 0
        self.pulled = 0  # URLs handed to the engine (list lines not skipped, and followed links)
        self.taken_back = 0  # results the engine has returned
        self.links: dict | None = None  # link following: discovered, queued, deduplicated
        self.peak_read_ahead = 0  # most URLs handed to the engine and not yet given back
        self.fetches_in_processes = False  # the engine's fetching can use every core (the verdict's yardstick)
        self.fetch_s = 0.0  # all fetch times added up: over the wall time, the mean requests in flight
        self.machine_cpu_s = 0.0  # every process on the machine, this run's and others' (a busy machine shows here)
        self.first_byte = LatencyHistogram()  # ms from a request's start to its status line
        self.peak_parse_backlog = 0
        self.parse_wait_s = 0.0
        self.accounting_error: str | None = None
        self.politeness: dict | None = None  # hosts seen, most requests in flight to one host
        self.engine_stats: dict | None = None  # what the engine's fetch() returned, if a dict
        self._started = 0.0
        self._cpu = CpuMeter(exclude_pids)

    def start(self) -> None:
        self._started = time.perf_counter()
        self._cpu.start()
        self._machine = _machine_cpu_s()

    def stop(self) -> None:
        self.wall_s = time.perf_counter() - self._started
        self.cpu_s = self._cpu.elapsed()
        self.machine_cpu_s = max(_machine_cpu_s() - self._machine, 0.0)

    def returned(self) -> None:
        """The engine gave a result back; what it still holds was read ahead (queued or in flight)."""
        self.peak_read_ahead = max(self.peak_read_ahead, self.pulled - self.taken_back)
        self.taken_back += 1

    def record(self, record: dict, first_byte_s: float | None = None) -> None:
        self.records += 1
        if record["ok"]:
            self.ok += 1
        else:
            self.errors[record["error"] or "other"] += 1
        self.bytes += record["bytes"]
        self.latency.add(record["fetch_ms"])
        self.fetch_s += record["fetch_ms"] / 1000
        if first_byte_s is not None:
            self.first_byte.add(first_byte_s * 1000)

    @property
    def peak_in_flight(self) -> int | None:
        """Requests in flight at once at most, as the engine counted them (None if it does not say)."""
        peak = (self.engine_stats or {}).get("peak_in_flight")
        return int(peak) if isinstance(peak, (int, float)) else None

    @property
    def remote_cpu_s(self) -> float:
        """CPU an engine spent outside this machine's process tree (e.g. on cluster workers), if it can tell."""
        return float((self.engine_stats or {}).get("remote_cpu_s") or 0.0)

    def check_accounting(self) -> None:
        """Every line read and not skipped must have exactly one record: anything else is a bug."""
        followed = self.followed_taken()
        expected = self.lines_read - self.skipped + followed
        if self.records != expected or self.ok + sum(self.errors.values()) != self.records:
            self.accounting_error = (
                f"{self.records} records ({self.ok} ok + {sum(self.errors.values())} failed) "
                f"for {self.lines_read} lines read - {self.skipped} skipped + {followed} links followed = {expected}"
            )

    def followed_taken(self) -> int:
        """Followed links handed to the engine so far."""
        return self.pulled - (self.lines_read - self.skipped)

    def summary(self) -> dict:
        """The §7 figures, unrounded: the table rounds them, the JSON report keeps them as measured."""
        wall = self.wall_s or 1e-9  # a run too short to time still divides
        failed = self.records - self.ok
        return {
            "engine": self.engine,
            "urls": self.records,
            "ok": self.ok,
            "failed": failed,
            "errors": {  # SPEC's codes in SPEC's order, then any other code a plugin gave
                **{code: self.errors[code] for code in ERROR_CODES if self.errors[code]},
                **{str(code): n for code, n in self.errors.items() if code not in ERROR_CODES and n},
            },
            "lines_read": self.lines_read,
            "skipped": self.skipped,
            "wall_s": self.wall_s,
            "pages_per_s": self.ok / wall,
            "mb_per_s": self.bytes / 1e6 / wall,
            "fetch_ms": {
                "p50": self.latency.percentile(50),
                "p95": self.latency.percentile(95),
                "p99": self.latency.percentile(99),
                "max": self.latency.max,
            },
            "parse_cpu_s": self.parse_cpu_s,
            "cpu_s": self.cpu_s + self.remote_cpu_s,
            "peak_rss_mb": self.peak_rss_mb,
            "concurrency": self.concurrency,
            "client_cores": self.cpu_s / wall,
            "peak_in_flight": self.peak_in_flight,
            "mean_in_flight": self.fetch_s / wall,
            "peak_read_ahead": self.peak_read_ahead,
            "first_byte_ms": {"p50": self.first_byte.percentile(50), "p95": self.first_byte.percentile(95)}
            if self.first_byte.count
            else None,
            "fetches_in_processes": self.fetches_in_processes,
            "machine_cpu_s": self.machine_cpu_s,
            "peak_parse_backlog": self.peak_parse_backlog,
            "parse_wait_s": self.parse_wait_s,
            "interrupted": self.interrupted,
            "politeness": self.politeness,
            "links": self.links,
            "engine_stats": self.engine_stats,
            "accounting_error": self.accounting_error,
        }
