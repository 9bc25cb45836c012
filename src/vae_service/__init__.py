"""VAEs as a service: ``client`` (httpx and numpy only), ``model`` (pure torch),
``training`` (the offline CLIs) and ``server`` (FastAPI; app factory in ``server.main``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vae-service")
except PackageNotFoundError:  # running from a source checkout that was never installed
    __version__ = "0.0.0+source"
