"""The synthetic site in a child process: started, watched and stopped from here.

:func:`serve_in_subprocess` runs ``python -m crawler.site`` and yields a
:class:`SiteProcess` once it listens; the child ends with the ``with``
block, or on its own when this process dies (it watches its stdin, a pipe
only this process holds).  :func:`demo_port_to_resume` finds the port a
resumed ``crawl --demo`` must serve on again.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import crawler

from .pages import SyntheticSite

__all__ = ["SiteProcess", "serve_in_subprocess", "demo_port_to_resume"]


class SiteProcess:
    """A synthetic site running in a child process (see :func:`serve_in_subprocess`).

    ``base_url`` is ``http://127.0.0.1:PORT`` (no trailing slash) and
    ``process`` the :class:`subprocess.Popen` of the server.
    """

    def __init__(self, base_url: str, process: subprocess.Popen, site: SyntheticSite):
        self.base_url = base_url
        self.process = process
        self.site = site  # parameters only: its pages are not generated in this process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pages(self) -> int:
        return self.site.pages

    def url(self, n: int) -> str:
        return f"{self.base_url}/page/{n}"

    def urls(self, count: int | None = None) -> Iterator[str]:
        """Page URLs: all pages once, or ``count`` URLs (wrapping around the site)."""
        if count is None:
            yield from self.site.urls(self.base_url)
        else:
            for n in range(count):
                yield f"{self.base_url}/page/{n}"

    def __str__(self) -> str:
        return self.base_url

    def __repr__(self) -> str:
        return f"SiteProcess({self.base_url!r}, pid={self.process.pid})"


def _stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` s, then SIGKILL; always reaps the child."""
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
    finally:
        # Even if interrupted above: make sure it is dead and reaped.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@contextlib.contextmanager
def serve_in_subprocess(
    pages: int = 1000,
    seed: int = 0,
    delay: float = 0.0,
    mean_kb: float = 30.0,
    host: str = "127.0.0.1",
    startup_timeout: float = 15.0,
    port: int = 0,
) -> Iterator[SiteProcess]:
    """Run ``python -m crawler.site`` in a child process; yield a :class:`SiteProcess`.

    The child generates its pages, listens on a free port (or ``port``) and
    reports its URL; this returns once it is ready (or raises
    :class:`RuntimeError` with the child's stderr after ``startup_timeout``
    s, or when it cannot listen on ``port``).  On exit, however it
    happens (KeyboardInterrupt included), the child gets SIGTERM, then
    SIGKILL after 5 s, and is reaped.  Should this process die without
    cleaning up, the child notices its stdin closing and exits too.
    """
    site = SyntheticSite(pages=pages, seed=seed, delay=delay, mean_kb=mean_kb)  # validates arguments
    if port:
        _wait_for_port(host, port, startup_timeout / 3)  # e.g. the site of a run just killed, still exiting
    cmd = [
        sys.executable, "-m", "crawler.site",
        "--host", host, "--port", str(int(port)), "--no-urls", "--exit-on-stdin-eof",
        "--pages", str(pages), "--seed", str(seed),
        "--delay", repr(float(delay)), "--mean-kb", repr(float(mean_kb)),
    ]
    env = dict(os.environ)
    # The child imports this very crawler, whether it is installed or not.
    package_root = str(Path(crawler.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"

    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errfile, env=env)
        try:
            first: list[bytes] = []
            reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
            reader.start()
            reader.join(startup_timeout)
            line = first[0].decode("utf-8", "replace").strip() if first else ""
            if not line.startswith("# crawler site http"):
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                reader.join(1.0)
                errfile.seek(0)
                err = errfile.read().decode("utf-8", "replace").strip()
                if not first:
                    why = f"was not ready within {startup_timeout:g} s"
                elif line:
                    why = "printed an unexpected first line"
                else:
                    why = f"exited with code {proc.returncode}"
                raise RuntimeError(f"synthetic site {why}: {line!r}\n{err}")
            base_url = line.split()[3]
            yield SiteProcess(base_url, proc, site)
        finally:
            _stop_process(proc)


def _wait_for_port(host: str, port: int, seconds: float) -> None:
    """Return once ``host:port`` can be listened on, or after ``seconds`` (the child then says why it cannot)."""
    import socket
    import time

    deadline = time.monotonic() + seconds
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp listens
            try:
                probe.bind((host, port))
                return
            except OSError:
                if time.monotonic() >= deadline:
                    return
        time.sleep(0.1)


def demo_port_to_resume(out: str | None, engines: list[str]) -> int:
    """The port of the demo site whose crawl ``--demo --resume`` continues, or 0 (any free port).

    The demo's URLs name its port, so a resumed demo must serve on the same
    one for its records and frontier to mean the same pages.  The port is
    read from the first record in ``out`` whose URL is a demo page, else
    from the first URL in a frontier state file of one of ``engines``
    (a crawl killed before its first record may have queued links).
    """
    import json

    from ..frontier import state_path
    from ..outputs import read_records

    def port_of(url: object) -> int:
        if isinstance(url, str):
            match = _DEMO_URL.match(url)
            if match:
                return int(match.group(1))
        return 0

    if not out:
        return 0
    try:
        for record in read_records(out):
            port = port_of(record.get("url"))
            if port:
                return port
    except (OSError, ValueError, sqlite3.Error):
        pass
    for engine in engines:
        try:
            with open(state_path(out, engine), "rb") as log:
                for line in log:
                    try:
                        fact = json.loads(line)
                    except ValueError:
                        continue
                    for item in fact if isinstance(fact, list) else ():
                        port = port_of(item)
                        if port:
                            return port
        except OSError:
            continue
    return 0


_DEMO_URL = re.compile(r"http://127\.0\.0\.1:(\d{1,5})/page/\d+$")
