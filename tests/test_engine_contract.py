"""Every registered engine's optional parts have the types ``crawler.engines.OptionalEngineParts`` states."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from crawler.engines import Engine, OptionalEngineParts
from crawler.plugins import engines, get_plugin_manager

REGISTERED = engines(get_plugin_manager())


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_optional_parts_have_the_stated_types(name):
    engine = REGISTERED[name]
    assert isinstance(engine, Engine)
    options = getattr(engine, "options", None)
    if options is not None:
        assert isinstance(options, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in options.items())
    assert isinstance(getattr(engine, "unavailable", None), (str, type(None)))
    assert isinstance(getattr(engine, "fetches_in_processes", False), bool)
    assert callable(getattr(engine, "session", callable))
    for part in ("imports", "forkserver_preload"):
        names = getattr(engine, part, ())
        assert isinstance(names, tuple) and all(isinstance(name, str) for name in names)
        for name in names:  # each exists (a typo would fail every run of the engine)
            __import__(name)


def test_the_protocol_declares_every_optional_part_the_core_reads():
    import re
    from pathlib import Path

    import crawler

    read = set()
    for source in Path(crawler.__file__).parent.glob("*.py"):
        read |= set(re.findall(r"getattr\((?:self\.)?engine, \"(\w+)\"", source.read_text()))
    declared = set(OptionalEngineParts.__annotations__) | {"session"}
    assert read - {"name"} <= declared, f"read with getattr but not declared in OptionalEngineParts: {read - declared}"
    assert {"options", "unavailable", "fetches_in_processes", "session", "imports", "forkserver_preload"} <= read
