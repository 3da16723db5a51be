#!/usr/bin/env bash
# One GPU run for issue 14, end to end in under 8 minutes on an H100/H200-class NVIDIA GPU:
# install from the wheels given, calibrate the cost model, run the benchmark suite at
# T = 2^12 … 2^20 and the zoo-like correctness cells, and write docs/benchmarks-gpu.md with the
# device name and the calibrated constants the planner then reads.
#
#   bash benchmarks/gpu.sh [WHEELS_DIR]     # run from the repository root
#
# WHEELS_DIR (optional): a folder of wheels (jax, jaxlib, jax-cuda12-plugin, jax-cuda12-pjrt,
# the nvidia-* CUDA wheels, numpy, networkx, sympy, pytest, hypothesis …) installed with
# --no-index; without it the current Python environment is used as is.
# Every stage has its own time limit, so a slow stage cannot eat the others' budget; a stage
# that fails or times out is recorded in the output file and the script goes on.
#
# Precision: dense combines ask for full-precision matmuls in the code (Precision.HIGHEST in
# autopar/kinds/dense.py, kinds/base.py's HI, and elk's _mm), since TF32 defaults have broken dense
# DEER on A100s. This script deliberately does NOT set JAX_DEFAULT_MATMUL_PRECISION, so the
# correctness cells check that the code itself asks for it.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=docs/benchmarks-gpu.md
WORK=$(mktemp -d)
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false

elapsed() { echo $(( $(date +%s) - START )); }
stage() {  # stage NAME LIMIT_S CMD...: run with a time limit, log, keep going
  local name=$1 limit=$2; shift 2
  echo "== [$(elapsed)s] $name (limit ${limit}s)"
  if timeout "$limit" "$@" >"$WORK/$name.log" 2>&1; then echo ok >"$WORK/$name.status"
  else echo "failed or timed out (rc $?)" >"$WORK/$name.status"; fi
  tail -n 3 "$WORK/$name.log"
}

if [ $# -ge 1 ]; then
  stage install 120 python -m pip install --no-index --find-links "$1" jax jaxlib jax-cuda12-plugin numpy networkx sympy pytest hypothesis
  stage install_autopar 60 python -m pip install --no-deps --no-build-isolation -e .
fi

stage device 60 python - <<'PY'
import jax
d = jax.devices()[0]
assert d.platform == "gpu", f"no GPU: {jax.devices()}"
print(f"{d.device_kind} | jax {jax.__version__} | {len(jax.devices())} device(s)")
PY

stage calibrate 90 python - <<PY
import json, dataclasses, jax, autopar
from autopar import costs
K = autopar.calibrate(verbose=True)
json.dump({"device": jax.devices()[0].device_kind, "key": costs.device_key("gpu"),
           "constants": dataclasses.asdict(K)}, open("$WORK/constants.json", "w"), indent=1, default=str)
PY

# the suite: every cell, forced solvers and auto, T = 2^12 … 2^20 (elk variants skipped past 2^16
# would not fit the budget: they are in the Newton benchmark below at smaller T)
stage suite 210 python -m benchmarks.run --T 4096,16384,65536,262144,1048576 --grad --repeats 3 \
  --skip elk,quasi-elk --no-core --out "$WORK/suite.md" --json "$WORK/suite.json"
stage newton 60 python benchmarks/newton.py --quick
stage latency 45 python benchmarks/latency.py --rounds 1 --only auto,deer,quasi-deer
# zoo-like correctness cells (lax.scan is the oracle), float32 TF32-sensitive dense cells included
stage correctness 90 python -m pytest -q -x -p no:cacheprovider tests/test_newton.py tests/test_matrix_states.py \
  tests/test_examples.py

{
  echo "# Benchmarks on a GPU"
  echo
  echo "Written by \`bash benchmarks/gpu.sh\` on $(date -u +%Y-%m-%d) in $(elapsed) s. Device: $(tail -n 1 "$WORK/device.log")."
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/nvidia-smi: /'
  echo
  echo "## Stages"
  echo
  echo "| stage | status |"; echo "|---|---|"
  for s in device calibrate suite newton latency correctness; do
    [ -f "$WORK/$s.status" ] && echo "| $s | $(cat "$WORK/$s.status") |"
  done
  echo
  echo "## Calibrated constants (what the planner reads on this device)"
  echo
  echo '```json'; cat "$WORK/constants.json" 2>/dev/null || echo "{}  (calibration failed: see below)"; echo '```'
  echo
  echo "## Suite (T = 2^12 … 2^20; forward and forward + gradient)"
  echo
  cat "$WORK/suite.md" 2>/dev/null || { echo '```'; tail -n 30 "$WORK/suite.log"; echo '```'; }
  for s in newton latency correctness; do
    echo; echo "## $s"; echo; echo '```'; tail -n 40 "$WORK/$s.log"; echo '```'
  done
} >"$OUT"
echo "wrote $OUT in $(elapsed) s"
