#!/usr/bin/env bash
# The main job, end to end: set up, get CIFAR-10, train a short sweep of rohrer100k variants, print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SCS_PROBE_DATA="${SCS_PROBE_DATA:-$PWD/data}"
# Offline machines of this project carry a rebuilt copy of CIFAR-10 beside the checkout; elsewhere torchvision
# downloads it on first use.
if [ ! -d "$SCS_PROBE_DATA/cifar-10-batches-py" ] && [ -f ../shared/datasets/cifar10/prepare.py ]; then
  .venv/bin/python ../shared/datasets/cifar10/prepare.py "$SCS_PROBE_DATA"
fi
.venv/bin/scs-probe sweep --arch rohrer100k --out sweeps/demo \
  --only 'rohrer100k-conv-relu-max,rohrer100k-conv-relu-maxabs,rohrer100k-scs-none-max,rohrer100k-scs-none-maxabs' \
  --epochs 3 --limit-train 10000 --max-lr 0.01 "$@"
