#!/usr/bin/env bash
# The training recipe's targets, measured (a benchmark, not a test): every seed-study architecture
# trained with experiment=ph2_recipe_cpu, 3 seeds each, on PH2's fixed split; test scored at each
# image's original size (the recipe's settings). Ends with the comparison report (mean ± std over seeds,
# test IoU, Dice, HD95, train time) and the wall time.
#   scripts/recipe_benchmark.sh                      # 15 runs of ~15 min on a 2-core CPU: hours
#   scripts/recipe_benchmark.sh model=unet           # only the U-Net (3 runs)
#   scripts/recipe_benchmark.sh trainer.precision=bf16   # the same in bf16 (CPUs with native bf16)
# Needs SEGBENCH_PH2_ROOT (or dataset.root=...).
set -euo pipefail
sweep="outputs/multirun/recipe_benchmark_$(date +%Y-%m-%d_%H-%M-%S)"
start=$(date +%s)
python -m segbench -m experiment=ph2_recipe_cpu \
  model=segnet,segnet_unpool,unet,unet_strided,unet_unpool seed=0,1,2 \
  trainer.progress=false "hydra.sweep.dir=$sweep" "$@"
echo
echo "wall time: $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s; report: $sweep/summary.md"
cat "$sweep/summary.md"
