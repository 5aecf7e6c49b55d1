"""Errors segbench reports with a clear message instead of a traceback.

The CLI prints their message (no stack trace) and exits with status 2; in a
multirun the job is recorded as failed and the sweep goes on. Every command's
``main(argv)`` is wrapped by :func:`command`, the one place that does so.
"""
from __future__ import annotations

import functools
import importlib
import sys
from types import ModuleType
from typing import Callable


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


def report(prog: str, exc: BaseException | str) -> int:
    """``<prog>: error: <message>`` on stderr; returns 2, the exit status of bad input."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2


def os_error(exc: OSError) -> str:
    """An OSError as a message naming its path: ``cannot write 'out/x': Read-only file system``."""
    paths = " -> ".join(f"'{p}'" for p in (exc.filename, exc.filename2) if p is not None)
    return f"{paths}: {exc.strerror or describe(exc)}" if paths else describe(exc)


def command(prog: str, catch: tuple[type[BaseException], ...] = ()) -> Callable:
    """Decorates a command's ``main(argv) -> int``: a :class:`SegbenchError` (or one of ``catch``, such as
    Hydra's errors) raised from it is reported with :func:`report` and the exit status 2, never a
    traceback (what lightning-hydra-template's ``task_wrapper`` does for its tasks); so is an OSError
    (an output that is a file, a read-only file system), naming its path."""
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except (SegbenchError, *catch) as exc:
                return report(prog, exc)
            except OSError as exc:  # a path the user gave: a file for a folder, a read-only file system, ...
                return report(prog, os_error(exc))
        return wrapper
    return wrap

def require(module: str, package: str, extra: str, needed_by: str) -> ModuleType:
    """Import ``module``, or raise a UserError saying that ``needed_by`` (``logger=mlflow``, ``--format
    onnx``) needs ``package`` and which ``pip install "segbench[<extra>]"`` installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{needed_by} needs the package '{package}', which is not installed: "
                        f'pip install "segbench[{extra}]"') from exc
