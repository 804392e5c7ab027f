#!/usr/bin/env bash
# Builds test_cuda (every CUDA test, the GPU model tests included), bench_cuda_model,
# bench_cuda_deepseek, bench_cuda_mla and bench_cuda_gemm with nvcc and the host compiler alone (no CMake; header
# dirs for doctest, xsimd, nlohmann-json and pcre2 via DOCTEST_INC, XSIMD_INC, JSON_INC, PCRE_INC
# when they are not in the system include path), runs the tests, the benchmarks and, when python3
# has torch and transformers, bench/cuda/torch_model.py and bench/cuda/torch_deepseek.py at the
# same shapes in the same call. The command behind docs/cuda.md's model tables.
#   scripts/cuda_model_run.sh [OUT_DIR]     (from the repository root; default build-cuda-model)
#   BUILD_ONLY=1: build, run nothing. TEST_DATA=dir: the fixtures (default tests/data).
#   PCRE_LIBS: how to link PCRE2 (default -lpcre2-8; e.g. -l:libpcre2-8.so.0 without the dev
#   package's symlink).
set -euo pipefail
out=${1:-build-cuda-model}
mkdir -p "$out"
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
data=$(cd "${TEST_DATA:-tests/data}" && pwd)
inc=(-Iinclude -Itests/cuda ${DOCTEST_INC:+-I"$DOCTEST_INC"} ${XSIMD_INC:+-I"$XSIMD_INC"}
     ${JSON_INC:+-I"$JSON_INC"} ${PCRE_INC:+-I"$PCRE_INC"})
cu=(-std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr "${inc[@]}")
cxx=(-std=c++20 -O2 -pthread "${inc[@]}" -DTMOE_TEST_DATA_DIR="\"$data\"" -I/usr/local/cuda/include)
pids=()
"$NVCC" "${cu[@]}" -Xptxas -v -c tests/cuda/api_impl.cu -o "$out/api_impl.o" >"$out/ptxas.txt" 2>&1 &
pids+=($!)
"$NVCC" "${cu[@]}" bench/cuda/bench_mla.cu -o "$out/bench_cuda_mla" -lcublas & pids+=($!)
"$NVCC" "${cu[@]}" bench/cuda/bench_gemm.cu -o "$out/bench_cuda_gemm" -lcublas & pids+=($!)
for f in tests/cuda/*.cpp bench/cuda/bench_model.cpp bench/cuda/bench_deepseek.cpp; do
  ${CXX:-g++} "${cxx[@]}" -c "$f" -o "$out/$(basename "$f").o" & pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
if [ "$fail" != 0 ]; then cat "$out/ptxas.txt"; echo "build failed"; exit 1; fi
objs=$(for f in tests/cuda/*.cpp; do echo "$out/$(basename "$f").o"; done)
"$NVCC" -o "$out/test_cuda" $objs "$out/api_impl.o" -lcublas ${PCRE_LIBS:--lpcre2-8}
"$NVCC" -o "$out/bench_cuda_model" "$out/bench_model.cpp.o" "$out/api_impl.o" -lcublas
"$NVCC" -o "$out/bench_cuda_deepseek" "$out/bench_deepseek.cpp.o" "$out/api_impl.o" -lcublas \
  ${PCRE_LIBS:--lpcre2-8}
echo "built $out/test_cuda $out/bench_cuda_model $out/bench_cuda_deepseek $out/bench_cuda_mla $out/bench_cuda_gemm"
[ -n "${BUILD_ONLY:-}" ] && exit 0
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv || true
status=0
"$out/test_cuda" ${TEST_ARGS:-} || status=$?
"$out/bench_cuda_model" ${BENCH_ARGS:-} || status=$?
"$out/bench_cuda_deepseek" || status=$?
"$out/bench_cuda_mla" || status=$?
"$out/bench_cuda_gemm" || status=$?
if python3 -c 'import torch, transformers' 2>/dev/null; then
  python3 bench/cuda/torch_model.py ${BENCH_ARGS:-} || status=$?
  python3 bench/cuda/torch_deepseek.py || status=$?
fi
if python3 -c 'import torch' 2>/dev/null; then
  python3 bench/cuda/torch_gemm.py || status=$?
fi
exit "$status"
