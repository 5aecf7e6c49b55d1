"""The commands that continue a run or a sweep, rebuilt from Hydra's records of its launches: what an
interrupted or failed run logs."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from .rundir import RunDir, sweep_records


def resume_command(run_dir: RunDir) -> str:
    """The command that continues this run in place; in a sweep, the whole sweep's first, then this job's.

    A sweep job's own overrides are single values, so re-running them with ``-m`` would put the job
    in a differently named dir (the names keep only what varies); the sweep's overrides are read
    back from its ``multirun.yaml`` (and those of earlier launches into the same dir, kept as
    ``multirun.<n>.yaml``: one command each), and the job alone continues with ``hydra.run.dir``.
    """
    if not HydraConfig.initialized():
        return f"segbench.train.run(cfg) with output_dir={run_dir.path} trainer.resume=auto"
    hc = HydraConfig.get()
    alone = _command([*hc.overrides.task, *_launch_options(hc.overrides.hydra)], "hydra.run.dir", run_dir.path)
    if hc.mode != RunMode.MULTIRUN:
        return alone
    commands: list[str] = []
    for record in sweep_records(hc.sweep.dir):  # every launch into the sweep dir (a narrower re-run too)
        try:
            command = continue_command(OmegaConf.load(record).hydra.overrides, hc.sweep.dir)
        except Exception:  # noqa: BLE001 - only the hint degrades: the job's error is what matters
            continue
        if command not in commands:  # a re-run of the same sweep
            commands.append(command)
    commands = commands or [_command(["-m", "<the sweep's overrides>"], "hydra.sweep.dir", hc.sweep.dir)]
    what = "the whole sweep" if len(commands) == 1 else f"each of the {len(commands)} sweeps launched into this dir"
    return "\n  ".join(commands) + f"\n  ({what}: finished jobs are skipped), or this job alone:\n  {alone}"


def continue_command(overrides: Any, sweep_dir: str | Path) -> str:
    """The command that runs a sweep's launch again in its sweep dir (``overrides``: its
    ``hydra.overrides``): its finished jobs are returned as they are, the others continue or start."""
    return _command(["-m", *map(str, overrides.task), *_launch_options(overrides.hydra)], "hydra.sweep.dir",
                    sweep_dir)


# Hydra overrides of a launch that the hint sets itself, or that Hydra and segbench add to every run
_NOT_RELAUNCHED = ("hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode=",
                   "hydra.job.config.override_dirname.exclude_keys=")


def _launch_options(overrides: Any) -> list[str]:
    """The Hydra overrides a run was launched with (``hydra/launcher=submitit_slurm``, its settings) that
    resuming needs again: without them a resumed SLURM sweep would run on the machine that resumes it."""
    return [str(o) for o in overrides if not str(o).startswith(_NOT_RELAUNCHED)]


_PLAIN_VALUE = re.compile(r"[\w./:@%+~-]*")  # a Hydra override value that needs no quotes


def _command(overrides: list[str], dir_key: str, path: str | Path) -> str:
    """``python -m segbench`` with ``overrides`` (shell-quoted) and ``dir_key`` set to ``path``."""
    path = str(path)
    if not _PLAIN_VALUE.fullmatch(path):  # ``=`` and ``,`` in sweep job dirs are Hydra syntax
        path = '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
    kept = [o for o in overrides if not o.startswith(("trainer.resume=", f"{dir_key}="))]
    args = [*kept, f"{dir_key}={path}", "trainer.resume=auto"]
    return "python -m segbench " + " ".join(shlex.quote(a) for a in args)
