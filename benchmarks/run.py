"""The benchmark suite: every engine against bare reference loops and Scrapy, on one real server.

    python benchmarks/run.py                 # 5,000 pages, 3 interleaved rounds, every scenario
    python benchmarks/run.py --quick         # 1,000 pages (parse stage: 500; latency: 1,000 URLs), 1 round: a smoke run (< 3 minutes)
    python benchmarks/run.py --scenarios fetch,latency --rounds 5

The server: nginx when it is installed (the synthetic site's pages written to
a temporary directory, a minimal nginx.conf on a free loopback port,
keep-alive on, access log off), else the built-in aiohttp site
(``crawler.site``); the output says which.  The ``latency`` scenario always
uses the aiohttp site, which can wait before each response; nginx cannot.

Scenarios (``--scenarios``, default all four):

* ``fetch``: fast server, concurrency 64, fetch only: every engine as
  ``crawl URLFILE -e X -c 64 --no-parse --out tmp.jsonl --report tmp.json -q``
  (records written), the bare loops (``bare_aiohttp.py``, ``bare_h11.py``,
  ``bare_threads.py``, ``bare_pool.py``), Scrapy fetch-only, and wrk (the
  machine's HTTP ceiling) when it is installed;
* ``latency``: the aiohttp site with a 50 ms delay per response, 3,000 URLs
  (``--latency-urls``) at concurrency 50 (ideal: 1,000 pages/s): engines,
  bare loops, Scrapy; threads and pool against their bare loops (each side
  timed by its own clock, which for pool and bare_pool includes creating the
  Pool), and every engine against the ideal;
* ``parse``: the parse stage alone: ``crawler.parse.parse_batch`` over the
  site's pages through ``ProcessPoolExecutor(1)`` and ``(2)`` (batches of 32,
  as the pipeline sends them); CPU ms per page as the workers measure it;
* ``pipeline``: every engine with parsing on (2 parse workers) against
  0.85 × min(its fetch-only pages/s, the parse stage's pages/s), both taken
  from the same round (fetch-only from the ``fetch`` scenario when it ran,
  else measured here; the parse stage, 2 workers, measured in every round
  here), and Scrapy with title + links extracted; asyncio against Scrapy
  both on their own timings and on the whole process (pages per second of
  the contestant's process, start-up and teardown included).

Rounds are interleaved: round 1 of every contestant, then round 2, and so on,
so that a slow spell of the machine hits every contestant alike.  The table
shows medians, every round's figure and, for each target of issues 6 and
13 (each labelled with its issue), the per-round ratio (both sides from the
same round), its median and whether it is met.  Every contestant process
runs under ``cputree.py``: the CPU of its whole tree and the wall time of
the whole process are recorded too (``process_wall_s``,
``process_pages_per_s``, ``tree_wall_s``, ``process_cpu_s`` in the JSON).
``--json`` (default ``benchmarks/results/latest.json``) keeps every raw
figure and the machine; ``--chart`` (default
``benchmarks/results/latest.png``) draws median pages/s per contestant.

Everything is bounded: each contestant is a subprocess with a timeout (its
whole process group is killed past it), the number of rounds is fixed, and
``--budget`` minutes (default 20; 3 with ``--quick``) stop a run between
contestants, saying what was skipped.  Every request goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout: the crawler package is next door

from crawler.site import SyntheticSite, serve_in_subprocess  # noqa: E402

ENGINES = ("asyncio", "yield", "threads", "pool")
BARE = {  # bare loop -> the engine whose concurrency it uses
    "bare_aiohttp": "asyncio",
    "bare_h11": "yield",
    "bare_threads": "threads",
    "bare_pool": "pool",
}
BARE_FOR = {  # bare loop -> the engines it is a reference for (run when one of them is)
    "bare_aiohttp": ("asyncio", "yield"),
    "bare_h11": ("yield",),
    "bare_threads": ("threads",),
    "bare_pool": ("pool",),
}
SCENARIOS = ("fetch", "latency", "parse", "pipeline")
# Targets engine / reference >= need, on the runs' own timings (the crawl report's wall_s; the loop's own clock):
# (engine, reference, need, issue[, label suffix]).
FETCH_TARGETS = (
    ("asyncio", "bare_aiohttp", 0.9, "6, 13"),
    ("yield", "bare_aiohttp", 1.0, "6, 13"),
    ("threads", "bare_threads", 1.0, "6"),
    ("pool", "bare_pool", 1.0, "6"),
    ("asyncio", "scrapy_fetch", 8.0, "6"),
)
# Both sides of the pool target include creating their Pool: bare_pool.py starts its clock before
# multiprocessing.Pool(N); the pool engine creates its Pool inside fetch(), which the crawl calls
# between the start and the end of its report's wall_s (stats.start() / stop() in crawler/pipeline.py).
LATENCY_TARGETS = (
    ("threads", "bare_threads", 0.95, "13"),
    ("pool", "bare_pool", 0.9, "13", ", Pool start-up in both"),
)
LATENCY_IDEAL_NEEDS = {"asyncio": 0.9, "yield": 0.9, "threads": 0.8, "pool": 0.7}  # issue 6
# Whole process on both sides (start-up, imports, teardown included): pages / the process's wall time.
PIPELINE_WHOLE_PROCESS_TARGETS = (("asyncio+parse", "scrapy_extract", 3.5, "13", ", whole process"),)
PARSE_BATCH = 32  # pages per parse_batch call, as crawler.pipeline.RunOptions.batch_size
LATENCY_S = 0.05


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Measurements of one contestant
# ---------------------------------------------------------------------------


def children_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


CPUTREE_LINE = re.compile(r"cputree: cpu_s=([\d.]+) wall_s=([\d.]+) exit_s=([\d.]+)$")  # cputree.py --print, last line


@dataclass
class Proc:
    """One contestant's process, run under cputree.py: its outcome and its whole-process figures."""

    code: object  # returncode, or "timeout"
    out: str
    err: str  # without cputree's line
    exit_s: float  # wall s from starting the command to its exit: the whole process, start-up included
    tree_wall_s: float  # ... to the last process it left behind reaped (a forkserver, say)
    cpu_s: float  # CPU s of the whole process tree, start-up included

    def figures(self, pages: int) -> dict:
        """The whole-process figures every contestant's record carries (see --json)."""
        return {
            "process_wall_s": round(self.exit_s, 3),
            "tree_wall_s": round(self.tree_wall_s, 3),
            "process_pages_per_s": round(pages / self.exit_s, 1) if self.exit_s > 0 else None,
            "process_cpu_s": round(self.cpu_s, 3),
            "tree_cpu_ms_per_page": round(1000 * self.cpu_s / max(pages, 1), 3),
        }


def run_process(argv: list[str], timeout: float) -> Proc:
    """Run ``argv`` in its own process group, under cputree.py; its outcome and whole-process figures.

    The CPU seconds are those of the whole process tree, start-up included:
    ``argv`` runs under cputree.py, which also reaps the processes it left
    behind (a multiprocessing forkserver and, through it, pool workers).  The
    wall times are cputree's (from starting ``argv`` to its exit, and to the
    last process reaped), so they leave out the wrapper's own start-up; when
    cputree could not say (killed at the timeout), the time measured here.
    """
    argv = [sys.executable, str(HERE / "cputree.py"), "--print", "--", *argv]
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: object = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        code = "timeout"
    except BaseException:
        kill_group(proc)
        proc.communicate()
        raise
    finally:
        kill_group(proc, only_leftovers=True)
    outer, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    lines = err.splitlines()
    found = CPUTREE_LINE.search(lines[-1]) if lines else None
    if found:  # (after the command's own stderr, on the same line if that did not end with a newline)
        err = "\n".join([*lines[:-1], lines[-1][:found.start()]]).rstrip("\n")
        return Proc(code, out, err, float(found.group(3)), float(found.group(2)), cpu)
    return Proc(code, out, err, outer, outer, cpu)


def kill_group(proc: subprocess.Popen, only_leftovers: bool = False) -> None:
    """SIGTERM, then SIGKILL, to the process group we created for ``proc`` (its forked workers included)."""
    try:
        pgid = proc.pid  # start_new_session: the child leads its own group
        if only_leftovers:
            os.killpg(pgid, signal.SIGKILL)  # (a worker that outlived its parent; usually none)
            return
        os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def failure(code: object, err: str) -> dict:
    tail = " | ".join(line for line in err.strip().splitlines()[-3:])
    return {"error": f"exit {code}: {tail[-300:]}" if code != "timeout" else "timed out"}


def crawl(ctx: "Bench", engine: str, urlfile: str, urls: int, concurrency: int, parse: bool) -> dict:
    tag = f"{engine}-{'parse' if parse else 'fetch'}-{concurrency}"
    out, report = ctx.work / f"{tag}.jsonl", ctx.work / f"{tag}.json"
    for path in (out, report):
        path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "crawler", urlfile, "-e", engine, "-c", str(concurrency), "--out", str(out), "--report", str(report), "-q"]
    argv += ["--parse-workers", "2"] if parse else ["--no-parse"]
    proc = run_process(argv, ctx.timeout(urls))
    if proc.code != 0 or not report.exists():
        return failure(proc.code, proc.err)
    [summary] = json.loads(report.read_text())["engines"]
    with open(out, "rb") as handle:
        records = sum(1 for _ in handle)
    ok = summary["ok"]
    figures = {
        "pages": ok,
        "urls": summary["urls"],
        "records": records,
        "seconds": summary["wall_s"],
        "pages_per_s": summary["pages_per_s"],
        "cpu_s": summary["cpu_s"],
        "cpu_ms_per_page": round(1000 * summary["cpu_s"] / max(ok, 1), 3),
        "parse_cpu_s": summary["parse_cpu_s"],
        "client_cpu_ms_per_page": round(1000 * (summary["cpu_s"] - summary["parse_cpu_s"]) / max(ok, 1), 3),
        "parse_wait_s": summary.get("parse_wait_s"),
        "fetch_ms": summary["fetch_ms"],
        "errors": summary["errors"],
        "peak_rss_mb": summary["peak_rss_mb"],
        **proc.figures(ok),
    }
    if ok < urls or records != urls:
        figures["note"] = f"{ok}/{urls} ok, {records} records"
    return figures


def script(ctx: "Bench", name: str, urlfile: str, urls: int, concurrency: int, *extra: str) -> dict:
    argv = [sys.executable, str(HERE / f"{name}.py"), urlfile, "-c", str(concurrency), *extra]
    proc = run_process(argv, ctx.timeout(urls))
    lines = [line for line in proc.out.splitlines() if line.startswith("{")]
    if proc.code != 0 or not lines:
        return failure(proc.code, proc.err)
    figures = json.loads(lines[-1])
    figures.update(proc.figures(figures["pages"]))
    if figures["pages"] < urls:
        figures["note"] = f"{figures['pages']}/{urls} ok"
    return figures


WRK_LUA = """\
local n = 0
request = function()
  n = (n + 1) %% %d
  return wrk.format("GET", "/page/" .. n)
end
"""


def wrk(ctx: "Bench", base_url: str, pages: int, concurrency: int, seconds: int) -> dict:
    lua = ctx.work / "pages.lua"
    lua.write_text(WRK_LUA % pages)
    threads = min(2, os.cpu_count() or 1)
    argv = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "-s", str(lua), base_url + "/"]
    proc = run_process(argv, seconds + 30)
    out, process_cpu = proc.out, proc.cpu_s
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if proc.code != 0 or not done:
        return failure(proc.code, proc.err or out)
    requests, elapsed = int(done.group(1)), float(done.group(2)) / (1000 if done.group(3) == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    pages = requests - (int(bad.group(1)) if bad else 0)
    return {
        "pages": pages, "urls": requests, "seconds": elapsed, "pages_per_s": round(pages / elapsed, 1),
        "cpu_s": round(process_cpu, 3), "cpu_ms_per_page": round(1000 * process_cpu / max(pages, 1), 4),
        "threads": threads, **proc.figures(pages),
        "tree_cpu_ms_per_page": round(1000 * process_cpu / max(pages, 1), 4),
    }


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server not listening on port {port} after {seconds:g} s")


def nginx_version() -> str:
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=10)
    found = re.search(r"nginx/(\S+)", out.stderr + out.stdout)
    return found.group(1) if found else "?"


NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log error;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    types {{ text/plain txt; }}
    default_type "text/html; charset=utf-8";
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root}/www;
        location / {{ try_files $uri =404; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(site: SyntheticSite, workdir: Path, workers: int):
    """The site's pages as static files (``/page/N``, ``/robots.txt``) served by nginx on loopback."""
    root = workdir / "nginx"
    (root / "www" / "page").mkdir(parents=True)
    (root / "tmp").mkdir()
    for n in range(site.pages):
        (root / "www" / "page" / str(n)).write_bytes(site.page(n))
    (root / "www" / "robots.txt").write_bytes(b"User-agent: *\nAllow: /\n")
    for path in (workdir, root, root / "www", root / "www" / "page"):
        path.chmod(0o755)  # workers run as nobody when nginx starts as root
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, root=root, port=port))
    proc = subprocess.Popen(
        ["nginx", "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        try:
            wait_listening(port, proc)
        except RuntimeError as exc:
            log_text = (root / "error.log").read_text() if (root / "error.log").exists() else ""
            raise RuntimeError(f"nginx: {exc}\n{proc.stderr.read().decode() if proc.poll() is not None else ''}{log_text}") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        kill_group(proc)
        proc.wait()


# ---------------------------------------------------------------------------
# The bench: contestants, rounds, targets
# ---------------------------------------------------------------------------


@dataclass
class Target:
    label: str
    need: float
    at_most: bool = False  # "≤ need" instead of "≥ need"
    rounds: list = field(default_factory=list)  # one value (or None) per round
    issue: str = "6"  # the issue whose table sets this target ("6, 13": both)

    @property
    def title(self) -> str:
        """The label as printed: which issue's target it is, e.g. ``asyncio / bare_aiohttp (issues 6, 13)``."""
        return f"{self.label} (issue{'s' if ',' in self.issue else ''} {self.issue})"

    @property
    def median(self) -> float | None:
        values = [v for v in self.rounds if v is not None]
        return statistics.median(values) if values else None

    def verdict(self) -> str:
        m = self.median
        if m is None:
            return "n/a"
        if (m <= self.need) if self.at_most else (m >= self.need):
            return "met"
        miss = (m - self.need) / self.need if self.at_most else (self.need - m) / self.need
        return f"MISSED by {miss:.0%}"

    def as_dict(self) -> dict:
        return {"target": self.title, "issue": self.issue, "need": ("<= " if self.at_most else ">= ") + f"{self.need:g}",
                "rounds": self.rounds, "median": self.median, "verdict": self.verdict()}


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.started = time.monotonic()
        self.deadline = self.started + 60 * args.budget
        self.work = Path(tempfile.mkdtemp(prefix="crawler-bench-"))
        self.results: dict[str, dict] = {}
        self.skipped: list[str] = []
        self.site: SyntheticSite | None = None
        self.server: str | None = None
        self.base_url: str | None = None
        self.urlfile: str | None = None
        self.stack = contextlib.ExitStack()

    def bare_loops(self) -> list[tuple[str, str]]:
        """(bare loop, engine whose concurrency it takes) for the engines being measured."""
        return [(loop, BARE[loop]) for loop, engines in BARE_FOR.items() if set(engines) & set(self.engines)]

    def timeout(self, urls: int) -> float:
        """Seconds a contestant may take: 60 s plus 20 ms per URL (that is, down to ~50 pages/s)."""
        return 60 + urls / 50

    def over_budget(self) -> bool:
        return time.monotonic() > self.deadline

    # -- pages and the server -------------------------------------------------------

    def pages(self) -> SyntheticSite:
        if self.site is None:
            t0 = time.perf_counter()
            self.site = SyntheticSite(pages=self.args.pages, seed=0, mean_kb=30.0)
            self.site.generate_all()
            log(f"generated {self.args.pages:,} pages in {time.perf_counter() - t0:.1f} s")
        return self.site

    def fast_server(self) -> str:
        """Start (once) the fast server for fetch and pipeline; return its base URL."""
        if self.base_url:
            return self.base_url
        use_nginx = self.args.server == "nginx" or (self.args.server == "auto" and shutil.which("nginx"))
        if use_nginx:
            try:
                self.base_url = self.stack.enter_context(nginx_server(self.pages(), self.work, self.args.nginx_workers))
                self.server = f"nginx {nginx_version()} (worker_processes {self.args.nginx_workers}, static files, keep-alive)"
            except (RuntimeError, OSError) as exc:
                if self.args.server == "nginx":
                    raise
                log(f"nginx would not start, using the built-in aiohttp site instead: {exc}")
                shutil.rmtree(self.work / "nginx", ignore_errors=True)
        if not self.base_url:
            site = self.stack.enter_context(serve_in_subprocess(pages=self.args.pages, seed=0, delay=0.0, mean_kb=30.0))
            self.base_url = site.base_url
            self.server = "aiohttp (built-in site)" + ("" if shutil.which("nginx") else "; nginx not installed")
        self.urlfile = self.write_urls("fast", self.base_url, self.args.pages)
        log(f"server: {self.server} at {self.base_url}")
        return self.base_url

    def write_urls(self, name: str, base_url: str, count: int) -> str:
        path = self.work / f"urls-{name}.txt"
        path.write_text("".join(f"{base_url}/page/{n}\n" for n in range(count)))
        return str(path)

    # -- rounds ---------------------------------------------------------------------

    def interleave(self, scenario: str, contestants: list[tuple[str, Callable[[], dict]]]) -> dict[str, list]:
        """Round 1 of every contestant, then round 2, ...; {name: [figures per round]}."""
        rounds = self.args.rounds
        runs: dict[str, list] = {name: [None] * rounds for name, _ in contestants}
        for r in range(rounds):
            for name, measure in contestants:
                if self.over_budget():
                    note = f"{scenario}: round {r + 1} from {name} on skipped (--budget {self.args.budget:g} min spent)"
                    self.skipped.append(note)
                    log(note)
                    return runs
                try:
                    figures = measure()
                except Exception as exc:  # one broken contestant must not lose the others' figures
                    figures = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                runs[name][r] = figures
                if "error" in figures:
                    log(f"[{scenario}] round {r + 1}/{rounds} {name}: FAILED {figures['error']}")
                else:
                    log(f"[{scenario}] round {r + 1}/{rounds} {name}: {figures['pages_per_s']:,.0f} pages/s, "
                        f"{figures['cpu_ms_per_page']:.2f} ms CPU/page" + (f" ({figures['note']})" if figures.get("note") else ""))
        return runs


def pps(runs: dict, name: str, r: int, key: str = "pages_per_s") -> float | None:
    """``name``'s figure ``key`` (pages/s by default) in round ``r``; None if it failed or did not run."""
    figures = (runs.get(name) or [None] * (r + 1))[r]
    if not figures or "error" in figures:
        return None
    return figures.get(key)


def median_of(runs: dict, name: str, key: str = "pages_per_s") -> float | None:
    values = [f[key] for f in runs.get(name, []) if f and "error" not in f and f.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def pair_targets(ctx: Bench, runs: dict, specs: tuple, key: str = "pages_per_s") -> list[Target]:
    """Targets ``a / b >= need``, each round's ratio from that round's figures ``key`` of both.

    ``specs``: (a, b, need, issue) or (a, b, need, issue, label suffix); a
    spec whose engine is not measured, or whose reference did not run, is left out.
    """
    targets = []
    for a, b, need, issue, *suffix in specs:
        if a.split("+")[0] not in ctx.engines or b not in runs:
            continue
        target = Target(f"{a} / {b}" + "".join(suffix), need, issue=issue)
        target.rounds = [ratio(pps(runs, a, r, key), pps(runs, b, r, key)) for r in range(ctx.args.rounds)]
        targets.append(target)
    return targets


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


def scrapy_available() -> bool:
    try:
        return importlib.util.find_spec("scrapy") is not None
    except (ImportError, ValueError):
        return False


def scenario_fetch(ctx: Bench) -> dict:
    base = ctx.fast_server()
    n, c = ctx.args.pages, ctx.args.concurrency
    pc = ctx.args.pool_concurrency or c
    contestants = []
    for engine in ctx.engines:
        contestants.append((engine, lambda e=engine: crawl(ctx, e, ctx.urlfile, n, pc if e == "pool" else c, parse=False)))
    for loop, engine in ctx.bare_loops():
        contestants.append((loop, lambda l=loop, e=engine: script(ctx, l, ctx.urlfile, n, pc if e == "pool" else c)))
    if ctx.scrapy:
        contestants.append(("scrapy_fetch", lambda: script(ctx, "scrapy_bench", ctx.urlfile, n, c, "--mode", "fetch")))
    if shutil.which("wrk") and not ctx.args.no_wrk:
        contestants.append(("wrk", lambda: wrk(ctx, base, n, c, 2 if ctx.args.quick else 4)))
    runs = ctx.interleave("fetch", contestants)
    targets = pair_targets(ctx, runs, FETCH_TARGETS)
    return {
        "title": f"fetch: {n:,} pages, concurrency {c}" + (f" (pool and bare_pool: {pc})" if pc != c else "")
        + ", fetch only (engines: --no-parse --out records.jsonl)",
        "chart_title": f"fetch only, fast server: {n:,} pages, concurrency {c}" + (f" (pool: {pc})" if pc != c else ""),
        "server": ctx.server, "pages": n, "concurrency": c, "pool_concurrency": pc,
        "runs": runs, "targets": targets,
    }


def scenario_latency(ctx: Bench) -> dict:
    n, c = ctx.args.latency_urls, ctx.args.latency_concurrency
    pc = ctx.args.pool_concurrency_latency or c
    server = f"aiohttp (built-in site, {LATENCY_S * 1000:g} ms before each response)"
    ideal = c / LATENCY_S
    with serve_in_subprocess(pages=min(n, 1000), seed=0, delay=LATENCY_S, mean_kb=30.0) as site:
        log(f"latency server: {server} at {site.base_url}")
        urlfile = ctx.write_urls("latency", site.base_url, n)
        contestants = []
        for engine in ctx.engines:
            contestants.append((engine, lambda e=engine: crawl(ctx, e, urlfile, n, pc if e == "pool" else c, parse=False)))
        for loop, engine in ctx.bare_loops():
            contestants.append((loop, lambda l=loop, e=engine: script(ctx, l, urlfile, n, pc if e == "pool" else c)))
        if ctx.scrapy:
            contestants.append(("scrapy_fetch", lambda: script(ctx, "scrapy_bench", urlfile, n, c, "--mode", "fetch")))
        runs = ctx.interleave("latency", contestants)
    targets = pair_targets(ctx, runs, LATENCY_TARGETS)
    for engine in (e for e in ENGINES if e in ctx.engines):
        target = Target(f"{engine} / ideal of {ideal:,.0f} pages/s", LATENCY_IDEAL_NEEDS[engine])
        target.rounds = [ratio(pps(runs, engine, r), ideal) for r in range(ctx.args.rounds)]
        targets.append(target)
    return {
        "title": f"latency: {n:,} URLs, {LATENCY_S * 1000:g} ms per response, concurrency {c}"
        + (f" (pool and bare_pool: {pc})" if pc != c else "") + f", fetch only; ideal {ideal:,.0f} pages/s",
        "chart_title": f"latency: {LATENCY_S * 1000:g} ms per response, {n:,} URLs, concurrency {c}; dashed: ideal",
        "server": server, "pages": n, "concurrency": c, "ideal_pages_per_s": ideal,
        "runs": runs, "targets": targets,
    }


def parse_stage(items: list, workers: int) -> dict:
    """parse_batch over ``items`` through a ProcessPoolExecutor(workers), as the pipeline runs it."""
    from crawler import parse

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=parse.init_worker) as executor:
        for future in [executor.submit(parse.parse_batch, items[:2]) for _ in range(workers)]:
            future.result()  # workers started and imported before the clock starts
        t0 = time.perf_counter()
        futures = [executor.submit(parse.parse_batch, items[i:i + PARSE_BATCH]) for i in range(0, len(items), PARSE_BATCH)]
        pages = cpu = 0.0
        for future in futures:
            outcomes, spent = future.result(timeout=600)
            pages += sum(isinstance(o, dict) for o in outcomes)
            cpu += spent
        wall = time.perf_counter() - t0
    return {
        "workers": workers, "pages": int(pages), "urls": len(items), "seconds": round(wall, 3),
        "pages_per_s": round(pages / wall, 1), "cpu_s": round(cpu, 3), "cpu_ms_per_page": round(1000 * cpu / max(pages, 1), 3),
    }


def parse_items(ctx: Bench) -> list:
    site = ctx.pages()
    count = min(ctx.args.parse_pages or site.pages, site.pages)
    base = "http://127.0.0.1:8000"
    return [(f"{base}/page/{n}", site.page(n), "text/html; charset=utf-8") for n in range(count)]


def scenario_parse(ctx: Bench) -> dict:
    items = parse_items(ctx)
    runs = ctx.interleave("parse", [
        ("parse_1_worker", lambda: parse_stage(items, 1)),
        ("parse_2_workers", lambda: parse_stage(items, 2)),
    ])
    cpu = Target("parse CPU ms/page (2 workers' runs)", 1.5, at_most=True)
    scaling = Target("2 workers / 1 worker", 1.8)
    for r in range(ctx.args.rounds):
        f2 = runs["parse_2_workers"][r]
        cpu.rounds.append(f2["cpu_ms_per_page"] if f2 and "error" not in f2 else None)
        scaling.rounds.append(ratio(pps(runs, "parse_2_workers", r), pps(runs, "parse_1_worker", r)))
    return {
        "title": f"parse: the parse stage alone, {len(items):,} site pages, parse_batch of {PARSE_BATCH} through ProcessPoolExecutor",
        "pages": len(items), "runs": runs, "targets": [cpu, scaling],
    }


def scenario_pipeline(ctx: Bench) -> dict:
    ctx.fast_server()
    n, c = ctx.args.pages, ctx.args.concurrency
    pc = ctx.args.pool_concurrency or c
    fetch = ctx.results.get("fetch")
    contestants = []
    for engine in ctx.engines:
        cc = pc if engine == "pool" else c
        contestants.append((f"{engine}+parse", lambda e=engine, cc=cc: crawl(ctx, e, ctx.urlfile, n, cc, parse=True)))
        if not fetch:  # no fetch scenario in this run: measure fetch-only here, interleaved
            contestants.append((engine, lambda e=engine, cc=cc: crawl(ctx, e, ctx.urlfile, n, cc, parse=False)))
    if ctx.scrapy:
        contestants.append(("scrapy_extract", lambda: script(ctx, "scrapy_bench", ctx.urlfile, n, c, "--mode", "extract")))
    # The parse stage alone, in every round too: it is usually the binding term of the bound,
    # and the machine's load changes between scenarios.
    items = parse_items(ctx)
    contestants.append(("parse_stage_2_workers", lambda: parse_stage(items, 2)))
    runs = ctx.interleave("pipeline", contestants)
    fetch_runs = fetch["runs"] if fetch else runs
    stage_pps = median_of(runs, "parse_stage_2_workers")
    targets = []
    for engine in ctx.engines:
        target = Target(f"{engine}+parse / (0.85 × min(fetch-only, parse stage))", 1.0)
        for r in range(ctx.args.rounds):
            fetch_only = pps(fetch_runs, engine, r)
            stage = pps(runs, "parse_stage_2_workers", r)
            bound = 0.85 * min(fetch_only, stage) if fetch_only and stage else None
            target.rounds.append(ratio(pps(runs, f"{engine}+parse", r), bound))
        targets.append(target)
    if ctx.scrapy:
        best = Target("best engine+parse / scrapy_extract", 3.0)
        for r in range(ctx.args.rounds):
            speeds = [pps(runs, f"{e}+parse", r) for e in ctx.engines]
            speeds = [s for s in speeds if s is not None]
            best.rounds.append(ratio(max(speeds), pps(runs, "scrapy_extract", r)) if speeds else None)
        targets.append(best)
    targets += pair_targets(ctx, runs, PIPELINE_WHOLE_PROCESS_TARGETS, key="process_pages_per_s")
    return {
        "title": f"pipeline: {n:,} pages, concurrency {c}, parsing on (--parse-workers 2); bound per round: "
        f"0.85 × min(fetch-only {'of the fetch scenario' if fetch else 'measured here'}, parse stage of this round)",
        "chart_title": f"pipeline: parsing on (2 parse workers), {n:,} pages, concurrency {c}",
        "server": ctx.server, "pages": n, "concurrency": c, "parse_stage_pages_per_s": stage_pps,
        "fetch_only_from": "the fetch scenario of this run" if fetch else "this scenario",
        "runs": runs, "targets": targets,
    }


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def render(name: str, result: dict, rounds: int) -> str:
    runs = result["runs"]
    ideal = result.get("ideal_pages_per_s")
    lines = [f"== {result['title']}"]
    if result.get("server"):
        lines.append(f"   server: {result['server']}")
    head = f"{'contestant':<30}{'pages/s':>9}" + "".join(f"{'r' + str(r + 1):>8}" for r in range(rounds))
    head += f"{'CPU ms/page':>13}{'tree CPU':>10}{'proc s':>8}" + (f"{'% ideal':>9}" if ideal else "") + "  notes"
    lines += [head, "-" * len(head)]
    for contestant, figures in runs.items():
        med = median_of(runs, contestant)
        cpu = median_of(runs, contestant, "cpu_ms_per_page")
        cells = "".join(f"{fmt(f['pages_per_s'] if f and 'error' not in f else None):>8}" for f in figures)
        notes = "; ".join(dict.fromkeys(f.get("note") or f.get("error") for f in figures if f and (f.get("note") or f.get("error"))))
        if contestant.endswith("+parse"):
            client = median_of(runs, contestant, "client_cpu_ms_per_page")
            notes = f"outside parsing {fmt(client, '.2f')} ms/page" + (f"; {notes}" if notes else "")
        label = contestant + (" (C, HTTP ceiling)" if contestant == "wrk" else "")
        tree = median_of(runs, contestant, "tree_cpu_ms_per_page")
        whole = median_of(runs, contestant, "process_wall_s")
        line = f"{label:<30}{fmt(med):>9}{cells}{fmt(cpu, '.2f'):>13}{fmt(tree, '.2f'):>10}{fmt(whole, '.2f'):>8}"
        if ideal:
            line += f"{fmt(med / ideal if med else None, '.0%'):>9}"
        lines.append(line + (f"  {notes}" if notes else ""))
    if result["targets"]:
        lines.append("")
        width = max(56, *(len(t.title) + 2 for t in result["targets"]))
        head = f"{'target':<{width}}" + "".join(f"{'r' + str(r + 1):>7}" for r in range(rounds)) + f"{'median':>8}{'need':>8}  verdict"
        lines += [head, "-" * len(head)]
        for target in result["targets"]:
            cells = "".join(f"{fmt(v, '.2f'):>7}" for v in target.rounds)
            need = ("≤ " if target.at_most else "≥ ") + f"{target.need:g}"
            lines.append(f"{target.title:<{width}}{cells}{fmt(target.median, '.2f'):>8}{need:>8}  {target.verdict()}")
    return "\n".join(lines)


def machine(ctx: Bench) -> dict:
    model = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 2**20, 1)
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "memory_gb": memory,
        "python": sys.version.split()[0], "platform": platform.platform(),
        "server": ctx.server, "nginx": shutil.which("nginx") is not None, "wrk": shutil.which("wrk") is not None,
        "scrapy": _scrapy_version() if ctx.scrapy else None,
    }


def _scrapy_version() -> str | None:
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        return version("scrapy")
    return None


def draw_chart(path: str, results: dict, title: str) -> bool:
    try:
        import matplotlib
    except ImportError:
        log("no chart: matplotlib not installed (pip install '.[bench]')")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, results[name]) for name in ("fetch", "latency", "pipeline") if name in results]
    if not panels:
        return False
    heights = [max(len(r["runs"]), 1) * 0.32 + 1.1 for _, r in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights) + 0.6), dpi=110, gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (name, result) in zip(axes[:, 0], panels):
        names = [n for n in result["runs"] if median_of(result["runs"], n) is not None]
        medians = [median_of(result["runs"], n) for n in names]
        lows = [min(f["pages_per_s"] for f in result["runs"][n] if f and "error" not in f) for n in names]
        highs = [max(f["pages_per_s"] for f in result["runs"][n] if f and "error" not in f) for n in names]
        colors = ["#4878a8" if n.split("+")[0] in ENGINES else "#f28e2b" if n.startswith("scrapy") else "#555555" if n == "wrk" else "#9c9c9c" for n in names]
        y = range(len(names))
        ax.barh(y, medians, color=colors, xerr=[[m - lo for m, lo in zip(medians, lows)], [hi - m for m, hi in zip(medians, highs)]],
                capsize=2, error_kw={"ecolor": "#333333", "elinewidth": 0.8})
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        limit = None
        if "wrk" in names and len(names) > 1:
            # wrk is usually far off the scale of the others: clip its bar and print its figure inside.
            limit = max(hi for n, hi in zip(names, highs) if n != "wrk") * 1.25
            ax.set_xlim(0, limit)
        else:
            ax.set_xlim(0, max(highs + [result.get("ideal_pages_per_s") or 0]) * 1.15)  # room for the labels
        for i, (n, m, hi) in enumerate(zip(names, medians, highs)):
            if limit and m > limit:
                ax.text(limit * 0.98, i, f"{m:,.0f} (clipped)", va="center", ha="right", fontsize=8, color="white")
            else:
                ax.text(hi, i, f"  {m:,.0f}", va="center", fontsize=8)  # right of the whisker
        if result.get("ideal_pages_per_s"):
            ax.axvline(result["ideal_pages_per_s"], color="#c44e52", linestyle="--", linewidth=1, label="ideal")
        ax.set_title(result.get("chart_title", name), fontsize=9, loc="left")
        ax.set_xlabel("pages/s (median; whiskers: min-max over rounds)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def available_engines() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "crawler", "--list-engines"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    return [engine for engine in ENGINES if engine in listed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See benchmarks/README.md.")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, from: %(default)s")
    parser.add_argument("--pages", type=int, help="pages of the synthetic site for fetch, parse, pipeline (default 5000; --quick 1000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds; medians over them (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: 1,000 pages, 1 round")
    parser.add_argument("--engines", help="comma-separated subset of the engines (default: every built-in engine registered)")
    parser.add_argument("--concurrency", type=int, default=64, help="fetch and pipeline scenarios (default %(default)s)")
    parser.add_argument("--pool-concurrency", type=int, help="processes for pool and bare_pool in fetch and pipeline (default: --concurrency)")
    parser.add_argument("--latency-urls", type=int, help="URLs of the latency scenario (default 3000; --quick 1000)")
    parser.add_argument("--latency-concurrency", type=int, default=50, help="(default %(default)s)")
    parser.add_argument("--pool-concurrency-latency", type=int, help="processes for pool and bare_pool in latency (default: --latency-concurrency)")
    parser.add_argument("--parse-pages", type=int, help="pages of the parse stage measurements (default: --pages; --quick 500)")
    parser.add_argument("--server", choices=("auto", "nginx", "aiohttp"), default="auto", help="fast server (default: nginx when installed)")
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes (default %(default)s: the client keeps a core)")
    parser.add_argument("--no-scrapy", action="store_true", help="leave Scrapy out even when installed")
    parser.add_argument("--no-wrk", action="store_true", help="leave wrk out even when installed")
    parser.add_argument("--budget", type=float, help="minutes after which remaining contestants are skipped (default 20; --quick 3)")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"), help="raw figures (default %(default)s)")
    parser.add_argument("--chart", default=str(HERE / "results" / "latest.png"), help="bar chart, .png or .svg (default %(default)s); '' for none")
    args = parser.parse_args()
    args.pages = args.pages or (1000 if args.quick else 5000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.budget = args.budget or (3 if args.quick else 20)
    args.parse_pages = args.parse_pages or (500 if args.quick else None)
    args.latency_urls = args.latency_urls or (1000 if args.quick else 3000)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        parser.error(f"--scenarios: unknown {unknown}; choose from {', '.join(SCENARIOS)}")
    if args.pages < 1 or args.rounds < 1 or args.latency_urls < 1:
        parser.error("--pages, --rounds and --latency-urls must be at least 1")

    ctx = Bench(args)
    registered = available_engines()
    ctx.engines = [e for e in (args.engines.split(",") if args.engines else ENGINES) if e in registered]
    missing = [e for e in (args.engines.split(",") if args.engines else ENGINES) if e not in registered]
    ctx.scrapy = scrapy_available() and not args.no_scrapy
    notes = []
    if missing:
        notes.append(f"engines not registered, skipped: {', '.join(missing)}")
    if not scrapy_available():
        notes.append("Scrapy not installed: pip install '.[bench]'")
    if not shutil.which("nginx") and args.server != "aiohttp":
        notes.append("nginx not installed: the fast server is the built-in aiohttp site")
    for note in notes:
        log(note)
    load_before = os.getloadavg()
    order = [s for s in SCENARIOS if s in chosen]  # fetch and parse before pipeline, which reuses them
    try:
        with ctx.stack:
            for name in order:
                log(f"--- scenario {name}")
                t0 = time.monotonic()
                result = globals()[f"scenario_{name}"](ctx)
                result["minutes"] = round((time.monotonic() - t0) / 60, 2)
                result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
                ctx.results[name] = result
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
    load_after = os.getloadavg()
    info = machine(ctx)
    minutes = (time.monotonic() - ctx.started) / 60

    header = [
        f"machine: {info['cpus']} CPUs, {info['cpu_model']}, {info['memory_gb']} GB; Python {info['python']}; {info['platform']}",
        f"server: {ctx.server or '-'}" + (f"; wrk {'installed' if info['wrk'] else 'not installed'}" if 'fetch' in chosen else ""),
        "Scrapy: " + ("left out (--no-scrapy)" if args.no_scrapy else info["scrapy"] or "not installed: pip install '.[bench]'"),
        (f"{args.pages:,} pages, {args.rounds} interleaved round(s); {minutes:.1f} min; "
         f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (on {info['cpus']} CPUs: above ~0.5 others are competing for the CPU)"),
        ("pages/s: median over rounds (r1, r2, ...: each round); CPU ms/page: the run's own figure (crawl --report cpu_s; "
         "getrusage around the loop for bare loops and Scrapy); tree CPU: ms/page of every process of the contestant, "
         "start-up included (cputree.py); proc s: wall s of the whole process, start to exit (cputree.py)"),
        ("targets: per round, both sides from the same round; on the runs' own timings (pages/s as above), "
         "except those labelled 'whole process': pages / proc s"),
    ] + [note for note in notes if not note.startswith("Scrapy")] + ctx.skipped
    print("\n".join(header))
    for name in order:
        print()
        print(render(name, ctx.results[name], args.rounds))

    document = {
        "machine": info,
        "args": vars(args),
        "engines": ctx.engines,
        "minutes": round(minutes, 2),
        "load_average": {"before": load_before, "after": load_after},
        "notes": notes + ctx.skipped,
        "scenarios": {
            name: {**result, "targets": [t.as_dict() for t in result["targets"]]} for name, result in ctx.results.items()
        },
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")
        log(f"raw figures written to {args.json}")
    if args.chart:
        title = f"crawler benchmarks: {info['cpus']} CPUs ({info['cpu_model']}), Python {info['python']}\nserver: {ctx.server or '-'}"
        if draw_chart(args.chart, ctx.results, title):
            log(f"chart written to {args.chart}")


if __name__ == "__main__":
    main()
