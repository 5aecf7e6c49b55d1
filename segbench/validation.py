"""One way to check a setting, used by every layer (config, components, data, engine).

Every check raises :class:`InvalidValue` with one message form::

    trainer.epochs=0 is invalid; expected an integer >= 1
    trainer.precision='half' is invalid; expected one of ['auto', 'bf16', 'fp16', 'fp32']; did you mean 'fp16'?

Components name their own argument (``base_width``); :func:`segbench.build.build`
prefixes the config group (``model.base_width``) when it reports the error.
"""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, Iterable, Sequence

from .errors import UserError


class InvalidValue(UserError):
    """A setting has a value outside what is allowed; ``key``, ``value`` and ``expected`` say which and why."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key}={value!r} is invalid; expected {expected}")

    def under(self, prefix: str) -> "InvalidValue":
        """The same error with the key prefixed (``base_width`` -> ``model.base_width``)."""
        return InvalidValue(f"{prefix}.{self.key}", self.value, self.expected)


def is_int(value: Any) -> bool:
    """An integer and not a bool (``True`` is an ``int`` to Python, never to a user)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def check_int(key: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """An integer in [low, high]; returns it."""
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = _bounds(low, high, False, False)
        raise InvalidValue(key, value, "an integer" + (f" {bounds}" if bounds else ""))
    return int(value)


def check_number(
    key: str, value: Any, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False,
) -> float:
    """A finite number within the bounds (closed unless ``low_open``/``high_open``); returns it."""
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = _bounds(low, high, low_open, high_open)
        raise InvalidValue(key, value, "a number" + (f" {bounds}" if bounds else ""))
    return value


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of ``choices``; the error lists them and suggests the closest name."""
    choices = list(choices)
    if any(type(value) is type(c) and value == c for c in choices):  # 1 is not True, 'auto' is 'auto'
        return value
    shown = sorted(choices, key=str) if all(isinstance(c, str) for c in choices) else choices
    expected = f"one of {shown}"
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    if close:
        expected += f"; did you mean {close[0]!r}?"
    raise InvalidValue(key, value, expected)


def check_switch(key: str, value: Any) -> Any:
    """``true``, ``false`` or ``auto``."""
    if value is True or value is False or value == "auto":
        return value
    raise InvalidValue(key, value, "true, false or auto")


def check_sizes(key: str, values: Sequence[Any], count: int, names: str) -> list[int]:
    """``count`` integers >= 1 (e.g. split sizes: train, val, test)."""
    values = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else [values]
    if len(values) != count or not all(is_int(v) and v >= 1 for v in values):
        raise InvalidValue(key, values, f"{_count_words(count)} integers >= 1 ({names})")
    return [int(v) for v in values]


def _count_words(n: int) -> str:
    return {2: "two", 3: "three", 4: "four"}.get(n, str(n))
