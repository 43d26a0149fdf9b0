"""The plugin manager: loading plugins and looking engines up.

Built-in engines are registered exactly like third-party ones, through the
entry-point group ``crawler``; core never imports an engine module by name.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import TYPE_CHECKING, Iterable, Mapping

import pluggy

from . import hookspecs
from .errors import CrawlerError, DuplicateEngineError, EngineUnavailableError, PluginError, UnknownEngineError

if TYPE_CHECKING:
    from .engines import Engine

ENTRY_POINT_GROUP = "crawler"
ENGINE_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # SPEC §3: nothing a terminal or a markup parser could act on


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
    """Import ``dotted`` and register it.

    The current directory is searched too, after everything else on
    ``sys.path`` (so a module there never shadows an installed one): a plugin
    file beside the URL list is found as ``python -m`` would find it.
    """
    if pm.get_plugin(dotted) is not None:
        return
    _search_current_directory()
    try:
        module = importlib.import_module(dotted)
    except Exception as exc:  # any failure of a user's module is a usage error
        raise PluginError(f'error importing plugin "{dotted}": {type(exc).__name__}: {exc}') from None
    try:
        pm.register(module, name=dotted)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f'error registering plugin "{dotted}": {exc}') from None


def _search_current_directory() -> None:
    here = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == here for entry in sys.path if isinstance(entry, str)):
        sys.path.append(here)
        importlib.invalidate_caches()


def engines(pm: pluggy.PluginManager) -> dict[str, Engine]:
    """Every registered engine by name, in registration order.

    An engine name must match :data:`ENGINE_NAME`; another name, a name
    registered twice, or a ``crawler_engines()`` that raises is a
    :class:`PluginError` naming the plugin.
    """
    found: dict[str, Engine] = {}
    owners: dict[str, str] = {}
    for impl in pm.hook.crawler_engines.get_hookimpls():  # registration order
        # one plugin at a time, to know whose engines these are; through the hook, so that
        # CRAWLER_TRACE_PLUGINS traces the call
        others = [plugin for plugin in pm.get_plugins() if plugin is not impl.plugin]
        try:
            [offered] = pm.subset_hook_caller("crawler_engines", others)() or [[]]
            offered = list(offered or [])
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name}: crawler_engines() failed: {type(exc).__name__}: {exc}") from None
        for engine in offered:
            name = getattr(engine, "name", None)
            if not isinstance(name, str) or not ENGINE_NAME.fullmatch(name):
                raise PluginError(
                    f"plugin {impl.plugin_name} registers an engine named {name!r}: "
                    "an engine name is letters, digits, '_', '.' and '-' only"
                )
            if name in found:
                raise DuplicateEngineError(f"engine {name!r} is registered twice: by {owners[name]} and by {impl.plugin_name}")
            found[name] = engine
            owners[name] = impl.plugin_name
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


def check_engine_options(chosen: Iterable[Engine], given: Mapping[str, str]) -> None:
    """Refuse an ``--engine-opt`` key that no engine of the run reads (each declares its ``options``).

    An engine without an ``options`` attribute (a plugin older than it) may
    read any key: with one in the run, nothing can be refused.
    """
    chosen = list(chosen)
    if any(getattr(engine, "options", None) is None for engine in chosen):
        return
    declared = {key: engine.name for engine in chosen for key in (getattr(engine, "options", None) or {})}
    for key in given:
        if key not in declared:
            names = ", ".join(engine.name for engine in chosen)
            keys = ", ".join(f"{k} ({declared[k]})" for k in sorted(declared)) or "none"
            raise CrawlerError(f"--engine-opt {key}: no engine of this run ({names}) reads it; the keys they read: {keys}")
