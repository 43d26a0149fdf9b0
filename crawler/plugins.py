"""The plugin manager: loading plugins and looking engines up.

Built-in engines are registered exactly like third-party ones, through the
entry-point group ``crawler``; core never imports an engine module by name.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Iterable

import pluggy

from . import hookspecs
from .engines import Engine
from .errors import DuplicateEngineError, EngineUnavailableError, PluginError, UnknownEngineError

ENTRY_POINT_GROUP = "crawler"


def get_plugin_manager(plugins: Iterable[str] = (), *, autoload: bool = True) -> pluggy.PluginManager:
    """A fresh, loaded plugin manager.

    Order: entry points of the group ``crawler`` (built-ins and installed
    third-party plugins) → each ``plugins`` module (``--plugin``) →
    ``check_pending()``, which turns a misspelt hook name into an error.
    ``no:NAME`` in ``plugins`` blocks the entry point ``NAME``.
    """
    pm = pluggy.PluginManager("crawler")
    pm.add_hookspecs(hookspecs)
    plugins = list(plugins)
    for spec in plugins:
        if spec.startswith("no:"):
            pm.set_blocked(spec[3:])
    if autoload:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for spec in plugins:
        if not spec.startswith("no:"):
            register_module(pm, spec)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"invalid plugin: {exc}") from None
    if os.environ.get("CRAWLER_TRACE_PLUGINS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def register_module(pm: pluggy.PluginManager, dotted: str) -> None:
    if pm.get_plugin(dotted) is not None:
        return
    try:
        module = importlib.import_module(dotted)
    except Exception as exc:  # any failure of a user's module is a usage error
        raise PluginError(f'error importing plugin "{dotted}": {type(exc).__name__}: {exc}') from None
    try:
        pm.register(module, name=dotted)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f'error registering plugin "{dotted}": {exc}') from None


def engines(pm: pluggy.PluginManager) -> dict[str, Engine]:
    """Every registered engine by name, in registration order."""
    found: dict[str, Engine] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.crawler_engines.get_hookimpls():  # registration order
        for engine in impl.function() or []:
            if engine.name in found:
                raise DuplicateEngineError(
                    f"engine {engine.name!r} is registered twice: by {owners[engine.name]} and by {impl.plugin_name}"
                )
            found[engine.name] = engine
            owners[engine.name] = impl.plugin_name
    return found


def get_engines(pm: pluggy.PluginManager, names: Iterable[str], skipped: list[str] | None = None) -> list[Engine]:
    """Engines for ``--engine`` values: comma-separated, repeatable, ``all``.

    ``all`` leaves out engines that cannot run here, noting each in
    ``skipped``; naming such an engine is an error that says why.
    """
    known = engines(pm)
    chosen: list[Engine] = []
    for value in names:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            if name == "all":
                for engine in known.values():
                    reason = getattr(engine, "unavailable", None)
                    if reason:
                        if skipped is not None:
                            skipped.append(f"{engine.name} ({reason})")
                    elif engine not in chosen:
                        chosen.append(engine)
                continue
            engine = known.get(name)
            if engine is None:
                raise UnknownEngineError(name, list(known))
            reason = getattr(engine, "unavailable", None)
            if reason:
                raise EngineUnavailableError(f"engine {name!r} is unavailable: {reason}")
            if engine not in chosen:
                chosen.append(engine)
    if not chosen:
        raise UnknownEngineError("", list(known))
    return chosen
