#!/usr/bin/env bash
# Builds tmoe's CUDA tests and GEMV benchmark with nvcc alone (no CMake, none of the CPU
# dependencies; doctest's header must be findable, DOCTEST_INC=dir if it is not in the system
# include path), runs the tests, then the benchmark and PyTorch's side-by-side numbers if python3
# has torch. This is the command docs/cuda.md's table comes from.
#   scripts/cuda_device_run.sh [OUT_DIR]      (run from the repository root; default build-cuda)
set -euo pipefail
out=${1:-build-cuda}
mkdir -p "$out"
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
flags=(-std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -Iinclude
       -Itests/cuda ${DOCTEST_INC:+-I"$DOCTEST_INC"})
pids=()
for f in tests/cuda/*.cpp tests/cuda/*.cu; do
  "$NVCC" "${flags[@]}" -c "$f" -o "$out/$(basename "$f").o" & pids+=($!)
done
"$NVCC" "${flags[@]}" -Xptxas -v bench/cuda/bench_gemv.cu -o "$out/bench_cuda_gemv" \
  >"$out/ptxas.txt" 2>&1 & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
"$NVCC" "${flags[@]}" "$out"/*.o -o "$out/test_cuda"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv || true
status=0
"$out/test_cuda" || status=$?  # the benchmark still runs; the exit status reports the tests
"$out/bench_cuda_gemv" --all-configs --csv "$out/bench_cuda_gemv.csv" ${BENCH_ARGS:-}
if python3 -c 'import torch' 2>/dev/null; then
  python3 bench/cuda/torch_gemv.py
fi
exit "$status"
