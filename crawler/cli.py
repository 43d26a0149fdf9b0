"""The ``crawl`` command: options, exit codes, progress on stderr, report on stdout.

Exit status (SPEC §3): 0 the crawl ran to the end; 1 it could not go on (an
output failed mid-run) or went wrong (a record-accounting bug); 2 a usage
error, found before anything is fetched or opened for writing; 130 Ctrl-C;
143 SIGTERM.  Every message is one line on stderr, with anything a server,
a plugin or a user typed made terminal-safe.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import signal
import sys
import tempfile
from typing import Annotated, Callable, Iterator, Optional

import typer
from typer.core import TyperCommand

try:  # typer >= 0.16 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on real click
    from click.exceptions import ClickException

from . import __version__
from .errors import CrawlerError, OutputError

# Everything else is imported where it is used: `crawl --version` and
# `--help` load typer and nothing of the crawler's (no engine client, numpy,
# rich table or plugin); tests/test_cli.py keeps it so.


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # the run could not go on (an output failed mid-run), or went wrong (an accounting bug)
    USAGE = 2
    INTERRUPTED = 130
    TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the run winds down like on Ctrl-C.

    A KeyboardInterrupt, because libraries let exactly that (and SystemExit)
    through their own error handling: asyncio's transports log any other
    BaseException as a fatal write error, with a traceback.
    """


# --help, grouped: every option of the command is in exactly one panel
# (tests/test_cli.py checks it), each with the first sentence of its help.
HELP_PANELS = {
    "Engines: which concurrency models run, and how wide": [
        "--engine", "--concurrency", "--engine-opt", "--plugin", "--list-engines",
    ],
    "Fetching: one request's limits, the same in every engine": [
        "--timeout", "--retries", "--max-bytes", "--user-agent", "--ca-file",
    ],
    "Parsing: the process pool that reads pages while fetching goes on": [
        "--no-parse", "--parse-workers", "--parse-timeout",
    ],
    "Politeness and following: other people's servers, links, sitemaps": [
        "--robots", "--per-host", "--delay", "--depth", "--same-host", "--max-pages", "--sitemap", "--record-links",
    ],
    "Input and output: where URLs come from, where records go": [
        "URLS_FILE", "--out", "--resume", "--demo", "--demo-pages", "--demo-delay", "--demo-page-kb",
    ],
    "Report: the comparison, as a table, JSON or a chart": [
        "--report", "--json", "--plot", "--quiet", "--version", "--help",
    ],
}  # fmt: skip
HELP_METAVARS = {
    "--engine": "NAME", "--concurrency": "N[,N...]", "--timeout": "SECONDS", "--retries": "N", "--max-bytes": "N",
    "--user-agent": "TEXT", "--ca-file": "PEM", "--parse-workers": "N", "--parse-timeout": "SECONDS",
    "--per-host": "N", "--delay": "SECONDS", "--depth": "N", "--max-pages": "N", "--out": "PATH",
    "--demo-pages": "N", "--demo-delay": "SECONDS", "--demo-page-kb": "KB", "--report": "PATH",
}  # fmt: skip
HELP_EXAMPLES = [
    ("crawl urls.txt -e asyncio,threads --out records.jsonl", "two engines, one record per URL each"),
    ("crawl --demo -e all --plot report.png", "every engine on the built-in site, no network"),
    ("crawl urls.txt --depth 2 --out crawl.jsonl --resume", "a deep crawl, picked up where it stopped"),
]
HELP_EXIT_CODES = [
    ("0", "the crawl ran to its end (failed URLs are records, not errors)"),
    ("1", "it could not go on (an output failed mid-run)"),
    ("2", "usage error, found before anything is fetched"),
    ("130, 143", "stopped by Ctrl-C or SIGTERM; what was fetched is written"),
]


class OneLineErrors(TyperCommand):
    """Usage errors as one line on stderr and exit 2: no usage dump, no traceback.

    Help is plain text in panels (no rich: ``crawl --help`` starts fast and
    reads at 80 columns).
    """

    def format_help(self, ctx, formatter) -> None:
        self.format_usage(ctx, formatter)
        formatter.write_paragraph()
        formatter.write_text(self.help or "")
        records = {}
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or param.name.upper()
                records[name] = (name, _first_sentence(getattr(param, "help", None) or ""))
                continue
            record = param.get_help_record(ctx)
            if record is None:
                continue
            longest = max(param.opts, key=len)
            if param.is_flag or longest not in HELP_METAVARS and param.metavar is None:
                names = record[0].split(" <")[0]  # a flag, or a name without a placeholder worth showing
            else:
                names = f"{', '.join(param.opts)} {param.metavar or HELP_METAVARS[longest]}"
            records[longest] = (names, _first_sentence(record[1]))
        for panel, names in HELP_PANELS.items():
            with formatter.section(panel):
                formatter.write_dl([records.pop(name) for name in names if name in records])
        if records:  # an option added without a panel still shows
            with formatter.section("Other"):
                formatter.write_dl(list(records.values()))
        with formatter.section("Examples"):
            indent = " " * formatter.current_indent
            for command, what in HELP_EXAMPLES:  # as they are typed: not re-wrapped
                formatter.write(f"{indent}{command}\n{indent}    {what}\n")
        with formatter.section("Exit status"):
            formatter.write_dl(HELP_EXIT_CODES)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            _error(exc.format_message())
            code = ExitCode.USAGE
        except typer.Abort:
            code = ExitCode.INTERRUPTED
        if not standalone_mode:
            return code
        sys.exit(int(code or 0))


app = typer.Typer(
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + ("." if dot else "")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crawl {__version__}")
        raise typer.Exit()


@app.command(cls=OneLineErrors)
def crawl(
    urls_file: Annotated[Optional[str], typer.Argument(help="File with one URL per line; '-' reads stdin.", show_default=False, metavar="URLS_FILE")] = None,
    engine: Annotated[Optional[list[str]], typer.Option("--engine", "-e", help="Engine name; repeatable and comma-separated; 'all' runs every registered engine.", show_default="asyncio")] = None,
    concurrency: Annotated[str, typer.Option("--concurrency", "-c", help="Requests in flight at once (processes for pool, threads for threads, coroutines otherwise); a list such as 1,8,32 sweeps every engine over each level.")] = "32",
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds for a whole request: connect, headers and body.")] = 10.0,
    retries: Annotated[int, typer.Option(min=0, help="Extra tries for connection errors, timeouts and 502/503/504, with exponential backoff.")] = 1,
    max_bytes: Annotated[int, typer.Option(min=1, help="Largest decoded body kept; a larger one is the error too_large.")] = 10 * 1024 * 1024,
    parse_workers: Annotated[int, typer.Option(min=0, help="Processes in the parse stage; 0 parses in the main process.", show_default="CPU count")] = os.cpu_count() or 1,
    no_parse: Annotated[bool, typer.Option("--no-parse", help="Skip the parse stage (fetch-only throughput).")] = False,
    parse_timeout: Annotated[float, typer.Option(min=0.01, help="Seconds one page may spend in the parse stage; past it the page gets error 'parse'.")] = 5.0,
    out: Annotated[Optional[str], typer.Option(help="Write records to this file, one per URL per engine: .jsonl (JSON Lines, the default), .csv, or .sqlite/.db (table 'records').")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="With --out: skip URLs that already have a record for the engine in that file, append the rest; with --depth, continue from the frontier kept beside it (OUT.ENGINE.frontier).")] = False,
    report: Annotated[Optional[str], typer.Option(help="Write the throughput report as JSON to this file.")] = None,
    plugin: Annotated[Optional[list[str]], typer.Option(help="Import MODULE and register it as a plugin; repeatable. 'no:NAME' blocks an installed plugin.", metavar="MODULE")] = None,
    list_engines: Annotated[bool, typer.Option("--list-engines", help="Print every registered engine and exit.")] = False,
    demo: Annotated[bool, typer.Option("--demo", help="Crawl the built-in synthetic site on a free loopback port (no network).")] = False,
    demo_pages: Annotated[int, typer.Option(min=1, help="--demo: number of pages of the synthetic site.")] = 1000,
    demo_delay: Annotated[float, typer.Option(min=0.0, help="--demo: seconds the site waits before each response.")] = 0.0,
    demo_page_kb: Annotated[float, typer.Option(min=6.0, help="--demo: mean page size in KB (pages range from 1/6 to 8/3 of it).")] = 30.0,
    plot: Annotated[Optional[str], typer.Option(help="Draw the report as a chart (.png or .svg): bars per engine, or lines against concurrency for a sweep.", metavar="PATH")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    user_agent: Annotated[Optional[str], typer.Option(help="User-Agent sent by every engine, robots.txt fetches included.", show_default="crawler/VERSION (+URL)")] = None,
    per_host: Annotated[Optional[int], typer.Option(min=1, help="Requests in flight per host (hostname and port).", show_default="no limit beyond --concurrency")] = None,
    delay: Annotated[float, typer.Option(min=0.0, help="Minimum seconds between two request starts to one host (a robots.txt Crawl-delay raises it).")] = 0.0,
    depth: Annotated[int, typer.Option(min=0, help="Follow links found by the parse stage, breadth-first, this many levels from the list.")] = 0,
    same_host: Annotated[bool, typer.Option("--same-host/--any-host", help="When following, stay on the host of the page the link was found on.")] = True,
    max_pages: Annotated[Optional[int], typer.Option(min=1, help="When following, queue new links only while records plus queued URLs stay within this number; list lines are always crawled.")] = None,
    record_links: Annotated[bool, typer.Option("--record-links", help="Records carry link_urls: the page's distinct resolved http(s) links, in document order.")] = False,
    sitemap: Annotated[Optional[list[str]], typer.Option("--sitemap", help="Add the page URLs of this sitemap (indexes, .xml.gz and robots.txt Sitemap: lines followed) to the list, as depth-0 URLs; repeatable; URLS_FILE becomes optional.", metavar="URL")] = None,
    robots: Annotated[bool, typer.Option("--robots/--no-robots", help="Obey robots.txt: fetched once per host per engine run; 4xx allows all, 5xx disallows the host.")] = True,
    ca_file: Annotated[Optional[str], typer.Option(help="Also trust the CA certificates in this PEM file for https.")] = None,
    engine_opt: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE option passed to the engine through Settings; repeatable.", metavar="KEY=VALUE")] = None,
    json_report: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout instead of a table.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Fetch URLS_FILE with one or more concurrency engines, parse every page, report throughput."""
    from .plugins import engines as registered_engines
    from .plugins import get_engines, get_plugin_manager
    from .text import terminal_safe

    if list_engines:
        try:
            pm = get_plugin_manager(plugin or [])
            for name, found in registered_engines(pm).items():
                reason = getattr(found, "unavailable", None)
                line = f"{name:10} {found.description}" + (f" [unavailable: {reason}]" if reason else "")
                typer.echo(terminal_safe(line))
        except CrawlerError as exc:
            _error(str(exc))
            raise typer.Exit(ExitCode.USAGE) from None
        return

    from rich.console import Console

    from .engines import Settings
    from .fetching import default_user_agent
    from .frontier import state_path
    from .outputs import STDOUT, CompletedUrls, check_outputs, drop_torn_tail, open_writer, record_keys
    from .pipeline import RunOptions, run_engine
    from .report import build_report, render_sweep, render_table, write_report
    from .urls import count_url_lines

    records_to_stdout = out == STDOUT  # then the report goes to stderr, beside the progress
    stdout = Console(soft_wrap=False, stderr=records_to_stdout)
    try:
        pm = get_plugin_manager(plugin or [])
        skipped: list[str] = []
        chosen = get_engines(pm, engine or ["asyncio"], skipped)
        for note in skipped:
            typer.echo(terminal_safe(f"crawl: skipping {note}"), err=True)
        if demo == (urls_file is not None or bool(sitemap)):
            raise CrawlerError("give a URLS_FILE (or --sitemap URL) or --demo (one of the two)")
        levels = _concurrency_levels(concurrency)
        if plot:
            from .plot import check_plot_path

            check_plot_path(plot)
        settings = Settings(
            concurrency=levels[0],
            timeout=timeout,
            retries=retries,
            max_bytes=max_bytes,
            user_agent=user_agent or default_user_agent(),
            ca_file=ca_file,
            engine_options=_engine_options(engine_opt or []),
            per_host=per_host,
            delay=delay,
            robots=robots,
        )
        options = RunOptions(
            parse=not no_parse,
            parse_workers=parse_workers,
            parse_timeout=parse_timeout,
            depth=depth,
            same_host=same_host,
            max_pages=max_pages,
            record_links=record_links,
        )
        if depth and no_parse:
            raise CrawlerError("--depth follows the links the parse stage finds: it cannot go with --no-parse")
        if resume and not out:
            raise CrawlerError("--resume needs --out PATH: the file whose records say what is done")
        if resume and records_to_stdout:
            raise CrawlerError("--resume reads back what --out wrote: give a file, not '-' (stdout)")
        if report == STDOUT:
            raise CrawlerError("--report writes a file; --json prints the report on stdout")
        if ca_file and not os.path.isfile(ca_file):
            raise CrawlerError(f"CA file not found: {ca_file}")
        check_outputs(urls_file, {"--out": out, "--report": report, "--plot": plot}, resume=resume)
    except CrawlerError as exc:
        _error(str(exc))
        raise typer.Exit(ExitCode.USAGE) from None

    summaries: list[dict] = []
    code = ExitCode.OK
    previous = {sig: signal.signal(sig, _interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            if demo:
                from .site import demo_port_to_resume, serve_in_subprocess

                port = demo_port_to_resume(out, [e.name for e in chosen]) if resume else 0  # its URLs name the port
                try:
                    site = stack.enter_context(serve_in_subprocess(pages=demo_pages, delay=demo_delay, mean_kb=demo_page_kb, port=port))
                except RuntimeError as exc:
                    if not port:
                        raise
                    raise CrawlerError(
                        f"--demo --resume: the demo site must listen on 127.0.0.1:{port} again, as in the run being resumed, "
                        f"and cannot ({str(exc).splitlines()[0]}); free that port, or crawl again without --resume"
                    ) from None
                sources: Callable[[], Iterator[str]] = site.urls
                total: int | None = demo_pages
                exclude = frozenset({site.process.pid})
            else:
                sources = stack.enter_context(_url_sources(urls_file, several=len(chosen) > 1)) if urls_file else (lambda: iter(()))
                total, exclude = None, frozenset()
            if resume:
                drop_torn_tail(out)
            writer = open_writer(out, append=resume, keys=record_keys(record_links))
            stack.callback(writer.close)
            progress = stack.enter_context(_progress(quiet))
            if progress is not None and total is None and urls_file and urls_file != "-":
                total = count_url_lines(urls_file)  # one streaming pass, for the ETA
            sweep = len(levels) > 1
            for level, selected in ((level, selected) for level in levels for selected in chosen):
                run_settings = settings.replace(concurrency=level)
                label = f"{selected.name} c={level}" if sweep else selected.name
                done = CompletedUrls(out, selected.name) if resume else None
                task = advance = None
                if progress is not None:
                    expected = None if total is None or depth else max(total - (len(done) if done else 0), 0)
                    task = progress.add_task(terminal_safe(label), total=expected, failed=0, rate="")
                    advance = _advancer(progress, task)
                try:
                    stats = run_engine(
                        selected, sources(), run_settings, options, writer.write, advance, exclude, done.take if done else None,
                        state=state_path(out, selected.name) if depth and out and not records_to_stdout else None,
                        resume=resume, sitemaps=sitemap or (), notify=lambda line: typer.echo(terminal_safe(f"crawl: {line}"), err=True),
                    )  # fmt: skip
                except BaseException as exc:
                    if hasattr(exc, "run_stats"):
                        summaries.append(dict(exc.run_stats.summary(), sweep=sweep))
                    raise
                finally:
                    if task is not None:  # its clock stops now, not when the last engine ends
                        progress.update(task, total=progress.tasks[task].completed)
                        progress.stop_task(task)
                summaries.append(dict(stats.summary(), sweep=sweep))
                if stats.accounting_error:
                    typer.secho(terminal_safe(f"crawl: BUG: {label}: {stats.accounting_error}"), err=True, fg="red", bold=True)
                    code = ExitCode.FAILED
    except OutputError as exc:  # mid-run: what was written stays, the report is still printed
        _error(str(exc))
        code = ExitCode.FAILED
    except CrawlerError as exc:
        _error(str(exc))
        raise typer.Exit(ExitCode.USAGE) from None
    except Terminated:
        code = ExitCode.TERMINATED
    except KeyboardInterrupt:
        code = ExitCode.INTERRUPTED
    finally:
        if code not in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
            for sig, handler in previous.items():  # after a stop, a second Ctrl-C must still exit at once
                signal.signal(sig, handler)
    if code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
        typer.echo("crawl: interrupted; the report covers what completed", err=True)
    if summaries:
        extra = {"demo": demo, "urls_file": urls_file, "concurrency_levels": levels}
        if demo:
            extra.update(demo_pages=demo_pages, demo_delay=demo_delay, demo_page_kb=demo_page_kb)
        document = build_report(summaries, settings, options, extra, latency_s=demo_delay if demo else None)
        if report:
            try:
                write_report(document, report)
            except OSError as exc:
                _error(f"cannot write {report}: {exc.strerror or exc}")
                code = code or ExitCode.FAILED
        if json_report:
            import json

            typer.echo(json.dumps(document, indent=2), err=records_to_stdout)
        elif len(levels) > 1:
            render_sweep(document, stdout)
        else:
            render_table(document, stdout)
        if plot:
            from .plot import draw

            try:
                draw(document, plot)
            except Exception as exc:  # a full disk, or matplotlib refusing: one line, not a traceback
                _error(f"cannot write {plot}: {getattr(exc, 'strerror', None) or exc}")
                code = code or ExitCode.FAILED
            else:
                typer.echo(terminal_safe(f"crawl: chart written to {plot}"), err=True)
    raise typer.Exit(code)


def _error(message: str) -> None:
    """One line on stderr: ``crawl: error: ...``, with nothing in it a terminal would act on."""
    from .text import terminal_safe

    typer.echo(f"crawl: error: {terminal_safe(message)}", err=True)


def _interrupted(signum, frame):
    """First SIGINT/SIGTERM: wind down, keep what was fetched. A second one: leave now."""
    signal.signal(signal.SIGINT, _exit_now)
    signal.signal(signal.SIGTERM, _exit_now)
    stop = KeyboardInterrupt() if signum == signal.SIGINT else Terminated()
    from .pipeline import RECORDING

    if RECORDING.busy:  # between writing a record and counting it: raised as that step ends
        RECORDING.pending = stop
        return
    raise stop


def _exit_now(signum, frame):
    os._exit(128 + signum)


def _concurrency_levels(value: str) -> list[int]:
    try:
        levels = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise CrawlerError(f"--concurrency expects a number or a list like 1,8,32, got {value!r}") from None
    if not levels or min(levels) < 1:
        raise CrawlerError(f"--concurrency must be at least 1, got {value!r}")
    return list(dict.fromkeys(levels))


def _engine_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CrawlerError(f"--engine-opt expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = value
    return options


@contextlib.contextmanager
def _url_sources(path: str, several: bool):
    """A callable giving a fresh lazy URL iterator per engine run.

    stdin can be read once only, so with several engines it is first spooled
    to a temporary file (streamed, never held in memory).
    """
    from .urls import open_url_file, read_url_lines

    stream = open_url_file(path)
    if path == "-" and several:
        with tempfile.TemporaryFile() as spool:
            shutil.copyfileobj(stream, spool)
            stream = None

            def from_spool() -> Iterator[str]:
                spool.seek(0)
                yield from read_url_lines(spool)

            yield from_spool
        return
    if path == "-":
        yield lambda: read_url_lines(stream)
        return
    stream.close()
    opened: list = []

    def from_file() -> Iterator[str]:
        handle = open_url_file(path)
        opened.append(handle)
        return read_url_lines(handle)

    try:
        yield from_file
    finally:
        for handle in opened:
            handle.close()


@contextlib.contextmanager
def _progress(quiet: bool):
    """A progress display on stderr when it is a terminal: per engine, done/total, pages/s, failures, ETA."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield None
        return
    with Progress(
        TextColumn("{task.description:>8}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}", markup=False),
        TextColumn("{task.fields[failed]} failed", markup=False),
        TimeElapsedColumn(),
        TextColumn("eta", markup=False),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        refresh_per_second=4,
    ) as progress:
        yield progress


def _advancer(progress, task) -> Callable[[dict], None]:
    """The per-record progress callback: one more done, failures counted, pages/s since the engine started."""
    failed = 0

    def advance(record: dict) -> None:
        nonlocal failed
        failed += not record["ok"]
        state = progress.tasks[task]
        elapsed = state.elapsed or 0.0
        rate = f"{(state.completed + 1) / elapsed:,.0f} pages/s" if elapsed > 0.5 else ""
        progress.update(task, advance=1, failed=failed, rate=rate)

    return advance


def main() -> None:
    app()
