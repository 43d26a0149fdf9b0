"""The plugin manager's promises beyond engine selection: tracing, and --engine-opt keys checked against the engines."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crawler.errors import CrawlerError
from crawler.plugins import check_engine_options, get_engines, get_plugin_manager


def test_trace_plugins_shows_every_crawler_engines_call():
    done = subprocess.run(
        [sys.executable, "-m", "crawler", "--list-engines"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "CRAWLER_TRACE_PLUGINS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = [line for line in done.stderr.splitlines() if line.strip().startswith("finish crawler_engines")]
    assert len(calls) == len(done.stdout.splitlines())  # one traced call per registered engine's plugin


def test_an_engine_opt_no_chosen_engine_declares_is_refused_with_the_keys_that_exist():
    pm = get_plugin_manager()
    pool, threads = get_engines(pm, ["pool", "threads"])
    check_engine_options([pool, threads], {"chunksize": "4"})  # pool's
    with pytest.raises(CrawlerError, match="chunk_size.*chunksize"):
        check_engine_options([pool, threads], {"chunk_size": "4"})
    with pytest.raises(CrawlerError, match="chunksize"):
        check_engine_options([threads], {"chunksize": "4"})


def test_an_engine_that_declares_no_options_attribute_may_read_any_key():
    class Legacy:
        name, description = "legacy", "a plugin older than the options attribute"

    check_engine_options([Legacy()], {"anything": "1"})
