"""Placeholder: the `pool` engine is being written (issue 3)."""

import crawler


@crawler.hookimpl
def crawler_engines():
    return []
