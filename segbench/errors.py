"""Errors segbench reports with a clear message instead of a traceback.

The CLI prints their message (no stack trace) and exits with status 2; in a
multirun the job is recorded as failed and the sweep goes on.
"""


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``: how a message quotes an error from a library (whose later
    lines are often advice or a long dump)."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


class SegbenchError(Exception):
    """An error whose message says what happened and what to do."""


class UserError(SegbenchError, ValueError):
    """Bad input from the user; the message names the key, file or value and what is expected."""


class TrainingError(SegbenchError, RuntimeError):
    """Training cannot go on (loss became NaN, out of memory); the message names where and why."""


class DataError(UserError):
    """A dataset file or folder is missing or malformed; the message names it."""


class CheckpointError(DataError):
    """A checkpoint file cannot be read; the message names it."""
