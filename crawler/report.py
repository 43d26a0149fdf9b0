"""Formatting the throughput report: a side-by-side table and a JSON document."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from .pipeline import RunOptions
from .engines import Settings


def build_report(summaries: list[dict], settings: Settings, options: RunOptions, extra_settings: dict | None = None) -> dict:
    """The ``--report`` document of SPEC §7, each engine with its speed relative to the fastest."""
    fastest = max((s["pages_per_s"] for s in summaries), default=0) or 1e-9
    engines = [dict(s, relative=round(s["pages_per_s"] / fastest, 3)) for s in summaries]
    merged = {**asdict(settings), **asdict(options), **(extra_settings or {})}
    merged["engine_options"] = dict(settings.engine_options)
    return {
        "engines": engines,
        "settings": merged,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def write_report(report: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


ROWS = [
    ("urls", "urls", "{}"),
    ("ok", "ok", "{}"),
    ("failed", "failed", "{}"),
    ("pages/s", "pages_per_s", "{:,.1f}"),
    ("relative", "relative", "{:.2f}×"),
    ("MB/s", "mb_per_s", "{:,.2f}"),
    ("wall s", "wall_s", "{:.2f}"),
    ("skipped", "skipped", "{}"),
    ("fetch p50 ms", ("fetch_ms", "p50"), "{:,.1f}"),
    ("fetch p95 ms", ("fetch_ms", "p95"), "{:,.1f}"),
    ("fetch p99 ms", ("fetch_ms", "p99"), "{:,.1f}"),
    ("fetch max ms", ("fetch_ms", "max"), "{:,.1f}"),
    ("cpu s", "cpu_s", "{:.2f}"),
    ("parse cpu s", "parse_cpu_s", "{:.2f}"),
    ("peak RSS MB", "peak_rss_mb", "{:,.0f}"),
]


def render_table(report: dict, console: Console) -> None:
    """Engines side by side as columns, one metric per row."""
    engines = report["engines"]
    table = Table(title="crawl report", title_justify="left")
    table.add_column("", style="bold")
    for engine in engines:
        label = engine["engine"] + (" (interrupted)" if engine.get("interrupted") else "")
        table.add_column(label, justify="right")
    for label, key, fmt in ROWS:
        cells = []
        for engine in engines:
            value = engine[key[0]][key[1]] if isinstance(key, tuple) else engine[key]
            cells.append(fmt.format(value))
        table.add_row(label, *cells)
    table.add_row("errors", *(_errors(engine["errors"]) for engine in engines))
    console.print(table)


def _errors(errors: dict) -> str:
    return ", ".join(f"{code} {count}" for code, count in errors.items()) or "-"
