#!/usr/bin/env bash
# On a CUDA machine: the CUDA tests (every layer against the reference on the GPU, eager and Triton-compiled,
# autocast bfloat16/float16, gradcheck), then the epoch and layer benchmarks, printing their tables.
#   bash benchmarks/gpu.sh [PYTHON]      (PYTHON defaults to .venv/bin/python, else python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh: no CUDA device visible to torch")
print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}")
PYEOF
echo "## CUDA tests"
"$PY" -m pytest -q tests/test_gpu.py tests/test_cuda_paths.py
echo "## epoch benchmark (float32, then bf16 autocast)"
"$PY" benchmarks/train_epoch.py --device cuda --repeats 5
"$PY" benchmarks/train_epoch.py --device cuda --repeats 5 --amp --modes default
echo "## layer benchmark"
"$PY" benchmarks/layers.py --device cuda --repeats 7
