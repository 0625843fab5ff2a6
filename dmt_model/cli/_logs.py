"""Log lines of the ``dmt`` commands on stderr: the server's refusals, with their reason.

The server modules log on loggers under ``dmt`` (``dmt.server.ingest`` logs
each refused package with its reason: a kind and a field, never a value).
A library configures no logging; the commands that run the server do, so an
operator sees why a package was refused.
"""

from __future__ import annotations

import logging
import sys

from dmt_privacy.errors import ValidationError

__all__ = ["LOG_LEVELS", "log_to_stderr"]

LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (as ``logging.lastResort``)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def log_to_stderr(command: str, level: str = "info", *, timestamps: bool = False) -> None:
    """Show the ``dmt`` loggers' lines at ``level`` and above on stderr, as ``dmt COMMAND: …``.

    Calling it again replaces the handler it added before; handlers added by
    others (an application, pytest) are left alone.
    """
    if level not in LOG_LEVELS:
        raise ValidationError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {level!r}.")
    logger = logging.getLogger("dmt")
    for handler in list(logger.handlers):
        if isinstance(handler, _CurrentStderr):
            logger.removeHandler(handler)
    handler = _CurrentStderr()
    prefix = "%(asctime)s " if timestamps else ""
    handler.setFormatter(logging.Formatter(f"{prefix}dmt {command}: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
