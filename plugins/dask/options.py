"""The dask engine's ``--engine-opt`` keys: what each means, its default, and how its value is read.

``scheduler=tcp://HOST:PORT``
    use a running cluster; without it, a ``LocalCluster`` of one
    single-threaded worker process per core is started for the crawl and
    closed at its end (one for every ``--depth`` level and the sitemaps: the
    pipeline enters :meth:`DaskEngine.session` around them).
``batch=N``
    URLs per task (default :data:`DEFAULT_BATCH`, see there why).
``workers=N``
    worker processes of that LocalCluster (default: the CPU count).
``connect_timeout=S``
    seconds to reach the scheduler (default 5).
``worker_wait=S``
    seconds to wait for a first worker, or for one to come back when the
    cluster has none left, before giving up (default 60).
``parse=0``
    fetch only: the workers hash the pages but do not parse them, as with
    ``--no-parse`` (which reaches the engine as ``Settings.parse``).
``links=0|1``
    whether each page's link URLs travel back to the client; by default they
    do when the pipeline asks for them (``Settings.run.want_links``: ``--depth``
    or ``--record-links``).

A bad value is a :class:`~crawler.errors.CrawlerError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import crawler
from crawler.errors import CrawlerError

# URLs per task.  A task's fixed costs (a scheduler round trip, pickling, a
# fresh aiohttp session and its connections) are paid once per batch, and a
# batch's results come back only when its slowest URL is done.  See the
# README section on this engine for the measurements behind the choice.
DEFAULT_BATCH = 64
CONNECT_TIMEOUT_S = 5.0
WORKER_WAIT_S = 60.0

# What DaskEngine.options declares: every key Options.from_settings reads, in one line each.
DESCRIPTIONS: dict[str, str] = {
    "scheduler": "tcp://HOST:PORT of a running cluster (default: a LocalCluster for the crawl)",
    "batch": f"URLs per task (default {DEFAULT_BATCH})",
    "workers": "worker processes of the LocalCluster (default: the CPU count)",
    "connect_timeout": f"seconds to reach the scheduler (default {CONNECT_TIMEOUT_S:g})",
    "worker_wait": f"seconds to wait for a worker when the cluster has none (default {WORKER_WAIT_S:g})",
    "parse": "0: fetch only, the workers parse nothing (default: as the run parses)",
    "links": "0/1: send link URLs back or not (default: when --depth or --record-links needs them)",
}


@dataclasses.dataclass(frozen=True)
class Options:
    """The ``--engine-opt`` values of one run, read and checked."""

    scheduler: str | None
    batch: int
    workers: int
    connect_timeout: float
    worker_wait: float
    parse: bool
    links: bool

    @classmethod
    def from_settings(cls, settings: crawler.Settings) -> "Options":
        raw = settings.engine_options or {}
        return cls(
            scheduler=(raw.get("scheduler") or "").strip() or None,
            batch=_number(raw, "batch", DEFAULT_BATCH, int, 1),
            workers=_number(raw, "workers", os.cpu_count() or 1, int, 1),
            connect_timeout=_number(raw, "connect_timeout", CONNECT_TIMEOUT_S, float, 0.1),
            worker_wait=_number(raw, "worker_wait", WORKER_WAIT_S, float, 0.1),
            parse=_flag(raw, "parse", True) and settings.run.parse,
            links=_flag(raw, "links", settings.run.want_links),
        )


def _number(raw: Mapping[str, str], key: str, default, kind, minimum):
    if key not in raw:
        return default
    try:
        value = kind(raw[key])
    except ValueError:
        value = None
    if value is None or not value >= minimum:
        raise CrawlerError(f"--engine-opt {key} for dask expects a number >= {minimum}, got {raw[key]!r}")
    return value


def _flag(raw: Mapping[str, str], key: str, default: bool) -> bool:
    if key not in raw:
        return bool(default)
    lowered = raw[key].strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise CrawlerError(f"--engine-opt {key} for dask expects 1/0, true/false or yes/no, got {raw[key]!r}")
