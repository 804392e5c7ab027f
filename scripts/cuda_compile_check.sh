#!/usr/bin/env bash
# Compiles every CUDA source of tmoe with nvcc for sm_90a (compile only: no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
n=0
for f in $(find include/tmoe/backend/cuda -name '*.cuh' 2>/dev/null; find examples bench tests -name '*.cu' 2>/dev/null); do
  src="$f"
  if [[ "$f" == *.cuh ]]; then
    src="$out/$(echo "$f" | tr '/' '_').cu"
    echo "#include \"${f#include/}\"" > "$src"
  fi
  "$NVCC" -std=c++20 -gencode=arch=compute_90a,code=sm_90a -Iinclude -I/usr/include/eigen3 \
    --expt-relaxed-constexpr -c "$src" -o "$out/o.o"
  n=$((n + 1))
done
echo "nvcc: compiled $n CUDA sources for sm_90a"
