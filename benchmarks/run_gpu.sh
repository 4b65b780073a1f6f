#!/usr/bin/env bash
# The one prepared command for the lent GPU machine: the `gpu` tests, then the
# GPU benchmark (see /work/shared/device/README.md).
#
# Here, once, from the project root (wheels into .whl/, git-ignored):
#     ../shared/device/fetch-wheels.sh cloudpickle toolz pyyaml fsspec click psutil \
#         sortedcontainers msgpack jinja2 markupsafe urllib3 packaging typing_extensions \
#         nvidia-ml-py pynvml
# Then one `run` call, carrying the wheels:
#     run(command="bash benchmarks/run_gpu.sh", carry=[".whl"], timeout_s=500)
# Logs and the JSON report come back under $OUT (gpu-tests.log, gpu-bench.log,
# bench_gpu.json). Extra arguments go to bench_gpu.py (e.g. --n-dev 5000000).
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  echo "no .whl/ wheels: using the machine's own packages"
  export PYTHONPATH=$PWD
fi

{
  nvidia-smi -L
  python3 - <<'EOF'
import importlib
for m in ("cupy", "numpy", "dask", "distributed", "zarr", "xarray", "dask_cuda", "faiss"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, "MISSING:", type(e).__name__, e)
EOF
} 2>&1 | tee "$OUT/env.log"

# GPU tests only (the CPU suite runs elsewhere); version-skew deprecation noise
# between the carried wheels and the machine's packages is not made an error.
timeout 180 python3 -m pytest -q -m gpu -p no:cacheprovider -rs \
  -W "ignore::DeprecationWarning" -W "ignore::FutureWarning" \
  tests/test_gpu.py tests/test_array_namespace.py tests/test_metrics_gpu.py \
  2>&1 | tee "$OUT/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}

timeout 270 python3 benchmarks/bench_gpu.py --workdir /tmp --out "$OUT/bench_gpu.json" "$@" \
  2>&1 | tee "$OUT/gpu-bench.log"
bench_rc=${PIPESTATUS[0]}

echo "gpu tests rc=$tests_rc, bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
