#!/usr/bin/env bash
# Everything issue 3 asks of a GPU machine, in one call of the workplace's `device` tool:
#
#     run(command="bash bench/gpu_session.sh", timeout_s=600)
#
# 1. the card and versions; 2. the backend-parametrised test modules (CuPy tests run instead of
# skipping; CuPy vs NumPy within float32 tolerance; the fused CUDA kernels compiled and run);
# 3. the trainer benchmark on CuPy for issue 3's sizes plus a whole fish (N = 40,000, M = 200),
# with the float32 GEMM rate of the same card in the same run. Results go to $OUT (they come back
# to this machine); the last lines printed are a short summary.
#
# The device image has CuPy, NumPy, SciPy, h5py, scikit-learn, numba and pytest but not Ray,
# Optuna or pydantic, and nothing can be installed there: this script uses the working tree
# through PYTHONPATH (no pip install) and only the parts of raysearch that need none of those.
# The search benchmark of issue 4 (trials per GPU, models per GPU-hour) needs Ray: carry wheels
# (see the device tool's README) and run bench/bench_search.py there separately.
set -u
OUT=${OUT:-/tmp/raysearch-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RAY_AUTH_MODE=disabled

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import sys, cupy, numpy, scipy, numba; print('python', sys.version.split()[0], \
'cupy', cupy.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__, \
'numba', numba.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion())"
} 2>&1 | tee "$OUT/machine.txt"

"$PY" -m pytest -q -p no:cacheprovider -rs tests/crbm tests/test_backend.py tests/test_evaluation.py \
  > "$OUT/pytest_gpu.txt" 2>&1
echo "pytest exit code $?" >> "$OUT/pytest_gpu.txt"

"$PY" bench/bench_trainer.py --backend cupy --repeats 5 \
  --sizes 1000x100 1000x200 5000x100 5000x200 20000x100 20000x200 40000x200 \
  > "$OUT/bench_trainer_cupy.jsonl" 2> "$OUT/bench_trainer_cupy.err"

echo "== machine"; cat "$OUT/machine.txt"
echo "== tests"; grep -E "passed|failed|error" "$OUT/pytest_gpu.txt" | tail -3
grep -c "SKIPPED" "$OUT/pytest_gpu.txt" | sed 's/^/skipped lines: /'
echo "== trainer on CuPy (s/update, GFLOP/s, GEMM GFLOP/s)"
"$PY" - "$OUT/bench_trainer_cupy.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['N']:>6} x {r['M']:<4} {r['s_per_update']:.5f} s  {r['gflops']:8.1f}  "
          f"{r['matmul_gflops']:9.1f}")
EOF
tail -3 "$OUT/bench_trainer_cupy.err"
