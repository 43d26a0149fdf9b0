"""The ``crawl`` command: options, exit codes, progress on stderr, report on stdout.

Exit status (SPEC §3): 0 the crawl ran to the end; 1 it could not go on (an
output failed mid-run) or went wrong (a record-accounting bug); 2 a usage
error, found before anything is fetched or opened for writing; 130 Ctrl-C;
143 SIGTERM.  Every message is one line on stderr, with anything a server,
a plugin or a user typed made terminal-safe.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import enum
import os
import signal
import sys
import types
from typing import TYPE_CHECKING, Annotated, Callable, Iterator, Optional

from . import __version__
from .errors import CrawlerError, OutputError

if TYPE_CHECKING:
    from .api import Options

# Everything else is imported where it is used, typer included: _app()
# imports it and binds it (and ClickException) as a global of this module,
# where crawl()'s string annotations and the handlers below find it.  So
# `crawl --version` and `crawl --list-engines`, which main() answers before
# building the app, load no typer or pydantic, and `--help` loads typer and
# nothing of the crawler's (no engine client, numpy, rich table or plugin);
# tests/test_startup.py keeps it so.


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


class OneLineErrors:
    """Usage errors as one line on stderr and exit 2: no usage dump, no traceback.

    Help is plain text in panels (no rich: ``crawl --help`` starts fast and
    reads at 80 columns).  Mixed into typer's TyperCommand by :func:`_app`,
    which is when typer is imported.
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


def _first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + ("." if dot else "")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crawl {__version__}")
        raise typer.Exit()


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
    args = _Args(**{name: value for name, value in locals().items() if name != "version"})
    if list_engines:
        raise typer.Exit(_list_engines(args.plugin or []))
    try:
        job = _prepare(args)
    except CrawlerError as exc:
        _error(str(exc))
        raise typer.Exit(ExitCode.USAGE) from None
    summaries: list[dict] = []
    code = _run_job(job, summaries)
    if summaries:
        code = _present(job, summaries, code)
    raise typer.Exit(code)


class _Args(types.SimpleNamespace):
    """The command line's values, by option name (``crawl``'s parameters)."""


@dataclasses.dataclass
class _Job:
    """What a valid command line asks for: engines, levels, options, and where everything goes."""

    args: _Args
    chosen: list
    levels: list[int]
    options: "Options"
    records_to_stdout: bool

    @property
    def sweep(self) -> bool:
        return len(self.levels) > 1


def _list_engines(plugin: list[str]) -> ExitCode:
    from .plugins import engines, get_plugin_manager
    from .text import terminal_safe

    try:
        for name, found in engines(get_plugin_manager(plugin)).items():
            reason = getattr(found, "unavailable", None)
            keys = ", ".join(getattr(found, "options", None) or {})
            line = f"{name:10} {found.description}" + (f" [--engine-opt {keys}]" if keys else "")
            _echo(terminal_safe(line + (f" [unavailable: {reason}]" if reason else "")))
    except CrawlerError as exc:
        _error(str(exc))
        return ExitCode.USAGE
    return ExitCode.OK


def _prepare(args: _Args) -> _Job:
    """Check the command line before anything is fetched or opened for writing (a CrawlerError: exit 2)."""
    from .api import Options
    from .outputs import STDOUT, check_outputs
    from .plugins import check_engine_options, get_engines, get_plugin_manager
    from .text import terminal_safe

    skipped: list[str] = []
    chosen = get_engines(get_plugin_manager(args.plugin or []), args.engine or ["asyncio"], skipped)
    for note in skipped:
        typer.echo(terminal_safe(f"crawl: skipping {note}"), err=True)
    if args.demo == (args.urls_file is not None or bool(args.sitemap)):
        raise CrawlerError("give a URLS_FILE (or --sitemap URL) or --demo (one of the two)")
    levels = _concurrency_levels(args.concurrency)
    engine_opts = _engine_options(args.engine_opt or [])
    check_engine_options(chosen, engine_opts)
    if args.plot:
        from .plot import check_plot_path

        check_plot_path(args.plot)
    refusals = [
        (args.depth and args.no_parse, "--depth follows the links the parse stage finds: it cannot go with --no-parse"),
        (args.resume and not args.out, "--resume needs --out PATH: the file whose records say what is done"),
        (args.resume and args.out == STDOUT, "--resume reads back what --out wrote: give a file, not '-' (stdout)"),
        (args.report == STDOUT, "--report writes a file; --json prints the report on stdout"),
    ]
    for refused, message in refusals:
        if refused:
            raise CrawlerError(message)
    options = Options(
        concurrency=levels, timeout=args.timeout, retries=args.retries, max_bytes=args.max_bytes, parse=not args.no_parse,
        parse_workers=args.parse_workers, parse_timeout=args.parse_timeout, depth=args.depth, same_host=args.same_host,
        max_pages=args.max_pages, record_links=args.record_links, per_host=args.per_host, delay=args.delay,
        robots=args.robots, user_agent=args.user_agent, ca_file=args.ca_file, engine_opts=engine_opts,
        sitemap=tuple(args.sitemap or ()), plugin=tuple(args.plugin or ()),
    )  # fmt: skip
    options.check()
    check_outputs(args.urls_file, {"--out": args.out, "--report": args.report, "--plot": args.plot}, resume=args.resume)
    return _Job(args, chosen, levels, options, records_to_stdout=args.out == STDOUT)


def _run_job(job: _Job, summaries: list[dict]) -> ExitCode:
    """Every engine at every level, records to ``--out``; each run's summary into ``summaries``."""
    from .text import terminal_safe

    previous = {sig: signal.signal(sig, _interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = ExitCode.OK
    try:
        with contextlib.ExitStack() as stack:
            sources, total, exclude = _sources(job, stack)
            writer = _open_records(job)
            stack.callback(writer.close)
            progress = stack.enter_context(_progress(job.args.quiet))
            if total is None and job.args.urls_file not in (None, "-"):
                from .urls import count_url_lines

                total = count_url_lines(job.args.urls_file)  # one streaming pass: the ETA, and pool sizes
            from .pipeline import preload_for

            preload_for(job.chosen)
            for level in job.levels:
                for engine in job.chosen:
                    stats = _run_one(job, engine, level, sources, writer, progress, total, exclude, summaries)
                    if stats.accounting_error:
                        message = f"crawl: BUG: {_label(job, engine, level)}: {stats.accounting_error}"
                        typer.secho(terminal_safe(message), err=True, fg="red", bold=True)
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
    return code


def _sources(job: _Job, stack: contextlib.ExitStack) -> tuple[Callable[[], Iterator[str]], int | None, frozenset[int]]:
    """A fresh URL iterator per engine run, the URL count when known, and the pids that are not the run's (the demo site)."""
    args = job.args
    if not args.demo:
        if args.urls_file is None:  # --sitemap alone
            return (lambda: iter(())), None, frozenset()
        return stack.enter_context(_url_sources(args.urls_file, several=len(job.chosen) * len(job.levels) > 1)), None, frozenset()
    from .site import demo_port_to_resume, serve_in_subprocess

    port = demo_port_to_resume(args.out, [e.name for e in job.chosen]) if args.resume else 0  # its URLs name the port
    try:
        site = stack.enter_context(
            serve_in_subprocess(pages=args.demo_pages, delay=args.demo_delay, mean_kb=args.demo_page_kb, port=port)
        )
    except RuntimeError as exc:
        if not port:
            raise
        raise CrawlerError(
            f"--demo --resume: the demo site must listen on 127.0.0.1:{port} again, as in the run being resumed, "
            f"and cannot ({str(exc).splitlines()[0]}); free that port, or crawl again without --resume"
        ) from None
    return site.urls, args.demo_pages, frozenset({site.process.pid})


def _open_records(job: _Job):
    from .outputs import drop_torn_tail, open_writer, record_keys

    if job.args.resume:
        drop_torn_tail(job.args.out)
    return open_writer(job.args.out, append=job.args.resume, keys=record_keys(job.args.record_links))


def _label(job: _Job, engine, level: int) -> str:
    return f"{engine.name} c={level}" if job.sweep else engine.name


def _run_one(job: _Job, engine, level: int, sources, writer, progress, total, exclude, summaries: list[dict]):
    """One engine at one level: its records written, its progress line, its summary kept (also when stopped)."""
    from .frontier import state_path
    from .outputs import CompletedUrls
    from .pipeline import run_engine, sized
    from .text import terminal_safe

    args = job.args
    done = CompletedUrls(args.out, engine.name) if args.resume else None
    task = advance = None
    if progress is not None:
        expected = None if total is None or args.depth else max(total - (len(done) if done else 0), 0)
        task = progress.add_task(terminal_safe(_label(job, engine, level)), total=expected, failed=0, rate="")
        advance = _advancer(progress, task)
    deep_file = args.depth and args.out and not job.records_to_stdout
    try:
        stats = run_engine(
            engine, sized(sources(), total), job.options.settings().replace(concurrency=level), job.options.run_options(), writer.write,
            advance, exclude, done.take if done else None, state=state_path(args.out, engine.name) if deep_file else None,
            resume=args.resume, sitemaps=job.options.sitemap, notify=lambda line: typer.echo(terminal_safe(f"crawl: {line}"), err=True),
        )  # fmt: skip
    except BaseException as exc:
        if hasattr(exc, "run_stats"):
            summaries.append(dict(exc.run_stats.summary(), sweep=job.sweep))
        raise
    finally:
        if task is not None:  # its clock stops now, not when the last engine ends
            progress.update(task, total=progress.tasks[task].completed)
            progress.stop_task(task)
    summaries.append(dict(stats.summary(), sweep=job.sweep))
    return stats


def _present(job: _Job, summaries: list[dict], code: ExitCode) -> ExitCode:
    """The report: to ``--report``, as a table or JSON, and as a chart; a file that cannot be written is exit 1."""
    from rich.console import Console

    from .report import build_report, render_sweep, render_table, write_report
    from .text import terminal_safe

    args = job.args
    extra = {"demo": args.demo, "urls_file": args.urls_file, "concurrency_levels": job.levels}
    if args.demo:
        extra.update(demo_pages=args.demo_pages, demo_delay=args.demo_delay, demo_page_kb=args.demo_page_kb)
    settings, options = job.options.settings(), job.options.run_options()
    document = build_report(summaries, settings, options, extra, latency_s=args.demo_delay if args.demo else None)
    if args.report:
        try:
            write_report(document, args.report)
        except OSError as exc:
            _error(f"cannot write {args.report}: {exc.strerror or exc}")
            code = code or ExitCode.FAILED
    console = Console(soft_wrap=False, stderr=job.records_to_stdout)  # with records on stdout, the report goes beside the progress
    if args.json_report:
        import json

        typer.echo(json.dumps(document, indent=2), err=job.records_to_stdout)
    elif job.sweep:
        render_sweep(document, console)
    else:
        render_table(document, console)
    if args.plot:
        from .plot import draw

        try:
            draw(document, args.plot)
        except Exception as exc:  # a full disk, or matplotlib refusing: one line, not a traceback
            _error(f"cannot write {args.plot}: {getattr(exc, 'strerror', None) or exc}")
            code = code or ExitCode.FAILED
        else:
            typer.echo(terminal_safe(f"crawl: chart written to {args.plot}"), err=True)
    return code


def _error(message: str) -> None:
    """One line on stderr: ``crawl: error: ...``, with nothing in it a terminal would act on."""
    from .text import terminal_safe

    _echo(f"crawl: error: {terminal_safe(message)}", err=True)


def _echo(text: str, err: bool = False) -> None:
    """``text`` and a newline on stdout (stderr with ``err``), flushed: what ``typer.echo`` writes, without typer.

    As click does, a stream set up as ASCII gets UTF-8 with unencodable
    characters replaced, instead of a UnicodeEncodeError.
    """
    stream = sys.stderr if err else sys.stdout
    if stream is None:  # no stream attached (pythonw)
        return
    text += "\n"
    try:
        ascii_stream = codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "ascii"
    except LookupError:
        ascii_stream = False
    if ascii_stream and hasattr(stream, "buffer"):
        stream.flush()
        stream.buffer.write(text.encode("utf-8", "replace"))
        stream.buffer.flush()
        return
    stream.write(text)
    stream.flush()


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
    import shutil
    import tempfile

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
    if quiet:  # before rich is imported: a quiet run needs none of it
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
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


def _quick_answer(argv: list[str]) -> int | None:
    """The exit status of ``crawl --version`` or ``crawl --list-engines [--plugin MODULE]...``,
    answered here; None for any other command line, which typer parses.

    typer 0.29 converts every option's value through a pydantic TypeAdapter,
    built on first use: importing typer and pydantic and building the
    adapters would take most of the 0.25 s these commands may take (issue
    13).  Only command lines whose meaning is plain are answered here; the
    output and exit status are those typer's path gives.
    """
    if any(name.startswith("_") and name.endswith("_COMPLETE") for name in os.environ):
        return None  # a shell asking click to complete a word
    if argv == ["--version"]:
        _echo(f"crawl {__version__}")
        return ExitCode.OK
    plugins = _list_engines_plugins(argv)
    return None if plugins is None else _list_engines(plugins)


def _list_engines_plugins(argv: list[str]) -> list[str] | None:
    """The ``--plugin`` values of a command line made of ``--list-engines`` and ``--plugin MODULE`` only; else None."""
    plugins: list[str] = []
    listing = False
    words = iter(argv)
    for word in words:
        if word == "--list-engines":
            listing = True
        elif word.startswith("--plugin="):
            plugins.append(word.partition("=")[2])
        elif word == "--plugin":
            value = next(words, None)
            if value is None or value.startswith("-"):  # left to click's own reading (and its usage error)
                return None
            plugins.append(value)
        else:
            return None
    return plugins if listing else None


def _app():
    """The typer application, built on first use (see the comment at the top)."""
    global typer, ClickException, _APP
    if _APP is None:
        import typer
        from typer.core import TyperCommand

        try:  # typer >= 0.16 vendors click
            from typer._click.exceptions import ClickException
        except ImportError:  # pragma: no cover - older typer on real click
            from click.exceptions import ClickException

        _APP = typer.Typer(
            add_completion=False,
            context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
            pretty_exceptions_enable=False,
            rich_markup_mode=None,
        )
        command = type("OneLineErrors", (OneLineErrors, TyperCommand), {"__doc__": OneLineErrors.__doc__})
        _APP.command(cls=command)(crawl)
    return _APP


_APP = None


def __getattr__(name: str):
    if name == "app":  # crawler.cli.app, as before it was built lazily
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    try:
        code = _quick_answer(sys.argv[1:])
    except KeyboardInterrupt:  # as typer's path ends it: 130, no traceback
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:  # the reader left (`crawl --list-engines | head -1`): as typer's path, exit 1 quietly
        _silence_standard_streams()
        code = ExitCode.FAILED
    if code is not None:
        sys.exit(int(code))
    _app()()


def _silence_standard_streams() -> None:
    """Point stdout and stderr at /dev/null, so that the interpreter's last flush raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.dup2(devnull, stream.fileno())
