"""FastAPI inference service for the VAE in ``model``: app factory in ``service.main``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vae-service")
except PackageNotFoundError:  # running from a source checkout that was never installed
    __version__ = "0.0.0+source"
