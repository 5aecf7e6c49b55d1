"""What a run does with a run dir that already holds a run (``trainer.resume``): a finished run of the same
settings is returned as it is, a partial one continues from ``checkpoints/last.pt``, one of other
defining settings is refused naming them, and ``overwrite`` replaces it. Decided before any file
changes; :func:`last_state` reads the checkpoint to continue from."""
from __future__ import annotations

import logging

from ..compat import upgrade_config
from ..config import differences
from ..errors import CheckpointError, UserError
from ..validation import InvalidValue, check_choice
from .rundir import RunDir

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "overwrite")


def check_mode(mode: object) -> str:
    """``trainer.resume``: auto or overwrite (null was a setting before; it is an error naming both)."""
    if mode is None:
        raise InvalidValue("trainer.resume", mode, "'auto' (continue a used run dir; the default) or 'overwrite' "
                           "(train it again from epoch 1, replacing its files); null is no longer a setting")
    check_choice("trainer.resume", mode, RESUME_MODES)
    return str(mode)


def used_dir(run_dir: RunDir, mode: str, resolved: dict) -> str:
    """What to do with what ``run_dir`` holds: ``new`` (nothing, or replaced with ``overwrite``),
    ``continue`` (a partial run of the same settings) or ``done`` (a finished one). A run of other
    defining settings is refused before any file changes; Hydra's record of this launch is then put back."""
    status = run_dir.status()
    if check_mode(mode) == "overwrite":
        removed = run_dir.remove_results()
        if removed:
            log.warning("trainer.resume=overwrite: removed the earlier run's %s from %s; training from epoch 1",
                        ", ".join(removed), run_dir.path)
        return "new"
    try:
        previous = run_dir.previous_config()
        diff = differences(upgrade_config(previous), resolved) if previous is not None else []
    except CheckpointError:
        run_dir.restore_hydra_record()
        raise
    if diff:
        run_dir.restore_hydra_record()
        what = "finished" if status == "done" else "partial"
        raise UserError(
            f"'{run_dir.path}' holds a {what} run with other settings ({'; '.join(diff)}); use another run dir "
            "(hydra.run.dir=...), or trainer.resume=overwrite to train this one again from epoch 1, replacing "
            "its files")
    if status == "done":
        run_dir.restore_hydra_record()  # its files untouched: the record is the launch that trained it
        return "done"
    return "continue" if previous is not None else "new"


def last_state(run_dir: RunDir) -> dict | None:
    """The state of ``last.pt`` to continue from, or None to start at epoch 1 (:func:`used_dir` has checked
    that its settings are this run's)."""
    if not run_dir.last_pt.is_file():
        return None
    try:
        return run_dir.load_checkpoint("last")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; cannot resume from it: delete it to train this run again from epoch 1") from exc
