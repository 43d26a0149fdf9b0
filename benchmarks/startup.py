"""Start-up and small-run figures of issue 13 that ``run.py`` does not measure.

    python benchmarks/startup.py                      # version, oneurl, pool (~2-3 minutes on 2 busy cores)
    python benchmarks/startup.py --dask               # the same, then dask vs asyncio (3 x 3,000 pages; 2-4 more minutes)
    python benchmarks/startup.py --only version --rounds 11 --json /tmp/startup.json

A benchmark, not a test: it prints figures and compares them with the
issue's targets; its exit status is 0 whether or not targets are met (1 only
if no figure at all could be measured).

Scenarios (``--only``; default ``version,oneurl,pool``, ``--dask`` adds ``dask``):

* ``version``: whole-process wall time of ``crawl --version``, ``--help`` and
  ``--list-engines``, each run both as ``python -m crawler`` and through the
  installed ``crawl`` console script, interleaved (default 7 rounds); and,
  for reference (no target), ``python -c pass`` and ``python -c "import
  aiohttp"``.  Target: each ``crawl`` command <= 0.25 s.  Then one untimed
  ``python -X importtime -m crawler`` run of ``--version`` and of
  ``--list-engines`` names their largest imports.
* ``oneurl``: whole process for one URL of a local ``crawler.site``:
  ``crawl ONE_URL_FILE -e ENGINE -q --no-robots --out OUT`` for asyncio,
  yield, threads and pool, parsing on (default parse workers) and with
  ``--no-parse``, against ``bare_aiohttp.py ONE_URL_FILE -c 1`` (the bare
  script's whole process, interpreter start-up and imports included).  Runs
  are interleaved (default 5 rounds, the order rotated each round); each
  figure is the median of the per-round differences engine - bare.  Targets:
  <= bare + 0.15 s for asyncio, yield, threads; <= bare + 0.5 s for pool.
  Then one untimed ``python -X importtime`` run (asyncio, ``--no-parse``, so
  no child process writes to the same stderr) names the largest imports.
* ``pool``: ``crawl ONE_URL_FILE -e pool -c 32 ...`` (parsing on, then
  ``--no-parse``) while a sampler walks the crawl's descendants with psutil
  every 20 ms: every process started, classified by command line and parent
  (resource tracker, forkserver, forkserver children; a forkserver child
  that maps selectolax/lexbor, and the forkserver does not, is a parse
  worker, the others are pool workers), and each pool worker's peak RSS
  (the kernel's VmHWM, read every sample) and peak USS (psutil, sampled
  every 100 ms: reading smaps of 36 processes every 20 ms would slow the
  crawl being measured on 2 cores).
  Targets: min(c, URLs) = 1 pool worker; <= 30 MB each.
* ``dask``: ``crawl --demo -e dask,asyncio --demo-pages 3000 -q --json``
  (default 3 rounds, the engine order alternated each round); per round the
  ratio of pages/s dask / asyncio from the same run.  Target >= 0.8.

Everything runs on 127.0.0.1 (the page server is ``python -m crawler.site
--pages 50`` on a free loopback port, started once, stopped at the end);
every process has a timeout, past which its whole process group is killed;
the machine's load average is printed before and after each scenario.
``--json PATH`` saves every raw figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ENGINES = ("asyncio", "yield", "threads", "pool")
SCENARIOS = ("version", "oneurl", "pool", "dask")
DEFAULT_ROUNDS = {"version": 7, "oneurl": 5, "pool": 1, "dask": 3}
COMMANDS = ("--version", "--help", "--list-engines")
VERSION_TARGET_S = 0.25
ONEURL_MARGIN_S = {"asyncio": 0.15, "yield": 0.15, "threads": 0.15, "pool": 0.5}
POOL_CONCURRENCY = 32
POOL_WORKER_MB = 30.0
DASK_PAGES = 3000
DASK_TARGET = 0.8
SAMPLE_S = 0.02
PARSE_MARKERS = ("selectolax", "lexbor")  # shared objects only the parse stage loads


def log(message: str = "") -> None:
    print(message, flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def load_text(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values) + " (1 / 5 / 15 min)"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- processes ------------------------------------------------------------------------------


def kill_group(pgid: int, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s, to a process group we created (start_new_session)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_leftovers(pgid: int) -> None:
    """SIGKILL whatever of the group outlived its leader (a forkserver about to exit, usually nothing)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_exactly(proc: subprocess.Popen, t0: float, timeout: float) -> tuple[object, float]:
    """The exit code (or "timeout") and the seconds from ``t0`` to the moment the process exited.

    A blocking wait, with a timer that stops the process group at the
    deadline: ``Popen.wait(timeout=...)`` polls, sleeping up to 50 ms between
    looks, which put every figure on its schedule's steps (0.064, 0.114,
    0.164, 0.215, 0.265 s): up to 50 ms late, more than the differences
    measured here.
    """
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        kill_group(proc.pid)

    timer = threading.Timer(max(0.0, timeout - (time.perf_counter() - t0)), expire)
    timer.start()
    try:
        code: object = proc.wait()
        seconds = time.perf_counter() - t0
    finally:
        timer.cancel()
    if expired.is_set():
        timer.join()  # its kill_group may still be waiting for the rest of the group
        return "timeout", min(seconds, timeout)
    return code, seconds


def run_timed(argv: list[str], timeout: float, *, env: dict | None = None, watcher=None) -> dict:
    """Run ``argv`` in its own process group; wall time from Popen to the process's exit.

    stdout and stderr go to temporary files, not pipes, so that a child that
    outlives the process (and inherited them) cannot stretch the figure.
    ``watcher(proc, deadline)``, if given, runs in this thread until the
    process exits (it must return by then or at the deadline) and its result
    is returned under ``"watch"``.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True, cwd=ROOT, env=env)
        watched = None
        try:
            if watcher is not None:
                watched = watcher(proc, time.monotonic() + timeout)
            code, seconds = wait_exactly(proc, t0, timeout)
        except BaseException:
            kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            kill_leftovers(proc.pid)
        out.seek(0)
        err.seek(0)
        result = {"code": code, "s": seconds,
                  "stdout": out.read().decode("utf-8", "replace"), "stderr": err.read().decode("utf-8", "replace")}
    if watcher is not None:
        result["watch"] = watched
    return result


def failure_text(result: dict) -> str:
    if result["code"] == "timeout":
        return "timed out"
    tail = " | ".join(result["stderr"].strip().splitlines()[-3:])
    return f"exit {result['code']}: {tail[-300:]}"


class Site:
    """``python -m crawler.site --pages 50`` on a free loopback port, started once."""

    def __init__(self, pages: int = 50, timeout: float = 60.0):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "crawler.site", "--host", "127.0.0.1", "--port", "0",
                "--pages", str(pages), "--no-urls", "--exit-on-stdin-eof"]
        self.errfile = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for the server's life, closed in stop)
        # stdin: a pipe we hold and never write; should this script die, the server sees EOF and exits.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errfile,
                                     start_new_session=True, cwd=ROOT, env=env)
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                self.errfile.seek(0)
                raise RuntimeError(f"crawler.site did not start: {self.errfile.read().decode(errors='replace')[-500:]}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    continue
                line += chunk
        self.first_line = line.decode().strip()
        # "# crawler site http://HOST:PORT pages=N seed=S delay=D"
        self.base_url = next(word for word in self.first_line.split() if word.startswith("http://"))
        if not self.base_url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"crawler.site is not on 127.0.0.1: {self.first_line}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            kill_group(self.proc.pid, grace=5.0)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()
        self.errfile.close()


# --- scenario: version --------------------------------------------------------------------


def scenario_version(ctx: Context) -> dict:
    rounds = ctx.rounds("version")
    contestants: list[tuple[str, list[str], float | None]] = []
    for command in COMMANDS:
        contestants.append((f"python -m crawler {command}", [sys.executable, "-m", "crawler", command], VERSION_TARGET_S))
        if ctx.crawl_script:
            contestants.append((f"crawl {command}", [ctx.crawl_script, command], VERSION_TARGET_S))
    contestants.append(("python -c pass (reference)", [sys.executable, "-c", "pass"], None))
    contestants.append(('python -c "import aiohttp" (reference)', [sys.executable, "-c", "import aiohttp"], None))
    log(f"== version: whole-process wall time, {rounds} interleaved round(s), order rotated each round")
    log(f"   python -m crawler = {sys.executable} -m crawler; crawl = {ctx.crawl_script or 'NOT FOUND on PATH'}")
    times: dict[str, list[float]] = {name: [] for name, _, _ in contestants}
    errors: dict[str, list[str]] = {}
    for r in range(rounds):
        order = contestants[r % len(contestants):] + contestants[: r % len(contestants)]
        for name, argv, _ in order:
            result = run_timed(argv, timeout=30.0)
            if result["code"] == 0 and (result["stdout"].strip() or "pass" in argv[-1] or "import" in argv[-1]):
                times[name].append(result["s"])
            else:
                errors.setdefault(name, []).append(failure_text(result))
        log(f"   round {r + 1}/{rounds} done (load {os.getloadavg()[0]:.2f})")
    log(f"   {'command':<42} {'median':>7} {'min':>7} {'max':>7}  target")
    rows = []
    for name, _, target in contestants:
        ts = times[name]
        if ts:
            log(f"   {name:<42} {median(ts):7.3f} {min(ts):7.3f} {max(ts):7.3f}  "
                + (f"<= {target:.2f} s" if target else "-"))
        else:
            log(f"   {name:<42} failed: {errors.get(name, ['?'])[0]}")
        if target is not None:
            rows.append(("time", name, median(ts), target))
    for name, errs in errors.items():
        log(f"   ! {name}: {len(errs)} failed run(s): {errs[0]}")
    imports = {}
    for command in ("--version", "--list-engines"):
        result = run_timed([sys.executable, "-X", "importtime", "-m", "crawler", command], timeout=30.0)
        imports[command] = log_imports(f"python -m crawler {command}", result)
    return {"times_s": times, "errors": errors, "rows": rows, "importtime": imports}


# --- scenario: oneurl ---------------------------------------------------------------------


def record_ok(path: Path) -> str | None:
    """None if ``path`` holds exactly one record and it is ok; else what is wrong."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        return f"no output: {exc}"
    if len(lines) != 1:
        return f"{len(lines)} records"
    record = json.loads(lines[0])
    return None if record.get("ok") else f"record not ok: {record.get('error')} {record.get('detail')}"


def crawl_one(ctx: Context, engine: str, parse: bool, extra: list[str] | None = None, timeout: float = 90.0,
              watcher=None, env: dict | None = None, prefix: list[str] | None = None) -> dict:
    out = ctx.work / f"{engine}-{'parse' if parse else 'noparse'}.jsonl"
    out.unlink(missing_ok=True)
    argv = (prefix or ctx.crawl_cmd) + [str(ctx.one_url_file), "-e", engine, "-q", "--no-robots", "--out", str(out)]
    if not parse:
        argv.append("--no-parse")
    argv += extra or []
    result = run_timed(argv, timeout=timeout, watcher=watcher, env=env)
    result["argv"] = argv
    result["problem"] = failure_text(result) if result["code"] != 0 else record_ok(out)
    return result


def bare_one(ctx: Context) -> dict:
    argv = [sys.executable, str(HERE / "bare_aiohttp.py"), str(ctx.one_url_file), "-c", "1"]
    result = run_timed(argv, timeout=60.0)
    result["argv"] = argv
    problem = None
    if result["code"] != 0:
        problem = failure_text(result)
    else:
        try:
            if json.loads(result["stdout"].strip().splitlines()[-1])["pages"] != 1:
                problem = f"bare: {result['stdout'].strip()}"
        except (ValueError, IndexError, KeyError):
            problem = f"bare printed {result['stdout'][:200]!r}"
    result["problem"] = problem
    return result


def import_breakdown(stderr: str, top: int = 12) -> dict:
    """Sum ``-X importtime`` lines: total, self time per top-level package, slowest top-level imports."""
    entries = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) != 3:
            continue
        try:
            own, cumulative = int(parts[0]), int(parts[1])
        except ValueError:
            continue
        name_field = parts[2].rstrip()
        entries.append((len(name_field) - len(name_field.lstrip()), name_field.strip(), own, cumulative))
    if not entries:
        return {}
    top_level = min(depth for depth, *_ in entries)
    # Lines come children first: a module's top-level import is the next top-level line at or after it.
    root_of, root = [""] * len(entries), ""
    for i in range(len(entries) - 1, -1, -1):
        if entries[i][0] == top_level:
            root = entries[i][1]
        root_of[i] = root
    per_package: dict[str, int] = {}
    first_root: dict[str, str] = {}
    for (_, name, own, _), under in zip(entries, root_of):
        package = name.split(".")[0]
        per_package[package] = per_package.get(package, 0) + own
        first_root.setdefault(package, under)
    roots = sorted(((cum, name) for depth, name, _, cum in entries if depth == top_level), reverse=True)
    return {
        "total_ms": round(sum(own for *_, own, _ in entries) / 1000, 1),
        "modules": len(entries),
        "self_ms_by_package": [(name, round(us / 1000, 1), first_root[name]) for name, us in
                               sorted(per_package.items(), key=lambda kv: -kv[1])[:top]],
        "top_level_cumulative_ms": [(name, round(cum / 1000, 1)) for cum, name in roots[:top]],
    }


def log_imports(what: str, result: dict) -> dict:
    """Print the ``-X importtime`` breakdown of one untimed run; return it."""
    breakdown = import_breakdown(result["stderr"]) if result["code"] == 0 else {}
    if not breakdown:
        log(f"   importtime run of {what} failed: {failure_text(result)}")
        return {}
    log(f"   {what} under -X importtime (untimed): {result['s']:.3f} s whole process; imports {breakdown['total_ms']:.0f} ms"
        f" ({breakdown['modules']} modules; importtime's own overhead included)")
    log("      self time by top-level package (ms; via: the top-level import that first pulled it in): "
        + ", ".join(f"{name} {ms:.0f}" + (f" (via {under})" if under.split(".")[0] != name else "")
                    for name, ms, under in breakdown["self_ms_by_package"]))
    log("      slowest top-level imports, cumulative (ms): "
        + ", ".join(f"{name} {ms:.0f}" for name, ms in breakdown["top_level_cumulative_ms"]))
    breakdown["run_s"] = result["s"]
    return breakdown


def scenario_oneurl(ctx: Context) -> dict:
    rounds = ctx.rounds("oneurl")
    contestants = [("bare_aiohttp", None, None)]
    for engine in ENGINES:
        contestants += [(f"{engine}", engine, True), (f"{engine} --no-parse", engine, False)]
    log(f"== oneurl: whole process for 1 URL ({ctx.one_url}), {rounds} interleaved round(s), order rotated each round")
    log(f"   crawl = {' '.join(ctx.crawl_cmd)} ONE_URL_FILE -e ENGINE -q --no-robots --out OUT [--no-parse]"
        f" (parsing on: default parse workers)")
    log(f"   bare  = {sys.executable} benchmarks/bare_aiohttp.py ONE_URL_FILE -c 1 (its whole process)")
    times: dict[str, list[float | None]] = {name: [] for name, _, _ in contestants}
    errors: dict[str, list[str]] = {}
    for r in range(rounds):
        order = contestants[r % len(contestants):] + contestants[: r % len(contestants)]
        for name, engine, parse in order:
            result = bare_one(ctx) if engine is None else crawl_one(ctx, engine, parse)
            if result["problem"]:
                errors.setdefault(name, []).append(result["problem"])
                times[name].append(None)
            else:
                times[name].append(result["s"])
        log(f"   round {r + 1}/{rounds} done (load {os.getloadavg()[0]:.2f})")
    bare = times["bare_aiohttp"]
    header = f"   {'contestant':<20} {'median':>7} {'min':>7} {'max':>7}  {'- bare, per round':<44} {'median':>7}  target"
    log(header)
    rows, diffs_all = [], {}
    for name, engine, parse in contestants:
        ts = [t for t in times[name] if t is not None]
        if not ts:
            log(f"   {name:<20} failed: {errors.get(name, ['?'])[0]}")
            if engine:
                rows.append(("oneurl", name, None, ONEURL_MARGIN_S[engine]))
            continue
        line = f"   {name:<20} {median(ts):7.3f} {min(ts):7.3f} {max(ts):7.3f}  "
        if engine is None:
            log(line + "(reference)")
            continue
        diffs = [t - b for t, b in zip(times[name], bare) if t is not None and b is not None]
        diffs_all[name] = diffs
        per_round = " ".join(f"{d:+.2f}" for d in diffs)
        log(line + f"{per_round:<44} {median(diffs):+7.3f}  <= bare + {ONEURL_MARGIN_S[engine]:.2f} s")
        rows.append(("oneurl", name, (median(diffs), median(ts), median([b for b in bare if b is not None])),
                     ONEURL_MARGIN_S[engine]))
    for name, errs in errors.items():
        log(f"   ! {name}: {len(errs)} failed run(s): {errs[0]}")

    # One untimed run under -X importtime: what the main process imports, and how long it takes
    # (--no-parse: no forkserver or parse worker writing its own importtime lines to the same stderr).
    result = crawl_one(ctx, "asyncio", False, prefix=[sys.executable, "-X", "importtime", "-m", "crawler"])
    breakdown = log_imports("python -m crawler ONE_URL_FILE -e asyncio -q --no-robots --no-parse", result)
    return {"times_s": times, "diffs_s": diffs_all, "errors": errors, "rows": rows, "importtime": breakdown}


# --- scenario: pool -----------------------------------------------------------------------


def _status_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) in MB from /proc/PID/status: the current and the peak resident set (the kernel's figures)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            values = {}
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    values[line[:5]] = int(line.split()[1]) / 1024
        return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)
    except (OSError, ValueError, IndexError):
        return None


def _maps_have(pid: int, markers: tuple[str, ...]) -> set[str]:
    try:
        with open(f"/proc/{pid}/maps") as handle:
            text = handle.read()
    except OSError:
        return set()
    return {m for m in markers if m in text}


def _sample_process(p, seen: dict[int, dict], root_pid: int, at_s: float, full: bool, read_maps: bool) -> tuple[float, float]:
    """One process in one sample of :func:`tree_watcher`, taken ``at_s`` s into the run: its record in ``seen``
    updated, its (RSS, USS) in MB for the tree's sums returned (USS only when ``full``, /proc/PID/maps read
    when ``read_maps``); nothing for a process gone meanwhile, or between fork and exec."""
    import psutil

    rss = uss = 0.0
    info = seen.get(p.pid)
    try:
        if info is None:
            info = seen[p.pid] = {
                "pid": p.pid, "ppid": p.ppid(), "cmdline": " ".join(p.cmdline()),
                "first_seen_s": at_s, "libs": set(),
                "rss_mb": 0.0, "uss_mb": 0.0, "hwm_mb": 0.0, "root": p.pid == root_pid,
            }
        root_cmdline = seen[root_pid]["cmdline"] if root_pid in seen else None
        if not info["root"] and info["cmdline"] in ("", root_cmdline):
            # Between fork and exec (a resource tracker, a forkserver starting): still
            # the crawl's memory and libraries.  Figures count from the exec on.
            info["cmdline"] = " ".join(p.cmdline())
            if info["cmdline"] in ("", root_cmdline):
                return rss, uss
            info.update(libs=set(), rss_mb=0.0, uss_mb=0.0, hwm_mb=0.0, exec_seen_s=at_s)
            info.pop("maps_read", None)
        if not info["libs"] and "maps_read" not in info:
            info["maps_read"] = True
            info["libs"] |= _maps_have(p.pid, PARSE_MARKERS)
        status = _status_mb(p.pid)
        if status:
            info["rss_mb"] = max(info["rss_mb"], status[0])
            info["hwm_mb"] = max(info["hwm_mb"], status[1])
            rss = status[0]
        if full:
            measured = p.memory_full_info().uss / 2**20
            info["uss_mb"] = max(info["uss_mb"], measured)
            uss = measured
        if read_maps and len(info["libs"]) < len(PARSE_MARKERS):
            info["libs"] |= _maps_have(p.pid, PARSE_MARKERS)
        info["last_seen_s"] = at_s
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    return rss, uss


def tree_watcher(interval: float = SAMPLE_S, uss_every: int = 5, maps_every: int = 10):
    """A ``run_timed`` watcher: samples the crawl's process tree every ``interval`` s until it exits.

    Every sample: the list of descendants (psutil), and each one's VmRSS and
    VmHWM (one read of /proc/PID/status).  USS (psutil ``memory_full_info``,
    which reads smaps) every ``uss_every`` samples, and /proc/PID/maps (for
    the parse stage's libraries) every ``maps_every`` samples and when a
    process is first seen: both are too dear to do 36 times every 20 ms on 2
    cores without slowing the crawl being measured.
    """
    import psutil

    def watch(proc: subprocess.Popen, deadline: float) -> dict:
        seen: dict[int, dict] = {}
        samples, peak_alive, peak_tree_rss, peak_tree_uss, lags = 0, 0, 0.0, 0.0, []
        handles: dict[int, psutil.Process] = {}
        t0 = time.monotonic()
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return {"processes": [], "samples": 0}
        while proc.poll() is None and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                kids = root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            peak_alive = max(peak_alive, len(kids))
            tree_rss = tree_uss = 0.0
            full = samples % uss_every == 0
            for p in [root, *kids]:
                rss, uss = _sample_process(handles.setdefault(p.pid, p), seen, proc.pid, round(started - t0, 3), full,
                                           samples % maps_every == 0)
                tree_rss += rss
                tree_uss += uss
            peak_tree_rss = max(peak_tree_rss, tree_rss)
            if full:
                peak_tree_uss = max(peak_tree_uss, tree_uss)
            samples += 1
            spent = time.monotonic() - started
            lags.append(spent)
            time.sleep(max(0.0, interval - spent))
        elapsed = time.monotonic() - t0
        for info in seen.values():
            info["libs"] = sorted(info["libs"])
            info.pop("maps_read", None)
        return {"processes": list(seen.values()), "samples": samples, "peak_alive_descendants": peak_alive,
                "peak_tree_rss_mb": peak_tree_rss, "peak_tree_uss_mb": peak_tree_uss,
                "sample_interval_ms": 1000 * elapsed / samples if samples else None,
                "sample_ms_median": 1000 * median(lags) if lags else None,
                "sample_ms_max": 1000 * max(lags) if lags else None}

    return watch


def classify(watch: dict) -> dict[str, list[dict]]:
    procs = watch["processes"]
    root = next((p for p in procs if p["root"]), None)
    forkservers = {p["pid"]: p for p in procs if "multiprocessing.forkserver" in p["cmdline"] and root and p["ppid"] == root["pid"]}
    kinds: dict[str, list[dict]] = {"crawl (main)": [], "resource tracker": [], "forkserver": [],
                                    "parse worker": [], "pool worker": [], "other": []}
    for p in procs:
        if p["root"]:
            kinds["crawl (main)"].append(p)
        elif "multiprocessing.resource_tracker" in p["cmdline"]:
            kinds["resource tracker"].append(p)
        elif p["pid"] in forkservers:
            kinds["forkserver"].append(p)
        elif p["ppid"] in forkservers or "multiprocessing.spawn" in p["cmdline"]:
            server_libs = set(forkservers[p["ppid"]]["libs"]) if p["ppid"] in forkservers else set()
            kinds["parse worker" if set(p["libs"]) - server_libs else "pool worker"].append(p)
        else:
            kinds["other"].append(p)
    return kinds


def scenario_pool(ctx: Context) -> dict:
    rounds = ctx.rounds("pool")
    urls = 1
    expected = min(POOL_CONCURRENCY, urls)
    log(f"== pool: 1 URL at -c {POOL_CONCURRENCY}, descendants sampled every {SAMPLE_S * 1000:.0f} ms with psutil"
        f" ({rounds} run(s) per mode)")
    log("   classified by command line and parent: forkserver children that map selectolax/lexbor (and the"
        " forkserver does not) are parse workers, the other forkserver children pool workers")
    runs = {"parse": [], "no-parse": []}
    for r in range(rounds):
        for mode in ("parse", "no-parse"):
            result = crawl_one(ctx, "pool", mode == "parse", extra=["-c", str(POOL_CONCURRENCY)], timeout=120.0,
                               watcher=tree_watcher())
            watch = result["watch"] or {"processes": []}
            kinds = classify(watch)
            workers = kinds["pool worker"]
            figure = {
                "whole_s": result["s"], "problem": result["problem"],
                "counts": {k: len(v) for k, v in kinds.items()},
                "pool_worker_peak_rss_mb": [round(max(w["hwm_mb"], w["rss_mb"]), 1) for w in workers],
                "pool_worker_peak_uss_mb": [round(w["uss_mb"], 1) for w in workers],
                "parse_worker_peak_rss_mb": [round(max(w["hwm_mb"], w["rss_mb"]), 1) for w in kinds["parse worker"]],
                "main_peak_rss_mb": round(max((p["hwm_mb"] for p in kinds["crawl (main)"]), default=0), 1),
                "peak_alive_descendants": watch.get("peak_alive_descendants"),
                "peak_tree_rss_mb": round(watch.get("peak_tree_rss_mb", 0), 1),
                "peak_tree_uss_mb": round(watch.get("peak_tree_uss_mb", 0), 1),
                "samples": watch.get("samples"), "sample_interval_ms": watch.get("sample_interval_ms"),
                "sample_ms_median": watch.get("sample_ms_median"),
                "sample_ms_max": watch.get("sample_ms_max"),
                "processes": watch["processes"],
            }
            runs[mode].append(figure)
            c = figure["counts"]
            rss, uss = figure["pool_worker_peak_rss_mb"], figure["pool_worker_peak_uss_mb"]
            log(f"   {mode:<8} run {r + 1}: {result['s']:.2f} s{'  ! ' + result['problem'] if result['problem'] else ''}")
            log(f"      processes started: {sum(c.values()) - c['crawl (main)']} descendants = "
                + ", ".join(f"{n} {k}" for k, n in c.items() if k != "crawl (main)" and n)
                + f"; at most {figure['peak_alive_descendants']} alive at once")
            if rss:
                log(f"      pool workers: peak RSS max {max(rss):.1f} MB, median {median(rss):.1f} MB; "
                    f"peak USS max {max(uss):.1f} MB, median {median(uss):.1f} MB")
            if figure["parse_worker_peak_rss_mb"]:
                log(f"      parse workers: peak RSS {', '.join(f'{x:.1f}' for x in figure['parse_worker_peak_rss_mb'])} MB")
            log(f"      crawl main process peak RSS {figure['main_peak_rss_mb']:.1f} MB; whole tree at its peak sample:"
                f" RSS {figure['peak_tree_rss_mb']:.0f} MB (shared pages counted in every process),"
                f" USS {figure['peak_tree_uss_mb']:.0f} MB")
            log(f"      {figure['samples']} samples, one every {figure['sample_interval_ms']:.0f} ms on average;"
                f" a sample took {figure['sample_ms_median']:.1f} ms (median), {figure['sample_ms_max']:.0f} ms at most"
                if figure["samples"] else "      no samples")
            if mode == "parse" and not c["parse worker"]:
                log("      ! no parse worker recognised (no forkserver child maps selectolax/lexbor that the forkserver"
                    " does not): the pool worker count may include them")
            for p in kinds["other"]:
                log(f"      other process: pid {p['pid']} (parent {p['ppid']}): {p['cmdline'][:100]}")
    rows = []
    for mode in ("parse", "no-parse"):
        good = [f for f in runs[mode] if not f["problem"]]
        suffix = "" if mode == "parse" else " --no-parse"
        counts = [f["counts"]["pool worker"] for f in good]
        rss = [max(f["pool_worker_peak_rss_mb"]) for f in good if f["pool_worker_peak_rss_mb"]]
        uss = [max(f["pool_worker_peak_uss_mb"]) for f in good if f["pool_worker_peak_uss_mb"]]
        rows.append(("count", f"pool -c {POOL_CONCURRENCY}, 1 URL{suffix}: pool worker processes", median(counts), expected))
        rows.append(("mb", f"pool -c {POOL_CONCURRENCY}, 1 URL{suffix}: largest pool worker peak RSS", median(rss), POOL_WORKER_MB))
        rows.append(("mb", f"pool -c {POOL_CONCURRENCY}, 1 URL{suffix}: largest pool worker peak USS", median(uss), POOL_WORKER_MB))
    return {"runs": runs, "rows": rows}


# --- scenario: dask -----------------------------------------------------------------------


def scenario_dask(ctx: Context) -> dict:
    rounds = ctx.rounds("dask")
    log(f"== dask: crawl --demo -e dask,asyncio --demo-pages {DASK_PAGES} -q --json, {rounds} round(s),"
        " engine order alternated each round; ratio of pages/s from the same run")
    ratios, runs = [], []
    for r in range(rounds):
        engines = "dask,asyncio" if r % 2 == 0 else "asyncio,dask"
        argv = ctx.crawl_cmd + ["--demo", "-e", engines, "--demo-pages", str(DASK_PAGES), "-q", "--json"]
        before = os.getloadavg()[0]
        result = run_timed(argv, timeout=ctx.args.dask_timeout)
        figure = {"engines": engines, "whole_s": result["s"], "load_before": before}
        problem = failure_text(result) if result["code"] != 0 else None
        if not problem:
            try:
                report = json.loads(result["stdout"])
                by_name = {e["engine"]: e for e in report["engines"]}
                for name in ("dask", "asyncio"):
                    e = by_name[name]
                    figure[name] = {k: e.get(k) for k in ("ok", "failed", "urls", "wall_s", "pages_per_s", "cpu_s", "verdict")}
                    if e.get("ok") != DASK_PAGES:
                        problem = f"{name}: {e.get('ok')} of {DASK_PAGES} ok"
            except (ValueError, KeyError) as exc:
                problem = f"unreadable report: {exc!r}"
        figure["problem"] = problem
        runs.append(figure)
        if problem:
            log(f"   round {r + 1} ({engines}): {result['s']:.1f} s  ! {problem}")
            continue
        ratio = figure["dask"]["pages_per_s"] / figure["asyncio"]["pages_per_s"]
        figure["ratio"] = ratio
        ratios.append(ratio)
        log(f"   round {r + 1} ({engines}): dask {figure['dask']['pages_per_s']:.0f} pages/s"
            f" ({figure['dask']['wall_s']:.1f} s), asyncio {figure['asyncio']['pages_per_s']:.0f} pages/s"
            f" ({figure['asyncio']['wall_s']:.1f} s): ratio {ratio:.2f}; whole process {result['s']:.1f} s,"
            f" load {before:.2f} -> {os.getloadavg()[0]:.2f}")
    if ratios:
        log(f"   ratio per round: {' '.join(f'{x:.2f}' for x in ratios)}; median {median(ratios):.2f} (target >= {DASK_TARGET})")
    return {"runs": runs, "ratios": ratios,
            "rows": [("ratio", f"dask (LocalCluster) / asyncio pages/s, {DASK_PAGES:,} demo pages, parsing on", median(ratios), DASK_TARGET)]}


# --- the table ------------------------------------------------------------------------------


def verdict_row(kind: str, name: str, value, target) -> tuple[str, str, str, str]:
    if value is None:
        return name, "no figure", "-", "not measured"
    if kind == "time":
        missed = value - target
        return name, f"{value:.3f} s", f"<= {target:.2f} s", "met" if missed <= 0 else f"MISSED by {missed:.2f} s ({missed / target:.0%})"
    if kind == "oneurl":
        diff, whole, bare = value
        missed = diff - target
        return (f"1 URL whole process, {name}", f"{whole:.2f} s = bare {bare:.2f} {diff:+.2f} s",
                f"<= bare + {target:.2f} s", "met" if missed <= 0 else f"MISSED by {missed:.2f} s")
    if kind == "count":
        missed = value - target
        return name, f"{value:g}", f"<= {target:g} (min(c, URLs))", "met" if missed <= 0 else f"MISSED by {missed:g} processes"
    if kind == "mb":
        missed = value - target
        return name, f"{value:.1f} MB", f"<= {target:g} MB", "met" if missed <= 0 else f"MISSED by {missed:.1f} MB ({missed / target:.0%})"
    if kind == "ratio":
        missed = target - value
        return name, f"{value:.2f}", f">= {target}", "met" if missed <= 0 else f"MISSED by {missed / target:.0%}"
    raise ValueError(kind)


def print_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    header = ("figure", "measured (median)", "target", "verdict")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    for line in lines:
        log(line)
    return lines


# --- main -----------------------------------------------------------------------------------


class Context:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.crawl_script = shutil.which("crawl")
        self.crawl_cmd = [self.crawl_script] if self.crawl_script else [sys.executable, "-m", "crawler"]
        self.work = Path(tempfile.mkdtemp(prefix="crawl-startup-"))
        self.site: Site | None = None
        self.one_url = ""
        self.one_url_file = self.work / "one_url.txt"

    def rounds(self, scenario: str) -> int:
        return self.args.rounds or DEFAULT_ROUNDS[scenario]

    def start_site(self) -> None:
        if self.site is None:
            self.site = Site(pages=50)
            self.one_url = f"{self.site.base_url}/page/1"
            self.one_url_file.write_text(self.one_url + "\n", encoding="utf-8")
            log(f"page server: {self.site.first_line}")

    def close(self) -> None:
        if self.site is not None:
            self.site.stop()
        shutil.rmtree(self.work, ignore_errors=True)


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, check=False,
                               text=True, timeout=10).stdout.strip()
        return f"{head}{' + uncommitted changes in the working tree' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def bytecode_state() -> str:
    """Whether the runs read the project's modules as cached bytecode, or compile them from source every time.

    Start-up figures depend on it by tens of milliseconds: an installed
    crawler has its bytecode (pip compiles it, or the first run writes it),
    but with PYTHONDONTWRITEBYTECODE set and no cache yet, every run compiles
    every module of the project it imports.
    """
    import importlib.util

    cached = Path(importlib.util.cache_from_source(str(ROOT / "crawler" / "cli.py"))).exists()
    if cached:
        return "cached (the project's modules are read as bytecode, as when installed)"
    if sys.dont_write_bytecode:
        return "none: PYTHONDONTWRITEBYTECODE is set, so every run compiles the project's modules from source"
    return "none yet: the first run writes it"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated scenarios among {','.join(SCENARIOS)}"
                                       " (default version,oneurl,pool; with --dask also dask)")
    parser.add_argument("--dask", action="store_true", help="also run the dask scenario (3 x 2 crawls of 3,000 pages)")
    parser.add_argument("--rounds", type=int, help="rounds for every scenario (default: version 7, oneurl 5, pool 1, dask 3)")
    parser.add_argument("--dask-timeout", type=float, default=300.0, help="seconds per dask run (default %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="save every raw figure as JSON to PATH")
    args = parser.parse_args()
    if args.only:
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in SCENARIOS]
        if unknown:
            parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose among {', '.join(SCENARIOS)}")
    else:
        chosen = ["version", "oneurl", "pool"] + (["dask"] if args.dask else [])
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")

    ctx = Context(args)
    started = datetime.datetime.now().astimezone()
    machine = {
        "date": started.isoformat(timespec="seconds"), "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "git": git_state(), "crawl_script": ctx.crawl_script, "bytecode": bytecode_state(),
    }
    log(f"{machine['date']}; {machine['cpus']} CPUs; Python {machine['python']}; {machine['platform']}; git {machine['git']}")
    log(f"bytecode: {machine['bytecode']}")
    load_before = load()
    log(f"load average before: {load_text(load_before)} (on {os.cpu_count()} CPUs: above ~0.5 others compete for the CPU)")
    results: dict = {"machine": machine, "load_before": load_before, "scenarios": {}}
    functions = {"version": scenario_version, "oneurl": scenario_oneurl, "pool": scenario_pool, "dask": scenario_dask}
    table: list[tuple[str, str, str, str]] = []
    try:
        for name in SCENARIOS:
            if name not in chosen:
                continue
            if name in ("oneurl", "pool"):
                ctx.start_site()
            log("")
            before, t0 = load(), time.perf_counter()
            result = functions[name](ctx)
            after = load()
            log(f"   load {load_text(before)} -> {load_text(after)}; {time.perf_counter() - t0:.0f} s")
            result.update(load_before=before, load_after=after, seconds=time.perf_counter() - t0)
            table += [verdict_row(*row) for row in result.pop("rows")]
            results["scenarios"][name] = result
    finally:
        ctx.close()
    load_after = load()
    results["load_after"] = load_after
    results["table"] = table
    log("")
    log(f"load average before: {load_text(load_before)}; after: {load_text(load_after)}")
    results["table_lines"] = print_table(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
        log(f"raw figures: {args.json}")
    return 0 if any(row[1] != "no figure" for row in table) else 1


if __name__ == "__main__":
    sys.exit(main())
