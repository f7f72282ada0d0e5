"""Errors a person can fix by changing a command, a config value or a file.

The entry points (``train.py``, ``eval.py``) print these as one message and
exit 1; any other exception is a bug in xaibench or a library and keeps its
traceback. Raise them only where the cause is the user's input.
"""

from __future__ import annotations

from xaibench.data.errors import DatasetNotFoundError


class ConfigError(ValueError):
    """A config value, override or combination of them that cannot run.

    The message names the config key (``metric.paper.step``), the bad value
    and what to use instead.
    """


class DataError(ValueError):
    """Data that was found but cannot be used (labels out of range, wrong shapes)."""


USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, DatasetNotFoundError)
"""What :func:`xaibench.pipeline.run_guarded` reports without a traceback."""
