#!/usr/bin/env bash
# Configures and builds tmoe in build/ (Release). Extra arguments go to cmake --build,
# e.g. scripts/build.sh --target tmoe_cli.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${TMOE_CMAKE_ARGS:-} >/dev/null
cmake --build build "$@"
