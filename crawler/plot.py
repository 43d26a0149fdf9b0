"""Charts of a report: ``--plot PATH``.  matplotlib is an optional extra (``pip install 'crawler[plot]'``)."""

from __future__ import annotations

import os

from .errors import CrawlerError

FORMATS = (".png", ".svg")


def check_plot_path(path: str) -> None:
    """Refuse a bad ``--plot`` before crawling, not after."""
    if os.path.splitext(path)[1].lower() not in FORMATS:
        raise CrawlerError(f"--plot writes .png or .svg, not {path!r}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CrawlerError("--plot needs matplotlib: pip install 'crawler[plot]'") from None


# The figures the verdict reads, one panel each: how fast, what it cost the
# client, how long a fetch took.  (label, unit, value of one report entry)
PANELS = (
    ("pages/s", "", lambda e: e["pages_per_s"]),
    ("client CPU per page", "ms", lambda e: 1000 * e["cpu_s"] / e["urls"] if e["urls"] else 0.0),
    ("fetch p95", "ms", lambda e: e["fetch_ms"]["p95"]),
)


def draw(report: dict, path: str) -> None:
    """One panel per figure of :data:`PANELS`: bars per engine, or a line per engine against concurrency."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    engines = report["engines"]
    names = list(dict.fromkeys(e["engine"] for e in engines))
    levels = sorted({e["concurrency"] for e in engines})
    sweep = len(levels) > 1
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 4.2), dpi=120)
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    for ax, (label, unit, value) in zip(axes, PANELS):
        top = max((value(e) for e in engines), default=0.0) or 1.0
        if sweep:
            for name in names:
                points = sorted((e["concurrency"], value(e)) for e in engines if e["engine"] == name)
                ax.plot([c for c, _ in points], [v for _, v in points], marker="o", label=name, color=colors[name])
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(c) for c in levels])
            ax.set_xlabel("concurrency")
        else:
            values = [value(e) for e in engines]
            bars = ax.bar(names, values, color=[colors[n] for n in names])
            ax.bar_label(bars, labels=[_short(v) for v in values], padding=2)
            ax.set_xlabel(f"engine (concurrency {levels[0]})")
            ax.tick_params(axis="x", labelrotation=30 if len(names) > 3 else 0)
        ax.set_ylim(0, top * 1.18)  # from zero, and room for the labels inside the frame
        ax.set_title(label + (f" ({unit})" if unit else ""))
        ax.grid(axis="y", alpha=0.3)
    if sweep:
        axes[0].legend()
    settings = report["settings"]
    parse = "fetch only" if not settings.get("parse", True) else f"{settings.get('parse_workers')} parse workers"
    fig.suptitle(f"crawl report: {len(names)} engine{'s' if len(names) > 1 else ''}, {parse}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _short(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"
