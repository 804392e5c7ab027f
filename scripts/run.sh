#!/usr/bin/env bash
# The main job: builds the tmoe program and runs it on its built-in default model.
# Extra arguments are passed to `tmoe generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh --target tmoe_cli
exec build/bin/tmoe generate "$@"
