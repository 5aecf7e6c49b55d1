"""Support for run dirs, checkpoints and command lines from segbench before 0.2, in one place.

- configs: :func:`upgrade_config` reads a config saved before 0.2 in today's keys (the callbacks that were
  ``trainer.<name>`` keys, the keys added since with the default that reproduces the old behaviour);
- command lines: :func:`moved_keys` answers ``trainer.ema=0.99`` with the override to write now;
- records: :func:`monitor_of` (the monitored value; before 0.2 always ``val/iou``) and
  :func:`started_settings` (how a run computed; before 0.2, ``auto`` was fp32, contiguous on a CPU);
- checkpoints: before 0.2 they pickled numpy's RNG state, which a safe load refuses;
  :func:`upgrade_run` (``segbench upgrade-checkpoints``) converts trusted ones once.
"""
from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SegbenchError, UserError
from .names import DEFAULT_MONITOR

if TYPE_CHECKING:  # torch is imported where checkpoints are read: the command line's checks stay fast
    import torch

# The callbacks that were trainer.<name> keys before 0.2 and are callbacks.<name> now: their _target_ and
# arguments (with the default an old config may leave out). An old value is the first argument's
# (trainer.ema=0.99), or a dict of them (trainer.early_stop); the callback was on when that one was set.
MOVED_CALLBACKS = {
    "grad_clip": ("segbench.engine.GradClip", {"max_norm": None}),
    "ema": ("segbench.engine.EMA", {"decay": None}),
    "early_stop": ("segbench.engine.EarlyStopping", {"patience": None, "min_delta": 0.0}),
}


def upgrade_config(config: dict) -> dict:
    """A resolved config saved before segbench 0.2 (run.json, a checkpoint) in today's keys, so that it
    compares with a current one (resume, never training twice) and builds the same components:
    ``trainer.ema``/``grad_clip``/``early_stop`` become the ``callbacks`` group's entries (in the order
    the trainer used: grad_clip, ema, early_stop), and keys added since get the default that reproduces
    the old behaviour (``trainer.val_every=1``, ``trainer.monitor=val/iou``). A current config is
    returned unchanged; the argument is not modified."""
    trainer = config.get("trainer") or {}
    dataset = config.get("dataset") or {}
    folder = str(dataset.get("_target_", "")).endswith(".Folder")
    if (not set(MOVED_CALLBACKS) & set(trainer) and {"monitor", "val_every", "sync_batchnorm"} <= set(trainer)
            and (not folder or "subjects" in dataset) and "calibration" in (config.get("eval") or {"calibration": 0})):
        return config
    config = copy.deepcopy(config)
    trainer = config.setdefault("trainer", {})
    callbacks = dict(config.get("callbacks") or {})
    for name, (target, arguments) in MOVED_CALLBACKS.items():
        value = trainer.pop(name, None)
        values = ({a: value.get(a, default) for a, default in arguments.items()} if isinstance(value, dict)
                  else {next(iter(arguments)): value})
        if next(iter(values.values())) is not None:
            callbacks[name] = {"_target_": target, **values}
    config["callbacks"] = callbacks or None
    trainer.setdefault("val_every", 1)
    trainer.setdefault("monitor", DEFAULT_MONITOR)
    trainer.setdefault("monitor_mode", "auto")
    trainer.setdefault("sync_batchnorm", "auto")  # added with data-parallel runs; one process never uses it
    if config.get("eval") is not None:
        config["eval"].setdefault("calibration", "none")  # added with calibration: the scores of before, and more
    if folder:  # added with subject-grouped splits: none, every case its own subject (the splits of before)
        dataset = config["dataset"]
        dataset.setdefault("subjects", None)
        dataset.setdefault("subjects_metadata", None)
        dataset.setdefault("metadata_columns", ["isic_id", "lesion_id"])
    scheduler = config.get("scheduler") or {}
    if scheduler.get("monitor") == DEFAULT_MONITOR and scheduler.get("mode") == "max":  # now derived from the monitor
        scheduler.pop("mode")
    return config


def moved_override(key: str, value: str) -> str | None:
    """What to write instead of ``key=value`` when ``key`` moved to the ``callbacks`` group in 0.2
    (:data:`MOVED_CALLBACKS`), else None."""
    group, _, rest = key.partition(".")
    name, _, argument = rest.partition(".")
    if group != "trainer" or name not in MOVED_CALLBACKS:
        return None
    arguments = list(MOVED_CALLBACKS[name][1])
    if argument and (len(arguments) == 1 or argument not in arguments):
        return None  # not a key segbench had
    if value.lower() == "null":
        return "leave out callbacks=... (the callbacks are off by default)"
    if len(arguments) > 1 and not argument:  # trainer.early_stop={...}: one override per argument
        return f"callbacks={name} " + " ".join(f"callbacks.{name}.{a}=..." for a in arguments)
    return f"callbacks={name} callbacks.{name}.{argument or arguments[0]}={value or '...'}"


def moved_keys(args: list[str]) -> None:
    """A command line with a key that moved to the ``callbacks`` group (``trainer.ema=0.99``) fails with
    the override to write instead (Hydra would only say that the key is not in the config)."""
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        new = moved_override(key, value)
        if new is not None:
            raise UserError(f"'{arg}': {key} moved to the callbacks config group in segbench 0.2; write {new} "
                                "(several at once: callbacks=[ema,early_stop,grad_clip])")


def monitor_of(metrics: dict) -> dict:
    """A run's ``monitor`` record (key, mode, value, epoch); a run finished before 0.2 recorded none and
    monitored val IoU, so its ``val/iou`` is the value (NaN when it has none either)."""
    monitor = metrics.get("monitor") or {}
    if monitor:
        return dict(monitor)
    return {"key": DEFAULT_MONITOR, "mode": "max", "value": float(metrics.get(DEFAULT_MONITOR, float("nan")))}


def started_settings(saved: dict | None, device: torch.device) -> dict:
    """How a resumed run computed (``precision``, ``channels_last``) as its checkpoint records it; a
    checkpoint from before 0.2 records nothing, and on a CPU ``auto`` then was fp32, contiguous."""
    if saved is None:
        return {}
    if "settings" not in saved and device.type == "cpu":
        return {"precision": "fp32", "channels_last": False}
    return dict(saved.get("settings") or {})


def _plain_numpy_state(state: object) -> dict:
    """numpy's legacy RNG state tuple (as ``np.random.get_state()`` returns it) as segbench 0.2 stores it."""
    import numpy as np

    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": np.asarray(keys).tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def converted(state: dict) -> dict:
    """``state`` (a segbench checkpoint loaded with weights_only=False) in the form a safe load reads."""
    import torch

    state = dict(state)
    rng = dict(state.get("rng") or {})
    if isinstance(rng.get("numpy"), tuple):
        rng["numpy"] = _plain_numpy_state(rng["numpy"])
        state["rng"] = rng
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.load(buffer, map_location="cpu", weights_only=True)  # raises if anything unsafe is left
    return state


def upgrade_file(path: Path) -> bool:
    """Convert one checkpoint in place; False when it already loads safely."""
    import torch

    from .runs.atomic import atomic_file
    from .runs.checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
        return False
    except SegbenchError:
        pass
    state = torch.load(path, map_location="cpu", weights_only=False)  # the explicit opt-in: trusted files only
    if not isinstance(state, dict):
        raise SegbenchError(f"'{path}' is not a segbench checkpoint (it holds a {type(state).__name__})")
    try:
        safe = converted(state)
    except Exception as exc:  # noqa: BLE001 - what the safe load still refuses
        raise SegbenchError(f"'{path}' holds more than segbench writes; it cannot be converted ({exc})") from exc
    with atomic_file(path) as tmp:
        torch.save(safe, tmp)
    return True


def upgrade_run(run_dir: Path) -> list[str]:
    """Convert the checkpoints of one run dir; returns what was done, a line per file."""
    done: list[str] = []
    folder = Path(run_dir) / "checkpoints"
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    by_inode: dict[tuple[int, int], Path] = {}
    for path in files:
        stat = path.stat()
        first = by_inode.setdefault((stat.st_dev, stat.st_ino), path)
        if first is not path:  # a hard link (best.pt of last.pt): made the same converted file again
            if first.stat().st_ino != stat.st_ino:
                tmp = path.with_name(f".{path.name}.link.tmp")
                tmp.unlink(missing_ok=True)
                os.link(first, tmp)
                os.replace(tmp, path)
            done.append(f"{path}: the same file as {first.name}")
            continue
        done.append(f"{path}: {'converted' if upgrade_file(path) else 'already safe, left as it is'}")
    return done


