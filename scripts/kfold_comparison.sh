#!/usr/bin/env bash
# A cross-validated comparison with the CPU training recipe (a measurement, not a test): U-Net against
# SegNet on PH2, 5 folds, one seed; ends with the comparison report (pooled per-image IoU with bootstrap
# intervals, paired Wilcoxon tests, Holm) and the wall time.
#   scripts/kfold_comparison.sh                                   # 10 runs of ~15 min on a 2-core CPU
#   scripts/kfold_comparison.sh model=unet,unet_strided           # other configurations
#   scripts/kfold_comparison.sh hydra.sweep.dir=outputs/multirun/kfold trainer.resume=auto   # continue one
# Needs SEGBENCH_PH2_ROOT (or dataset.root=...). Run it from a checkout you do not edit meanwhile: each
# job composes the YAML files as they are when it starts.
set -euo pipefail
sweep="outputs/multirun/kfold_comparison_$(date +%Y-%m-%d_%H-%M-%S)"
start=$(date +%s)
python -m segbench -m experiment=ph2_recipe_cpu split=kfold split.fold=0,1,2,3,4 model=unet,segnet \
  trainer.progress=false "hydra.sweep.dir=$sweep" "$@"
for arg in "$@"; do case "$arg" in hydra.sweep.dir=*) sweep="${arg#hydra.sweep.dir=}";; esac; done
echo
echo "wall time: $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s; report: $sweep/summary.md"
cat "$sweep/summary.md"
