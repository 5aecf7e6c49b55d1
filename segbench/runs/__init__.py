"""The storage layer: one owner of a run directory's files (:mod:`.rundir`), atomic writes (:mod:`.atomic`),
checkpoints written in the background and read safely (:mod:`.checkpoint`), how sweep jobs' dirs are
named (:mod:`.naming`) and the commands that continue a run (:mod:`.launch`)."""
from .rundir import RunDir, find_runs, keep_sweep_record, sweep_records

__all__ = ["RunDir", "find_runs", "keep_sweep_record", "sweep_records"]
