"""A search space in Hydra's override syntax (``hydra.sweeper.params``, as hydra-optuna-sweeper reads
it) as Optuna distributions::

    optimizer.lr: tag(log, interval(1e-4, 3e-3))   -> FloatDistribution(1e-4, 3e-3, log=True)
    augment.strength: interval(0.0, 1.5)          -> FloatDistribution(0.0, 1.5)
    trainer.batch_size: range(8, 33, 8)           -> IntDistribution(8, 32, step=8)
    loss: choice(bce, dice, bce_dice)             -> CategoricalDistribution
    dataset.image_size: 128                       -> a fixed value, passed to every trial
"""
from __future__ import annotations

from typing import Any, Iterable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ..errors import UserError


def distribution(override: Override) -> BaseDistribution | str:
    """The Optuna distribution of a sweep override, or the value of a plain one (a string, as written)."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            # range() excludes its stop, as Python's does: the last value is the one before it
            steps = int(round((value.stop - value.start) / value.step))
            return FloatDistribution(value.start, value.start + (steps - 1) * value.step, step=value.step)
        last = int(value.start) + (len(range(int(value.start), int(value.stop), int(value.step))) - 1) * int(value.step)
        return IntDistribution(int(value.start), last, step=int(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise UserError(f"hydra.sweeper.params.{key}: {override.input_line!r} is not a search-space expression; "
                    "expected choice(...), range(...), interval(...) or tag(log, interval(...))")


def search_space(overrides: Iterable[str]) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
    """The distributions to sample and the fixed values of ``key=value`` overrides (the sweeper's
    ``params``, then the command line's arguments: a later one replaces an earlier one of its key)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise UserError(f"hydra.sweeper.params: {exc}") from exc
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    for override in parsed:
        key = override.get_key_element()
        value = distribution(override)
        space.pop(key, None)
        fixed.pop(key, None)
        (space if isinstance(value, BaseDistribution) else fixed)[key] = value
    return space, fixed
