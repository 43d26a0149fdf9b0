"""Start-up: the quick commands load only what they need (issue 13: each within 0.25 s as a whole process).

What a command imports is checked, not how long it takes: timings on a shared
machine are noise, the modules loaded are not.  ``benchmarks/startup.py``
measures the times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENGINE_CLIENTS = ["aiohttp", "h11", "requests", "urllib3", "numpy", "selectolax", "dask", "distributed"]
REPORT_AND_CHART = ["matplotlib", "rich.table", "rich.progress", "crawler.pipeline", "crawler.outputs"]
# typer converts every option through pydantic; the quick answers skip both (see crawler.cli.main).
COMMAND_LINE = ["typer", "pydantic"]


def loaded_by(args: list[str], modules: list[str]) -> tuple[list[str], subprocess.CompletedProcess]:
    """Which of ``modules`` ``crawl ARGS`` has imported by the time it exits."""
    probe = (
        "import json, runpy, sys\n"
        f"sys.argv = ['crawl', *{args!r}]\n"
        "try:\n    runpy.run_module('crawler', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))\n"
    )
    env = {name: value for name, value in os.environ.items() if not name.endswith("_COMPLETE")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1]), result


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_import_no_engine_client_report_table_or_chart(args):
    loaded, _ = loaded_by(args, ENGINE_CLIENTS + REPORT_AND_CHART + ["pydantic"])
    assert loaded == []


@pytest.mark.parametrize("args", [["--list-engines"], ["--list-engines", "--plugin", "no:dask"], ["--plugin=no:yield", "--list-engines"]])
def test_list_engines_imports_no_engine_client(args):
    loaded, result = loaded_by(args, ENGINE_CLIENTS + REPORT_AND_CHART)
    assert loaded == []
    assert "threads" in result.stdout


@pytest.mark.parametrize("args", [["--version"], ["--list-engines"], ["--list-engines", "--plugin", "no:pool"]])
def test_version_and_list_engines_are_answered_without_typer(args):
    loaded, _ = loaded_by(args, COMMAND_LINE)
    assert loaded == []


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--list-engines"],
        ["--list-engines", "--plugin", "no:dask", "--plugin=no:yield"],
        ["--list-engines", "--plugin", "crawler_no_such_plugin"],  # exit 2, one line on stderr
    ],
)
def test_a_quick_answer_is_what_typer_answers(args):
    """The same command line once answered early and once parsed by typer (``-q`` changes nothing here but the path)."""

    def run(*extra: str) -> tuple:
        done = subprocess.run([sys.executable, "-m", "crawler", *args, *extra], capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout, done.stderr

    quick, parsed = run(), run("-q")
    assert quick == parsed
    assert "typer" in loaded_by([*args, "-q"], COMMAND_LINE)[0]  # the second went through typer indeed


def test_a_plugin_option_without_a_value_is_left_to_typer():
    # `--plugin --list-engines` names a plugin "--list-engines" for click: no listing
    done = subprocess.run([sys.executable, "-m", "crawler", "--plugin", "--list-engines"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("crawl: error: ")


@pytest.mark.parametrize("args", [["--version"], ["--list-engines"]])
def test_a_reader_gone_ends_a_quick_answer_as_typer_does(args):
    """stdout a pipe whose reader has left (``crawl --list-engines | head -0``): exit 1, nothing on stderr."""

    def run(*extra: str) -> tuple:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            done = subprocess.run([sys.executable, "-m", "crawler", *args, *extra], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(write_end)
        return done.returncode, done.stderr

    assert run() == run("-q") == (1, "")
