"""What limited an engine's run, read off its own measurements.

Each verdict names the limiting resource and the figure that shows it.  The
rules, tried in this order (README "Report" lists them too):

1. **Nothing to judge**: no URL; every fetch failed (the codes are named);
   fewer than :data:`MIN_OK` ok pages or less than :data:`MIN_WALL_S` of
   crawling; fewer than half the URLs ok.
2. **parse-bound**: fetching stood still, waiting for room in the parse
   stage, for at least a quarter of the run.
3. **client CPU-bound**: fetching kept busy nearly all the cores its engine
   can use: one, for an engine whose fetching runs in one process (the GIL),
   or as many as it has fetching processes (``engine_stats``' ``processes``,
   or a cluster's ``workers``), at most every core.  CPU the engine reports
   spending on parsing where it fetches (``remote_parse_cpu_s``) counts as
   parsing, not fetching.
4. **machine CPU-bound**: the run's processes (engine, parse stage) together
   kept nearly every core of the machine busy.
5. **server-bound** / **latency-bound**: the requests in flight stayed near
   ``--concurrency`` (on average, by Little's law: the fetch time of all
   requests over the wall time), so pages/s is concurrency ÷ latency; the
   verdict says where the latency went.  When most of a fetch was waiting
   for the server's first byte, the server is what limited the run;
   otherwise the rest of the exchange (bodies, connections) did.
6. **under-filled**: neither the client nor the server was busy and fewer
   requests were in flight than allowed: the URL source, politeness limits
   or the engine's own start-up held the run back.

Whatever the verdict, a machine whose other processes (a local server,
other jobs) took a quarter of its cores or more during the run gets a note
saying how much: the figures above were measured on a shared machine.
"""

from __future__ import annotations

MIN_OK = 20  # fewer ok pages than this say nothing about speed
MIN_WALL_S = 0.5
PARSE_WAIT_SHARE = 0.25
BUSY = 0.8  # share of the available cores that counts as "kept busy"
FULL = 0.7  # share of --concurrency in flight that counts as "kept full"
SERVER_SHARE = 0.7  # share of a fetch spent waiting for the first byte
OTHERS_SHARE = 0.25  # share of the cores other processes (a server, other jobs) took, worth a note


def judge(engine: dict, cores: int, latency_s: float | None = None) -> str:
    """One line on what bounded this engine's run (``engine`` is its §7 report entry)."""
    line = _judge(engine, cores, latency_s)
    wall = engine["wall_s"] or 0.0
    others = (engine.get("machine_cpu_s", 0.0) - engine["cpu_s"]) / wall if wall else 0.0
    if others >= OTHERS_SHARE * cores and not line.startswith(("nothing", "every", "too")):
        line += f"; the machine was busy: other processes took {others:.2f} of its {cores} cores"
    return line


def _judge(engine: dict, cores: int, latency_s: float | None) -> str:
    urls, ok, wall = engine["urls"], engine["ok"], engine["wall_s"] or 0.0
    if urls == 0:
        return "nothing to judge: no URL was crawled"
    if ok == 0:
        return f"every fetch failed: {_codes(engine['errors'])}"
    if ok < MIN_OK or wall < MIN_WALL_S:
        return f"too short to judge: {ok} ok page{'s' if ok != 1 else ''} in {wall:.2f} s"
    if ok < urls / 2:
        return f"too few ok pages to judge: {ok} of {urls} ({_codes(engine['errors'])})"

    if engine["parse_wait_s"] >= PARSE_WAIT_SHARE * wall:
        parse_cores = engine["parse_cpu_s"] / wall
        return (
            f"parse-bound: fetching waited for the parse stage {engine['parse_wait_s'] / wall:.0%} of the run "
            f"(parsing kept {parse_cores:.2f} cores busy)"
        )

    used = engine["cpu_s"] / wall
    parse_cpu = engine["parse_cpu_s"] + ((engine.get("engine_stats") or {}).get("remote_parse_cpu_s") or 0.0)
    fetching = max(engine["cpu_s"] - parse_cpu, 0.0) / wall
    usable = min(_fetching_processes(engine, cores), cores)
    if usable > 1:
        if fetching >= BUSY * usable:
            return f"client CPU-bound: fetching used {fetching:.2f} of the {usable} cores its processes can use"
    elif fetching >= BUSY:
        return f"client CPU-bound: fetching kept its one core {min(fetching, 1.0):.0%} busy (one process: the GIL allows one core)"
    if used >= BUSY * cores:
        return (
            f"machine CPU-bound: the run used {used:.2f} of {cores} cores "
            f"({fetching:.2f} fetching and recording, {parse_cpu / wall:.2f} parsing)"
        )

    concurrency = engine["concurrency"] or 1
    in_flight = engine.get("mean_in_flight") or 0.0
    fetch_ms = engine["fetch_ms"]["p50"] or 0.0
    first_byte_ms = (engine.get("first_byte_ms") or {}).get("p50")
    rate = concurrency / (fetch_ms / 1000) if fetch_ms else 0.0
    filled = f"{in_flight:.1f} of {concurrency} requests in flight on average"
    if in_flight >= FULL * concurrency:
        ideal = f"; concurrency ÷ latency = {rate:,.0f} pages/s"
        if latency_s:
            ideal += f", the server's {latency_s * 1000:.0f} ms allow {concurrency / latency_s:,.0f}"
        if first_byte_ms is not None and fetch_ms and first_byte_ms >= SERVER_SHARE * fetch_ms:
            return (
                f"server-bound: fetches waited {first_byte_ms:,.0f} ms of {fetch_ms:,.0f} (p50) for the server's first byte, "
                f"{filled}{ideal}"
            )
        rest = f", {first_byte_ms:,.0f} ms of it to the first byte" if first_byte_ms is not None else ""
        return f"latency-bound: {filled}, each taking {fetch_ms:,.0f} ms (p50){rest}{ideal}"
    return (
        f"under-filled: only {filled} with the client at {fetching:.2f} cores: "
        f"the URL source, politeness limits or the engine's start-up held it back"
    )


def _fetching_processes(engine: dict, cores: int) -> int:
    """How many processes fetch: 1 unless the engine fetches in processes (its figure, else every core) or on a cluster's workers."""
    stats = engine.get("engine_stats") or {}
    if engine.get("fetches_in_processes"):
        return int(stats.get("processes") or cores)
    return int(stats.get("workers") or 1)


def _codes(errors: dict) -> str:
    top = sorted(errors.items(), key=lambda item: -item[1])[:3]
    text = ", ".join(f"{count} × {code}" for code, count in top)
    return text + (", …" if len(errors) > 3 else "")
