"""Run a command and wait for it *and every process it left behind*; report their CPU time.

    python benchmarks/cputree.py [--print] -- COMMAND [ARG...]

``getrusage(RUSAGE_CHILDREN)`` only counts descendants that were waited for,
up the chain to the caller.  A ``multiprocessing`` forkserver is not waited
for by the process that started it: when that process exits, the forkserver
(whose own children, the pool workers, it did reap) is re-parented to init
and its CPU time is lost to everyone.  This wrapper makes itself a
"child subreaper" (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``), so such orphans
are re-parented to it instead; it reaps every one of them (for at most
``--grace`` seconds after the command exits) and exits with the command's
status.  Whoever waits for this wrapper then gets the CPU time of the whole
process tree in its own ``RUSAGE_CHILDREN``; ``--print`` also writes it to
stderr, as the last line, ``cputree: cpu_s=... wall_s=... exit_s=...``:
``exit_s`` is the command's whole process, from starting it to its exit
(what a user waits for), ``wall_s`` runs on until the last process it left
behind was reaped.  Both leave out this wrapper's own start-up.

benchmarks/run.py runs every contestant through it, for the "tree CPU"
column (start-up included) and the whole-process wall time.  On other systems it still runs the command,
without the subreaper.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="write the tree's CPU and wall seconds to stderr")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait for left-behind processes (default %(default)s)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    t0 = time.perf_counter()
    proc = subprocess.Popen(command)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        code = proc.wait()
    exited = time.perf_counter() - t0
    deadline = time.monotonic() + args.grace
    while time.monotonic() < deadline:  # reap what was re-parented to us
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.01)
    wall = time.perf_counter() - t0
    if args.print:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(f"cputree: cpu_s={kids.ru_utime + kids.ru_stime:.3f} wall_s={wall:.3f} exit_s={exited:.3f}", file=sys.stderr)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
