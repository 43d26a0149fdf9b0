"""Does memory follow --concurrency, not the list?  Peak RSS and open fds, small list vs large.

For every engine, crawls N and 10×N URLs of the synthetic site (the URLs
wrap around its pages, so the server stays small) and prints peak RSS (the
report's ``peak_rss_mb``: crawl process plus children) and the most file
descriptors the crawl process and its children held, sampled while it runs.
The target of issue 4: peak RSS(10×N) ≤ 1.3 × peak RSS(N), fds flat.

    python benchmarks/memory.py                 # 20,000 vs 200,000 URLs, every engine
    python benchmarks/memory.py --small 2000 --engines asyncio,yield --no-parse
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from crawler.site import serve_in_subprocess


def fds_of(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.num_fds()
        except psutil.Error:
            pass
    return total


def crawl(url_file: str, engine: str, args: argparse.Namespace, workdir: str) -> dict:
    report = os.path.join(workdir, f"{engine}.json")
    command = [sys.executable, "-m", "crawler", url_file, "-e", engine, "-c", str(args.concurrency), "-q", "--report", report]
    if args.no_parse:
        command.append("--no-parse")
    if args.out:
        command += ["--out", os.path.join(workdir, "records.jsonl")]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    watched = psutil.Process(process.pid)
    peak_fds = [0]

    def sample() -> None:
        while process.poll() is None:
            try:
                peak_fds[0] = max(peak_fds[0], fds_of(watched))
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if process.wait(timeout=args.max_seconds) != 0:
        raise SystemExit(f"crawl failed for {engine}")
    sampler.join()
    [summary] = json.load(open(report))["engines"]
    return {
        "urls": summary["urls"],
        "ok": summary["ok"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "peak_fds": peak_fds[0],
        "pages_per_s": summary["pages_per_s"],
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--engines", default="pool,threads,yield,asyncio")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pages", type=int, default=1000, help="distinct pages of the site")
    parser.add_argument("--mean-kb", type=float, default=30.0)
    parser.add_argument("--no-parse", action="store_true")
    parser.add_argument("--out", action="store_true", help="also write records (to a temporary file)")
    parser.add_argument("--max-seconds", type=float, default=1800, help="bound on each crawl")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    figures = {}
    with tempfile.TemporaryDirectory() as workdir, serve_in_subprocess(pages=args.pages, mean_kb=args.mean_kb) as site:
        print(f"site: {site.base_url} ({args.pages} pages, {args.mean_kb} KB mean); parse: {not args.no_parse}")
        sizes = (args.small, args.small * args.factor)
        files = {}
        for size in sizes:
            files[size] = os.path.join(workdir, f"urls-{size}.txt")
            with open(files[size], "w") as f:
                f.writelines(f"{site.base_url}/page/{i}\n" for i in range(size))  # n ≥ pages wraps around
        print(f"{'engine':8} {'urls':>8} {'ok':>8} {'pages/s':>8} {'peak RSS MB':>12} {'peak fds':>9} {'s':>6}")
        for engine in args.engines.split(","):
            for size in sizes:
                row = crawl(files[size], engine, args, workdir)
                figures.setdefault(engine, {})[size] = row
                print(
                    f"{engine:8} {row['urls']:>8} {row['ok']:>8} {row['pages_per_s']:>8.0f} "
                    f"{row['peak_rss_mb']:>12.1f} {row['peak_fds']:>9} {row['seconds']:>6}",
                    flush=True,
                )
    print()
    verdict = True
    for engine, rows in figures.items():
        small, large = rows[sizes[0]], rows[sizes[1]]
        ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
        fd_growth = large["peak_fds"] - small["peak_fds"]
        met = ratio <= 1.3
        verdict &= met
        print(f"{engine:8} RSS {sizes[1]} / {sizes[0]} = {ratio:.2f} (target ≤ 1.30: {'met' if met else 'MISSED'}); fds {small['peak_fds']} → {large['peak_fds']} ({fd_growth:+d})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    sys.exit(0 if verdict else 1)


if __name__ == "__main__":
    main()
