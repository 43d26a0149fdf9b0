"""Formatting the throughput report: a side-by-side table and a JSON document."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .pipeline import RunOptions
from .engines import Settings
from .text import terminal_safe
from .verdict import judge


def build_report(
    summaries: list[dict],
    settings: Settings,
    options: RunOptions,
    extra_settings: dict | None = None,
    latency_s: float | None = None,
) -> dict:
    """The ``--report`` document of SPEC §7, each engine with its speed relative to the fastest.

    ``latency_s``, when the server's response time is known (``--demo-delay``),
    lets the verdict say how close each engine came to concurrency ÷ latency.
    """
    fastest = max((s["pages_per_s"] for s in summaries), default=0) or 1e-9
    cores = os.cpu_count() or 1
    engines = [dict(s, relative=s["pages_per_s"] / fastest, verdict=judge(s, cores, latency_s)) for s in summaries]
    merged = {**settings.options(), **asdict(options), **(extra_settings or {})}
    merged["engine_options"] = dict(settings.engine_options)
    return {
        "engines": engines,
        "settings": merged,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def write_report(report: dict, path: str) -> None:
    """The report as JSON, figures unrounded; an ``OSError`` (a full disk) is the caller's to report."""
    text = json.dumps(report, indent=2) + "\n"  # whole before the file is touched
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _text(value: object, style: str = "") -> Text:
    """A table cell or line: never read as markup, never an escape sequence."""
    return Text(terminal_safe(value), style=style)


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
    ("client cores", "client_cores", "{:.2f}"),
    ("first byte p50 ms", ("first_byte_ms", "p50"), "{:,.1f}"),
    ("mean in flight", "mean_in_flight", "{:,.1f}"),
    ("peak in flight", "peak_in_flight", "{}"),
    ("peak read-ahead", "peak_read_ahead", "{}"),
    ("peak parse backlog", "peak_parse_backlog", "{}"),
]


def render_table(report: dict, console: Console) -> None:
    """Engines side by side as columns, one metric per row (figures rounded here, and only here)."""
    engines = report["engines"]
    table = Table(title="crawl report", title_justify="left")
    table.add_column("", style="bold")
    for engine in engines:
        label = _label(engine) + (" (interrupted)" if engine.get("interrupted") else "")
        table.add_column(_text(label), justify="right")
    for label, key, fmt in ROWS:
        cells = []
        for engine in engines:
            value = (engine[key[0]] or {}).get(key[1]) if isinstance(key, tuple) else engine[key]
            cells.append(_text("-" if value is None else fmt.format(value)))
        table.add_row(label, *cells)
    table.add_row("errors", *(_text(_errors(engine["errors"])) for engine in engines))
    console.print(table)
    _verdicts(report, console)


def _verdicts(report: dict, console: Console) -> None:
    for engine in report["engines"]:
        console.print(Text.assemble(_text(_label(engine), "bold"), ": ", _text(engine["verdict"])), soft_wrap=True)


def _label(engine: dict) -> str:
    return engine["engine"] if not engine.get("sweep") else f"{engine['engine']} c={engine['concurrency']}"


def render_sweep(report: dict, console: Console) -> None:
    """A concurrency sweep: pages/s with engines as rows and concurrency levels as columns."""
    levels = sorted({e["concurrency"] for e in report["engines"]})
    table = Table(title="pages/s by concurrency", title_justify="left")
    table.add_column("engine", style="bold")
    for level in levels:
        table.add_column(f"c={level}", justify="right")
    for name in dict.fromkeys(e["engine"] for e in report["engines"]):
        cells = {e["concurrency"]: e for e in report["engines"] if e["engine"] == name}
        table.add_row(_text(name), *(f"{cells[c]['pages_per_s']:,.1f}" if c in cells else "-" for c in levels))
    console.print(table)
    _verdicts(report, console)


def _errors(errors: dict) -> str:
    return ", ".join(f"{code} {count}" for code, count in errors.items()) or "-"
