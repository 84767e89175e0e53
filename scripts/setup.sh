#!/usr/bin/env bash
# Create ./.venv (if missing) and install scs-probe with the extras named as arguments:
#   scripts/setup.sh          the package and what the main job needs (scripts/demo.sh)
#   scripts/setup.sh test     also the test tools (scripts/test.sh): pytest, ruff, Ray, Optuna, timm, Quantus, ...
# torch is pinned to the release this project is tested with; on machines with internet, any torch >= 2.4 works
# (pip install -e . alone).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=$(IFS=,; echo "$*")
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
