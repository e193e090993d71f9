"""Errors a user can act on.

Every error raised for bad input names the bad value and what would be valid, so
the command line can print it as-is (no traceback) and exit non-zero.
"""

from __future__ import annotations

__all__ = ["BenchbookError", "ConfigError", "ModelError", "WeightsError", "UnavailableError", "StepFailed",
           "RunInterrupted"]


class BenchbookError(Exception):
    """Base class: a problem the user can fix; printed without a traceback."""

    exit_code = 2  # the command line's exit status for it


class ConfigError(BenchbookError, ValueError):
    """A run parameter or a config file field is invalid."""


class ModelError(BenchbookError):
    """A model folder could not be found, read or built."""


class WeightsError(BenchbookError):
    """A weights file does not exist, is not a state dict or does not fit the model."""


class UnavailableError(BenchbookError):
    """A backend, precision or device cannot run on this machine (reason in the message)."""


class StepFailed(BenchbookError):
    """A pipeline step failed for a reason other than bad input (the message says where to look)."""

    exit_code = 1


class RunInterrupted(BenchbookError):
    """Ctrl-C or SIGTERM during a run; the message says what was kept and how to resume."""

    exit_code = 130
