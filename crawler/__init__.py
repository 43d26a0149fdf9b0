"""crawler: fetch a URL list with interchangeable concurrency engines and compare them."""

# The single place the version is written (pyproject.toml reads it from here):
# no importlib.metadata look-up at start-up.
__version__ = "0.1.0"

__all__ = ["Engine", "FetchResult", "Options", "Settings", "compare", "crawl", "hookimpl", "__version__"]


def __getattr__(name: str):
    # Loaded on first use, so that `crawl --version` imports none of it.
    if name in ("Engine", "FetchResult", "Settings"):
        from . import engines

        return getattr(engines, name)
    if name in ("crawl", "compare", "Options"):
        from . import api

        return getattr(api, name)
    if name == "hookimpl":
        from .hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'crawler' has no attribute {name!r}")
