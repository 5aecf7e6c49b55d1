"""The config layer: where the config tree is, composing it outside a Hydra app, checking run
settings, and the one list of settings that do not define a configuration.

The YAML tree is ``conf/`` at the top of the repository; the wheel ships it as the
package ``segbench.conf``, so an installed ``segbench`` finds it wherever it runs.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .errors import DataError, UserError
from .validation import check_int, check_number, check_switch

CONF_PACKAGE = "segbench.conf"  # conf/ in the repository, mapped to this package (pyproject.toml)
CONF_DIR = Path(str(resources.files(CONF_PACKAGE)))
GROUPS = ("model", "loss", "optimizer", "scheduler", "dataset", "split")

# Settings that say where and how a run executes, never what it computes. Two runs that differ only
# in these are the same configuration: job directory names leave them out, resuming may change
# them, and the comparison report does not tell runs apart by them. A key covers its sub-keys.
RUN_SETTINGS = (
    "output_dir",
    "cache_dir",
    "dataset.root",
    "dataset.cache_dir",
    "dataset.workers",
    "trainer.device",
    "trainer.devices",
    "trainer.progress",
    "trainer.log_every",
    "trainer.resume",
    "trainer.eval_batch_size",
    "trainer.compile",
    "trainer.channels_last",
    "trainer.threads",
    "trainer.cpu_alternative",  # a hint for where the run executes
    "eval.num_predictions",
    "logger",                 # where a run is tracked (TensorBoard, MLflow), not what it computes
)


def is_run_setting(key: str) -> bool:
    """Whether ``key`` (``trainer.device``, ``+dataset.root``) is one of :data:`RUN_SETTINGS` or below one."""
    key = key.lstrip("+~")
    return any(key == s or key.startswith(s + ".") for s in RUN_SETTINGS)


def defining_overrides(overrides: Sequence[Any]) -> list[str]:
    """The overrides that define what a run computes: ``overrides`` without the run settings."""
    return [str(o) for o in overrides if not is_run_setting(str(o).split("=", 1)[0])]


def parallel_jobs(launcher: Any, cores: int) -> int:
    """How many jobs a sweep's launcher runs at once on one machine: joblib's ``n_jobs`` (negative as joblib
    reads it: -1 = one per core); ``array_parallelism`` for the local stand-in of SLURM (slurm_local); 1 for
    launchers that run one job per machine (basic, SLURM)."""
    target = str((launcher or {}).get("_target_", ""))
    if target.endswith("SlurmLocalLauncher"):
        return max(1, int(launcher.get("array_parallelism") or 1))
    if "joblib" not in target.lower():
        return 1
    n_jobs = int(launcher.get("n_jobs") or 1)
    return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)


def compose_config(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> DictConfig:
    """conf/config.yaml composed with ``overrides`` as the CLI would, without creating a run dir."""
    with initialize_config_dir(config_dir=str(config_dir or CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def choices(cfg: DictConfig) -> dict[str, str]:
    """Option names the user picked (``model=unet``); falls back to class names outside Hydra."""
    if HydraConfig.initialized():
        picked = HydraConfig.get().runtime.choices
        return {g: str(picked.get(g)) for g in GROUPS}
    return {g: str((cfg.get(g) or {}).get("_target_", "")).rsplit(".", 1)[-1] for g in GROUPS}


def check_missing(cfg: DictConfig) -> None:
    """Mandatory keys (``???`` in a YAML, such as ``dataset.root`` of ``dataset=folder``) must be given."""
    def walk(node: Any, prefix: str) -> list[str]:
        found = []
        for key in node:  # is_missing does not resolve interpolations (hydra:... is unset outside a run)
            if OmegaConf.is_missing(node, key):
                found.append(f"{prefix}{key}")
            elif OmegaConf.is_dict(node._get_node(key)):
                found += walk(node[key], f"{prefix}{key}.")
        return found

    missing = sorted(walk(cfg, ""))
    if missing:
        raise UserError(f"{', '.join(missing)} must be set (the config says ???); give "
                        f"{' '.join(k + '=...' for k in missing)} on the command line")


def validate(cfg: DictConfig) -> None:
    """Check run settings before any work; each error names the key, the value and what is allowed.

    Component arguments (model, loss, dataset, split, scheduler, callbacks) are checked by the components
    themselves when :mod:`segbench.build` creates them, and ``eval.*`` by
    :class:`segbench.evaluation.scoring.EvalSettings`; both happen before training too.
    """
    check_missing(cfg)
    t = cfg.trainer
    for key in ("epochs", "batch_size", "eval_batch_size", "log_every", "val_every"):
        check_int(f"trainer.{key}", t[key], low=1)
    for key in ("compile", "channels_last", "sync_batchnorm"):
        check_switch(f"trainer.{key}", t.get(key, "auto"))
    check_int("trainer.devices", t.get("devices", 1), low=1)
    if t.threads != "auto":
        check_int("trainer.threads", t.threads, low=1)
    check_int("seed", cfg.seed)
    if cfg.optimizer.get("lr") is not None:
        check_number("optimizer.lr", cfg.optimizer.lr, low=0, low_open=True)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested (resolved) config as ``{"optimizer.lr": 0.001, ...}``; lists are kept whole."""
    if not isinstance(config, dict):
        return {prefix.rstrip("."): config}
    return {k: v for key, val in config.items() for k, v in flatten(val, f"{prefix}{key}.").items()}


def differences(saved: dict, current: dict) -> list[str]:
    """``key: old -> new`` for every setting that defines a configuration and differs (resolved configs)."""
    a, b = flatten(saved), flatten(current)
    keys = [k for k in sorted(set(a) | set(b)) if not is_run_setting(k)]
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


PLAIN = (str, int, float, bool, type(None))


def _not_plain(value: Any, key: str) -> Iterator[str]:
    """What in ``value`` is not plain data: an interpolation (``${...}``, never resolved: it could read the
    environment), or a value of another type than dicts with string keys, lists and scalars."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                yield f"the key {k!r} under '{key or '.'}' is not a string"
            else:
                yield from _not_plain(v, f"{key}.{k}" if key else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _not_plain(v, f"{key}[{i}]")
    elif isinstance(value, str):
        if "${" in value:
            yield f"'{key}' holds an interpolation (${{...}}; not resolved)"
    elif not isinstance(value, PLAIN):
        yield f"'{key}' holds a {type(value).__name__}"


def saved_config(config: Any, source: str, required: Sequence[str] = ()) -> dict:
    """A config read from someone else's file (a checkpoint, run.json, an evaluation's metrics.json) as the
    plain data segbench writes: nested dicts, lists and scalars, no interpolation, and every key of
    ``required`` (dotted) present. Anything else is a DataError naming ``source`` and the key; the config is
    never resolved, so reading it runs nothing and reads no environment."""
    if not isinstance(config, dict):
        raise DataError(f"{source} holds a config that is a {type(config).__name__}, not a mapping; it was not "
                        "written by segbench")
    problems = list(_not_plain(config, ""))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{source} holds a config that is not plain data: {problems[0]}{more}; segbench writes "
                        "resolved configs only, so this file was not written by segbench or was edited")
    for key in required:
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise DataError(f"{source} holds a config without '{key}'; it was not written by segbench, or it "
                                "is damaged")
            node = node[part]
    return config

