"""Placeholder: the `dask` engine is being written (issue 7)."""

import crawler


@crawler.hookimpl
def crawler_engines():
    return []
