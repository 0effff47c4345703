"""gate: a validation gate for generative models kept in an MLflow registry."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gate-mri")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
