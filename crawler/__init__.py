"""crawler: fetch a URL list with interchangeable concurrency engines and compare them."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crawler")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"

from .engines import Engine, FetchResult, Settings  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402

__all__ = ["Engine", "FetchResult", "Settings", "hookimpl", "__version__"]
