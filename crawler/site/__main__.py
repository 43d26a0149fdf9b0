"""``python -m crawler.site``: see :mod:`.pages`."""

from .pages import main

main()
