#!/usr/bin/env bash
# The main job, end to end: set up (the package and what it needs; no test tools), get CIFAR-10, train a short
# sweep of rohrer100k variants (3 seeds each: enough for the pooled intervals to decide something), print the table, and write the report that weighs the study's
# claims against it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SCS_PROBE_DATA="${SCS_PROBE_DATA:-$PWD/data}"
# Offline machines of this project carry a rebuilt copy of CIFAR-10 beside the checkout; elsewhere torchvision
# downloads it on first use.
if [ ! -d "$SCS_PROBE_DATA/cifar-10-batches-py" ] && [ -f ../shared/datasets/cifar10/prepare.py ]; then
  .venv/bin/python ../shared/datasets/cifar10/prepare.py "$SCS_PROBE_DATA"
fi
# max LR 0.01 for every variant (matched settings): at the gallery's 0.05, short runs leave conv/ReLU at chance
.venv/bin/scs-probe sweep --arch rohrer100k --out sweeps/demo --seeds 0,1,2 \
  --only 'rohrer100k-conv-relu-max,rohrer100k-scs-none-maxabs,rohrer100k-scs-relu-maxabs' \
  --epochs 3 --val-split 2000 --limit-train 10000 --max-lr 0.01 "$@"
.venv/bin/scs-probe report sweeps/demo --saliency-images 50 --pgd-images 100
