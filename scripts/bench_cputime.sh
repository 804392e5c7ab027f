#!/usr/bin/env bash
# One-core kernel rates per CPU-second (bench/bench_cputime.cpp), for a machine shared with other
# jobs: prints the best of the repetitions of each benchmark (the least disturbed one) and, for
# the GEMMs, its fraction of the best one-core FMA loop of the same run.
#   scripts/bench_cputime.sh [repetitions] [build dir]    (default 7, build/)
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-7}"
build="${2:-build}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${TMOE_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" --target bench_cputime >/dev/null
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$build/bench/bench_cputime" --benchmark_repetitions="$reps" --benchmark_min_time=0.1 \
  --benchmark_out="$out/r.json" --benchmark_out_format=json >/dev/null 2>&1
python3 - "$out/r.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
runs = {}
for b in j["benchmarks"]:
    if b.get("run_type") == "iteration":
        runs.setdefault(b["run_name"].replace("/process_time", ""), []).append(b)
def best(name, key):
    v = sorted(float(b[key]) for b in runs[name] if key in b)
    return v[-1], v[len(v) // 2]
peak = best("BM_fma_core", "FLOP/s")[0]
print(f"# {j['context']['date']}  reps={len(runs['BM_fma_core'])}  best one-core FMA loop {peak / 1e9:.1f} GFLOP/s")
print(f"{'benchmark':44s} {'best':>9s} {'median':>9s}  unit        best/FMA")
for name, rs in runs.items():
    if name == "BM_fma_core":
        continue
    if "FLOP/s" in rs[0]:
        b, m = best(name, "FLOP/s")
        print(f"{name:44s} {b / 1e9:9.1f} {m / 1e9:9.1f}  GFLOP/s     {b / peak:6.1%}")
    else:
        b, m = best(name, "bytes_per_second")
        print(f"{name:44s} {b / 1e9:9.1f} {m / 1e9:9.1f}  GB/cpu-s")
PY
