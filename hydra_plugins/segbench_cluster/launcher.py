"""``hydra/launcher=slurm_local``: the SLURM preset's time limit, warning signal and requeue, run on this
machine by submitit's local executor. It takes the SLURM preset's keys (``timeout_min``,
``signal_delay_s``, ``max_num_timeout``, the resources), so a sweep that will run on SLURM can be tried
here with only the launcher's name changed: the job gets SIGUSR2 ``signal_delay_s`` before its limit,
segbench saves its state, submitit requeues it (up to ``max_num_timeout`` times) and the requeued job
continues from ``last.pt``. ``array_parallelism`` jobs run at once (1 by default here: the machine's
cores go to one job). SLURM-only keys (``partition``, ``additional_parameters``, ...) are accepted
and ignored.

A job that submitit could not finish (it timed out more than ``max_num_timeout`` times, or its process
died) does not end the sweep with a traceback: it is logged, and the run's own ``metrics.json`` says
what happened, for the report and the sweep's exit status (:mod:`segbench.report.callback`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

log = logging.getLogger(__name__)

# the local executor's parameters; every other key is the SLURM preset's and means nothing here
LOCAL_KEYS = {"submitit_folder", "timeout_min", "signal_delay_s", "max_num_timeout", "cpus_per_task", "gpus_per_node",
              "tasks_per_node", "mem_gb", "nodes", "name", "stderr_to_stdout", "setup", "array_parallelism"}


class SlurmLocalLauncher(BaseSubmititLauncher):
    _EXECUTOR = "local"

    def __init__(self, **params: Any) -> None:
        ignored = sorted(k for k, v in params.items() if k not in LOCAL_KEYS and v not in (None, {}, [], ""))
        if ignored:
            log.info("hydra/launcher=slurm_local runs the jobs on this machine: ignoring the SLURM keys %s",
                     ", ".join(ignored))
        super().__init__(**{k: v for k, v in params.items() if k in LOCAL_KEYS and k != "setup"})
        self.setup_commands = list(params.get("setup") or [])

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """The jobs as submitit arrays of ``array_parallelism`` jobs on the local executor (what the base
        launcher does, with the local executor's ``max_num_timeout`` and ``signal_delay_s`` passed on, and a
        job that did not finish returned instead of raised)."""
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides

        from segbench.validation import check_int

        params = dict(self.params)
        timeouts = check_int("hydra.launcher.max_num_timeout", params.pop("max_num_timeout", 3), low=0)
        at_once = check_int("hydra.launcher.array_parallelism", params.pop("array_parallelism", 1), low=1)
        executor = submitit.LocalExecutor(folder=params.pop("submitit_folder"), max_num_timeout=timeouts)
        executor.update_parameters(**params, **({"setup": self.setup_commands} if self.setup_commands else {}))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Submitit 'local' (standing in for SLURM) sweep output dir : %s", sweep_dir)
        args = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        results = []
        for start in range(0, len(args), at_once):  # array_parallelism jobs at a time, as SLURM runs an array
            jobs = executor.map_array(self, *zip(*args[start:start + at_once]))
            results += [_result(job, args[start + i][0]) for i, job in enumerate(jobs)]
        return results


def _result(job: Any, overrides: Sequence[str]) -> JobReturn:
    """The job's return, or for one submitit could not finish, a completed return without a value: the
    run's metrics.json (interrupted, failed, or none) says what happened."""
    try:
        return job.results()[0]
    except Exception as exc:  # noqa: BLE001 - submitit's UncompletedJobError, a job whose process died
        reason = str(exc).strip().splitlines()
        log.error("job %s (%s) did not finish under submitit: %s", job.job_id, " ".join(overrides),
                  next((line for line in reversed(reason) if line.strip()), type(exc).__name__))
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)
