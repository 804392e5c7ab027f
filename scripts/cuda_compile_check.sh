#!/usr/bin/env bash
# Compiles every CUDA source of tmoe with nvcc for sm_90a (compile only: no GPU needed): each
# .cuh under include/tmoe/backend/cuda on its own (so every header includes what it uses), and
# every .cu under examples, bench and tests. Runs nproc compiles at a time; names what failed.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
srcs=()
for f in $(find include/tmoe/backend/cuda -name '*.cuh' 2>/dev/null | sort); do
  src="$out/$(echo "$f" | tr '/' '_').cu"
  echo "#include \"${f#include/}\"" >"$src"
  srcs+=("$src")
done
for f in $(find examples bench tests -name '*.cu' 2>/dev/null | sort); do srcs+=("$f"); done
export NVCC out
printf '%s\n' "${srcs[@]}" | xargs -P "$(nproc)" -I{} sh -c \
  '"$NVCC" -std=c++20 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Itests/cuda \
     --expt-relaxed-constexpr -c "{}" -o "$out/$(basename "{}").o" || { echo "nvcc failed: {}" >&2; exit 255; }'
echo "nvcc: compiled ${#srcs[@]} CUDA sources for sm_90a"
