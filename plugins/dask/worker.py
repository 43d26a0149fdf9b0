"""The worker side: the task a Dask worker runs for each batch, and what a worker process keeps between tasks.

Nothing here runs on the client, but in tests that call :func:`run_batch`
directly.  The client sends these functions by reference (``client.submit``,
``client.run``), so every worker needs this crawler installed, the same
version.

A task fetches its URLs with the ``asyncio`` engine, got from the plugin
registry as any caller gets an engine (:func:`asyncio_engine`), so fetching
has the same semantics as everywhere; it parses each HTML page as it comes
with :func:`crawler.parse.parse_batch`, the function the local parse stage
runs, and sends back no body.  The fields of a page it does not parse come
from :func:`crawler.records.unparsed_fields`: the client's pipeline builds
every record (:func:`crawler.records.make_record`); the workers never do.

Kept per worker process: the asyncio engine (looked up once), one
politeness gate per connection (:func:`gate_for`), and the CA file a run
sent (:func:`_ca_path`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import tempfile
import threading
import time

import crawler
from crawler.politeness import HostGate
from crawler.records import has_body, unparsed_fields

# Gates a worker process keeps (connections that ended without dropping theirs, e.g. a lost client).
KEEP_GATES = 4

_lock = threading.Lock()  # for the state below, shared by the worker's task threads
_engine: crawler.Engine | None = None
_gates: collections.OrderedDict[str, "ClusterGate"] = collections.OrderedDict()  # gate token -> its gate
_ca_paths: dict[str, str] = {}  # sha256 of a PEM -> the file holding it


def asyncio_engine() -> crawler.Engine:
    """The ``asyncio`` engine from the plugin registry, looked up once per worker process.

    Through the registry, not by importing its module: no plugin imports
    another.  The worker's registry holds the engines installed there (no
    ``--plugin`` of the client's); ``asyncio`` is a built-in, so it is there
    whenever the crawler is installed.
    """
    global _engine
    with _lock:
        if _engine is None:
            from crawler.plugins import engines, get_plugin_manager

            found = engines(get_plugin_manager()).get("asyncio")
            if found is None:
                raise RuntimeError("no engine 'asyncio' is registered here: install the crawler on this worker (pip install)")
            _engine = found
        return _engine


def ready() -> float:
    """Run on every worker as a run starts: the asyncio engine looked up now, not in the first task; the CPU so far."""
    asyncio_engine()
    return _cpu_s()


def _cpu_s() -> float:
    """User+sys CPU of this worker process so far."""
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


def gate_for(token: str, crawl_delay_share: int, settings: crawler.Settings) -> "ClusterGate":
    """The connection's gate in this worker process, shared by its tasks here; made by the first of them."""
    with _lock:
        gate = _gates.get(token)
        if gate is None:
            gate = _gates[token] = ClusterGate(
                settings.per_host, settings.delay, settings.robots, settings.user_agent or _default_agent(), crawl_delay_share
            )
            while len(_gates) > KEEP_GATES:
                _gates.popitem(last=False)
        else:
            _gates.move_to_end(token)
        return gate


def _default_agent() -> str:
    from crawler.fetching import default_user_agent

    return default_user_agent()


def after_run(token: str, drop: bool = True) -> tuple[float, dict | None]:
    """Run on every worker as a run ends: its CPU so far and its gate's figures (the gate dropped unless a session keeps it)."""
    with _lock:
        gate = _gates.pop(token, None) if drop else _gates.get(token)
    return _cpu_s(), gate.stats() if gate is not None else None


def drop_gate(token: str) -> None:
    """Run on every worker as a session ends: its gate in this worker process goes."""
    with _lock:
        _gates.pop(token, None)


class ClusterGate(HostGate):
    """A HostGate whose robots.txt ``Crawl-delay`` is spread over ``share`` worker processes.

    When a host's URLs may go to any of N worker processes, each keeps N ×
    the Crawl-delay between its own requests to it, so that the host sees
    about one request per Crawl-delay from the cluster as a whole.
    """

    def __init__(self, per_host, delay, robots, user_agent, share: int):
        super().__init__(per_host, delay, robots, user_agent)
        self.share = max(1, int(share))

    def learn_robots(self, key, status, text):
        super().learn_robots(key, status, text)
        if self.share > 1 and status is not None and 200 <= status < 300:
            with self._lock:
                host = self._host(key)
                crawl_delay = getattr(host.robots, "crawl_delay", None)
                seconds = crawl_delay(self.user_agent) if crawl_delay else None
                if seconds:
                    host.delay = max(host.delay, float(seconds) * self.share)


def _ca_path(pem: bytes) -> str:
    """A file holding ``pem`` on this worker (ssl wants a path), written once per content."""
    digest = hashlib.sha256(pem).hexdigest()
    with _lock:
        path = _ca_paths.get(digest)
        if path is None or not os.path.exists(path):
            handle, path = tempfile.mkstemp(prefix="crawler-ca-", suffix=".pem")
            with os.fdopen(handle, "wb") as out:
                out.write(pem)
            _ca_paths[digest] = path
    return path


def run_batch(
    batch_id: int,
    urls: list[str],
    settings: crawler.Settings,
    parse: tuple[bool, bool],
    ca_pem: bytes | None,
    gate_spec: tuple[str, int] | None = None,
) -> dict:
    """One task: fetch ``urls`` here, parse each HTML page as it arrives, send back no body.

    ``parse`` is (parse pages, send their link URLs back); ``gate_spec`` is
    (the connection's gate token, the Crawl-delay share), None without
    politeness.  Returns the batch id, one :class:`crawler.FetchResult` per
    URL with ``parsed`` set, the worker's address, and the task's CPU seconds
    (``cpu_s``, of which ``parse_cpu_s`` parsing) for :mod:`.accounting`.
    """
    from crawler.parse import is_html, parse_batch

    started = time.process_time()
    parse_pages, want_links = parse
    parse_cpu = 0.0
    if ca_pem:
        settings = settings.replace(ca_file=_ca_path(ca_pem))
    if gate_spec is not None:
        token, share = gate_spec
        settings = settings.with_run(gate=gate_for(token, share, settings))
    results = []
    # The asyncio engine runs its event loop in this thread whenever the loop below asks for the
    # next result: a page is parsed between two such waits, while the other fetches wait for it.
    for result in asyncio_engine().fetch(urls, settings):
        body = result.body
        error, detail = result.error, result.detail
        fields = None
        if parse_pages and result.ok and is_html(result.content_type, body):
            item = (result.final_url or result.url, body, result.content_type)
            [outcome], cpu = parse_batch([item], None, True) if want_links else parse_batch([item])
            parse_cpu += cpu
            if isinstance(outcome, dict):
                fields = outcome  # sha256 included
            else:  # the local parse stage writes such a page as error "parse", the message as detail
                error, detail = "parse", outcome
        if fields is None:  # not parsed: the fields make_record gives such a page
            fields = unparsed_fields(body if has_body(result) else None)
        results.append(
            dataclasses.replace(
                result,
                body=body if settings.run.want_bodies else b"",  # the client reads them (sitemaps), else they stay here
                size=len(body),
                parsed=fields,
                error=error,
                detail=detail,
                headers=dict(result.headers),
            )
        )
    return {
        "id": batch_id,
        "results": results,
        "worker": _worker_address(),
        "cpu_s": time.process_time() - started,
        "parse_cpu_s": parse_cpu,
    }


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # run outside a worker (a test calling the task directly)
        return f"pid:{os.getpid()}"
