#!/usr/bin/env bash
# The seed study in one command: 5 models x 4 losses on PH2, then the comparison report.
#   scripts/study.sh quick                  # 128 px, base width 16, 6 epochs: a CPU laptop
#   scripts/study.sh seed_study             # the notebook study's per-model settings: a GPU
#   scripts/study.sh quick seed=0,1,2       # extra overrides are passed on (here: 3 seeds each)
set -euo pipefail
experiment="${1:-quick}"
shift || true
case "$experiment" in
  quick|seed_study) ;;
  *) echo "usage: $0 quick|seed_study [overrides...]" >&2; exit 2 ;;
esac
exec python -m segbench -m "experiment=$experiment" \
  model=segnet,segnet_unpool,unet,unet_strided,unet_unpool \
  loss=bce,dice,focal,bce_hybrid \
  "$@"
