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


def draw(report: dict, path: str) -> None:
    """Bars of pages/s per engine; with several concurrency levels, a line per engine."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    engines = report["engines"]
    names = list(dict.fromkeys(e["engine"] for e in engines))
    levels = sorted({e["concurrency"] for e in engines})
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if len(levels) > 1:
        for name in names:
            points = sorted((e["concurrency"], e["pages_per_s"]) for e in engines if e["engine"] == name)
            ax.plot([c for c, _ in points], [p for _, p in points], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrency")
        ax.legend()
    else:
        speeds = [e["pages_per_s"] for e in engines]
        bars = ax.bar(names, speeds, color="#4878a8")
        ax.bar_label(bars, labels=[f"{s:,.0f}" for s in speeds], padding=2)
        ax.set_xlabel(f"engine (concurrency {levels[0]})")
    ax.set_ylabel("pages/s")
    settings = report["settings"]
    parse = "fetch only" if not settings.get("parse", True) else f"parse workers {settings.get('parse_workers')}"
    ax.set_title(f"crawl: pages/s ({parse})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
