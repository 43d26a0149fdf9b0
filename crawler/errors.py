"""Exceptions the command line turns into one-line messages: usage errors (exit 2), or :class:`OutputError` (exit 1)."""


class CrawlerError(Exception):
    """A user-facing error: its message is the whole story, no traceback needed."""


class UnknownEngineError(CrawlerError, KeyError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = known
        super().__init__(f"unknown engine {name!r}; known engines: {', '.join(known) or 'none'}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class PluginError(CrawlerError):
    """A plugin failed to import or to register."""


class DuplicateEngineError(CrawlerError):
    pass


class EngineUnavailableError(CrawlerError):
    """The engine is registered but cannot run here (a missing optional dependency)."""


class OutputError(CrawlerError):
    """An output failed mid-run (a full disk, an I/O error): the run stops, its report is printed, exit 1.

    Unlike the other errors here, this one comes after fetching began, so it
    is not a usage error.
    """
