"""Errors a user can act on.

Every error raised for bad input names the bad value and what would be valid, so
the command line can print it as-is (no traceback) and exit non-zero.
"""

from __future__ import annotations

__all__ = ["BenchbookError", "ConfigError", "ModelError", "WeightsError", "UnavailableError"]


class BenchbookError(Exception):
    """Base class: a problem the user can fix; printed without a traceback."""


class ConfigError(BenchbookError, ValueError):
    """A run parameter or a config file field is invalid."""


class ModelError(BenchbookError):
    """A model folder could not be found, read or built."""


class WeightsError(BenchbookError):
    """A weights file does not exist, is not a state dict or does not fit the model."""


class UnavailableError(BenchbookError):
    """A backend, precision or device cannot run on this machine (reason in the message)."""
