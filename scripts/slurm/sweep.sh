#!/usr/bin/env bash
# A comparison sweep on SLURM: run it on a login node (inside tmux or screen: this process submits the jobs
# as one job array, waits for them and writes the report). Each job gets one GPU, is warned 120 s before
# its time limit, and is requeued to continue from its last.pt (conf/hydra/launcher/slurm.yaml).
#   bash scripts/slurm/sweep.sh                                   # on the cluster
#   LAUNCHER=slurm_local bash scripts/slurm/sweep.sh ...          # the same sweep on this machine (a stand-in)
# Extra arguments are overrides (a later value of a key replaces the one here). The same command again
# continues the sweep: finished jobs are not trained again. The exit status is 0 only when every job
# finished; otherwise the last line names the others and the command that continues them.
set -euo pipefail
exec python -m segbench -m hydra/launcher="${LAUNCHER:-slurm}" hydra.launcher.partition="${PARTITION:-gpu}" \
    hydra.launcher.timeout_min="${TIMEOUT_MIN:-240}" \
    experiment=ph2_recipe model=unet,segnet,unet_strided loss=bce,dice seed=0,1,2 \
    hydra.sweep.dir="${SWEEP_DIR:-$HOME/segbench/sweeps/ph2_recipe}" "$@"
