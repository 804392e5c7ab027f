#!/usr/bin/env bash
# Builds the library tests with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/) and runs
# them. Examples and benchmarks are left out; the GPU suite is skipped (no GPU in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTMOE_SANITIZE=ON \
  -DTMOE_BUILD_EXAMPLES=OFF -DTMOE_BUILD_BENCHMARKS=OFF ${TMOE_CMAKE_ARGS:-} >/dev/null
cmake --build build-asan "$@"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir build-asan --output-on-failure -j "$(nproc)"
