"""``dask``: fetch and parse on a Dask cluster (the engine is in :mod:`.run` until it is cut along its seams)."""

from .run import DaskEngine, crawler_engines  # noqa: F401  (crawler_engines: the hook the registry calls)
