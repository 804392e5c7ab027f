#!/usr/bin/env bash
# Builds everything (library tests, the tmoe program, examples, benchmarks) and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"
