"""The mistakes a user can fix, as one family of exceptions.

Every error that a user's input can cause -- a command line, a config file, a run directory, a checkpoint,
a data file, a bench submission -- is a :class:`UserError`. Its message is one line that names what was wrong
and what is allowed; the command line prints it after ``trainlab:`` and exits with status 2, never with a
traceback. Anything else that escapes is a bug in trainlab and keeps its traceback.

This module imports nothing heavy, so the command line can catch these errors without importing torch.
The classes are re-exported where they were first defined (``trainlab.config.ConfigError``, ...).
"""

from __future__ import annotations

import math
import reprlib

__all__ = ["UserError", "ConfigError", "UnknownNameError", "RunError", "RunDirError", "CheckpointError",
           "DataError", "BenchError", "one_line", "shorten", "quote_path"]


class UserError(Exception):
    """A mistake the user can fix; ``str(err)`` is one line saying what and what is allowed."""

    kind = "error"  # the word the command line prints before the message


class ConfigError(UserError, ValueError):
    """A user's configuration mistake: ``key`` is the dotted key, the message says what is allowed."""

    kind = "config error"

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        # a key comes from the user's file too: a megabyte of text or a newline must not reach the message as is
        shown = key if key.isprintable() and len(key) <= 80 else shorten(key)
        super().__init__(f"{shown}: {message}" if key else message)


class UnknownNameError(UserError, KeyError):
    """A name that no registry entry has; the message lists what is allowed."""

    kind = "config error"

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0])


class RunError(UserError, RuntimeError):
    """A run cannot start or continue for a reason the user can fix (the message says which)."""


class RunDirError(UserError, ValueError):
    """A path is not a trainlab run directory, or one of its files is missing or malformed."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, corrupted, of an unknown format, or does not fit the run resuming it."""


class DataError(UserError, ValueError):
    """A dataset cannot be found or read."""


class BenchError(UserError, RuntimeError):
    """A bench cannot run (bad submission, results directory of another bench, failed trial, ...)."""


def one_line(err: BaseException) -> str:
    """The first non-empty line of ``str(err)`` (messages of other libraries can span many lines)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__


class _BoundedRepr(reprlib.Repr):
    """:mod:`reprlib` with every limit tied to ``limit`` and integers shown by their length when long."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = self.maxset = self.maxfrozenset = self.maxdeque = 5
        self.maxdict = 4
        self.maxstring = self.maxlong = self.maxother = limit

    def repr_int(self, x: int, level: int) -> str:
        # str() of an int with more than 4300 digits raises, and is quadratic below that: count digits instead
        if x.bit_length() > 4 * self.maxlong:
            digits = int(x.bit_length() * math.log10(2)) + 1
            return f"<an integer of about {digits:,} digits>"
        return super().repr_int(x, level)


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, in time and memory bounded by ``limit``.

    Error messages show what the user gave, and that can be a megabyte of text, a list that YAML aliases
    expand to billions of items, or an integer too long for ``str()``: their full ``repr`` takes minutes and
    gigabytes, or raises. Long strings keep their start and end (``'abc...xyz'``), containers their first items.
    """
    text = _BoundedRepr(limit).repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote_path(path: object) -> str:
    """A path for a one-line message: quoted, with newlines and other control characters escaped, at most
    160 characters (the middle of a longer one is elided)."""
    return shorten(str(path), 160)
