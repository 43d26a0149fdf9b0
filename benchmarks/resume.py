"""What does stopping a deep crawl and resuming it cost?  (issue 12)

On the synthetic site (one server for every run, started once), for each
scenario: one uninterrupted crawl, then the same crawl killed (SIGKILL) once
it has written half of the uninterrupted run's records and resumed with
``--resume``.  Each time is a whole process's wall time, interpreter start-up
included, as a user would see it.  The target: killed + resumed <= 1.1 x
uninterrupted.  Then ``--resume`` once more, on the finished crawl: nothing
is fetched, so its time is what resuming itself costs (start-up, reading
the records and the state back, reading the list again), a figure a busy
machine disturbs less than the crawl times.  And the size of the frontier's
state file, per 100,000 URLs queued.

Scenarios:

* ``list``: the URL file holds every page of the site, ``--depth 2``
  (the issue's ``--demo-pages 20000 --depth 2``: the demo crawls its whole
  page list; links then lead to pages already listed, so the frontier
  mostly deduplicates);
* ``seed``: the URL file holds one page, ``--depth 3``: the links reach
  most of the site, so the frontier queues most of it (this is where the
  state file's size per URL queued is measured).

    python benchmarks/resume.py                    # 20,000 pages (the site takes ~50 s to generate on 2 loaded cores)
    python benchmarks/resume.py --pages 5000 --engine threads --rounds 1
    python benchmarks/resume.py --base http://127.0.0.1:PORT   # a site already serving 20,000 pages

The site runs in its own process (``python -m crawler.site``), generated
once: with ``crawl --demo`` each run would generate it again, and the two
runs of a resumed crawl would pay that twice (``--demo --resume`` itself is
tested in tests/test_deep_resume.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

from crawler.frontier import state_path
from crawler.site import serve_in_subprocess


def lines_in(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def crawl(command: list[str], out: str, kill_at: int | None = None) -> tuple[float, int]:
    """Run ``command``; with ``kill_at``, SIGKILL it once ``out`` has that many lines. Returns (wall s, exit code)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    if kill_at is not None:
        while process.poll() is None:
            if lines_in(out) >= kill_at:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    _, stderr = process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode not in (0, -signal.SIGKILL):
        sys.exit(f"crawl failed ({process.returncode}): {stderr.decode(errors='replace')[-2000:]}")
    time.sleep(1.0)  # a killed run's parse workers notice their parent is gone
    return elapsed, process.returncode


def record_set(out: str) -> Counter:
    found: Counter = Counter()
    with open(out, "rb") as f:
        for line in f:
            record = json.loads(line)
            found[(record["url"], record["depth"])] += 1
    return found


def state_figures(path: str) -> dict:
    kinds: Counter = Counter()
    with open(path, "rb") as f:
        for line in f:
            kinds[json.loads(line)[0]] += 1
    size = os.path.getsize(path)
    queued = kinds["queue"]
    return {
        "bytes": size,
        "facts": dict(kinds),
        "bytes_per_fact": size / max(sum(kinds.values()), 1),
        "mb_per_100k_queued": size / queued * 100_000 / 1e6 if queued else None,
    }


def scenario(name: str, urls: list[str], depth: int, args, workdir: str) -> dict:
    """``args.rounds`` rounds, each an uninterrupted crawl then a killed + resumed one (interleaved: a busy
    machine's slow spells fall on both)."""
    url_file = os.path.join(workdir, f"{name}-urls.txt")
    with open(url_file, "w") as f:
        f.write("\n".join(urls) + "\n")
    base = [sys.executable, "-m", "crawler", url_file, "-e", args.engine, "--depth", str(depth), "-q"]
    rounds = []
    for n in range(args.rounds):
        full_out = os.path.join(workdir, f"{name}-{n}-full.jsonl")
        full_s, _ = crawl(base + ["--out", full_out], full_out)
        expected = record_set(full_out)
        full_state = state_figures(state_path(full_out, args.engine))

        out = os.path.join(workdir, f"{name}-{n}-resumed.jsonl")
        killed_s, code = crawl(base + ["--out", out], out, kill_at=sum(expected.values()) // 2)
        at_kill = lines_in(out)
        resumed_s, _ = crawl(base + ["--out", out, "--resume"], out)
        # resuming the finished crawl: nothing left to fetch, so this is what resuming itself costs
        # (start-up, reading the records and the state back, reading the list again)
        bookkeeping_s, _ = crawl(base + ["--out", out, "--resume"], out)
        rounds.append({
            "uninterrupted_s": round(full_s, 2),
            "killed_s": round(killed_s, 2),
            "killed_at_records": at_kill,
            "killed": code == -signal.SIGKILL,
            "resumed_s": round(resumed_s, 2),
            "complete_resume_s": round(bookkeeping_s, 2),
            "ratio": round((killed_s + resumed_s) / full_s, 3),
            "same_records": record_set(out) == expected,
        })  # fmt: skip
    result = {
        "scenario": name,
        "depth": depth,
        "list_urls": len(urls),
        "records": sum(expected.values()),
        "rounds": rounds,
        # all rounds together: (killed + resumed) over uninterrupted
        "ratio": round(sum(r["killed_s"] + r["resumed_s"] for r in rounds) / sum(r["uninterrupted_s"] for r in rounds), 3),
        "state": full_state,
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=20_000)
    parser.add_argument("--engine", default="asyncio")
    parser.add_argument("--seed-depth", type=int, default=3)
    parser.add_argument("--scenarios", default="list,seed")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--base", help="a site already running (python -m crawler.site --pages N), e.g. http://127.0.0.1:PORT")
    args = parser.parse_args()
    chosen = args.scenarios.split(",")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.base:
            base = args.base.rstrip("/")
        else:
            base = stack.enter_context(serve_in_subprocess(pages=args.pages, startup_timeout=600)).base_url
        workdir = stack.enter_context(tempfile.TemporaryDirectory())
        print(f"# site {base}: {args.pages} pages, ready in {time.perf_counter() - started:.0f} s; engine {args.engine}", flush=True)
        if "list" in chosen:
            scenario("list", [f"{base}/page/{n}" for n in range(args.pages)], 2, args, workdir)
        if "seed" in chosen:
            scenario("seed", [f"{base}/page/0"], args.seed_depth, args, workdir)


if __name__ == "__main__":
    main()
