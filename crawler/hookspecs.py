"""Hook specifications: the whole surface a ``crawler`` plugin may implement.

A plugin is any module or object with functions marked ``@crawler.hookimpl``
whose names match the specs below.  Plugins are found three ways, all through
one plugin manager: the built-in engines through this project's own entry
points, third-party packages through the entry-point group ``crawler``, and
``crawl --plugin MODULE``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .engines import Engine

hookspec = pluggy.HookspecMarker("crawler")
hookimpl = pluggy.HookimplMarker("crawler")


@hookspec
def crawler_engines() -> "list[Engine]":
    """Return the engines this plugin provides.

    Called once when the engines are listed or looked up; every plugin's
    list is collected.  Each engine is an object with ``name`` (what
    ``--engine`` selects), ``description`` (one line for ``--list-engines``)
    and ``fetch(urls, settings)``, an iterator yielding exactly one
    :class:`crawler.FetchResult` per URL in any order — see
    :class:`crawler.engines.Engine` for the full contract.

    Engine names are unique: a second engine with a name already taken is an
    error naming both plugins, so a typo never silently shadows a built-in.

    :return: a list of engine objects (empty if the plugin has none).
    """
