#!/usr/bin/env bash
# Measures this machine's limits (read bandwidth, FMA peak) and tmoe's key kernels in one go and
# prints each kernel's fraction of its limit: median over repetitions, with min and max.
#   scripts/bench_report.sh [repetitions]     (default 5; builds the benchmarks in build/ first)
# GEMV and elementwise kernels are read against the 2-thread read bandwidth (bytes/s), GEMMs
# against the 2-thread FMA peak (FLOP/s). Numbers on a shared machine move with its load: the
# limits are measured in the same run so that the fractions stay comparable.
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-5}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${TMOE_CMAKE_ARGS:-} >/dev/null
cmake --build build --target bench_limits bench_blas bench_thread_pool bench_expr >/dev/null
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
run() {  # run <binary> <filter> <json>
  "build/bench/$1" --benchmark_filter="$2" --benchmark_repetitions="$reps" \
    --benchmark_min_time=0.2 --benchmark_out="$out/$3" --benchmark_out_format=json >/dev/null 2>&1
}
run bench_limits '.' limits.json
run bench_blas 'gemv_(f32|bf16|f16)/out:(18432|8960)/|gemm_(f32|bf16)/out:(8960|1024)/in:(1536|1024)/T:(128|1024)/' blas.json
run bench_thread_pool 'BM_run_empty/2' pool.json
run bench_expr 'BM_silu_mul/' expr.json
python3 - "$out" <<'PY'
import json, statistics, sys, os
d = sys.argv[1]
runs = {}
for f in ("limits.json", "blas.json", "pool.json", "expr.json"):
    j = json.load(open(os.path.join(d, f)))
    if f == "limits.json":
        ctx = j["context"]
    for b in j["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        runs.setdefault(b["run_name"], []).append(b)
def stat(name, key):
    v = sorted(float(b[key]) for b in runs[name] if key in b)
    return statistics.median(v), v[0], v[-1]
G = 1e9
bw = stat("BM_read_bandwidth/2/real_time", "bytes_per_second")
peak = stat("BM_fma_peak/2/real_time", "FLOP/s")
print(f"# {ctx['date']}  host={ctx['host_name']}  cpus={ctx['num_cpus']}  reps={len(runs['BM_read_bandwidth/2/real_time'])}")
print(f"{'benchmark':58s} {'median':>10s} {'min':>9s} {'max':>9s}  {'unit':8s} {'of limit (min-max)':>20s}")
def row(name, key, unit, scale, limit=None):
    m, lo, hi = stat(name, key)
    frac = f"{m / limit[0]:6.0%} ({lo / limit[0]:.0%}-{hi / limit[0]:.0%})" if limit else ""
    print(f"{name:58s} {m / scale:10.2f} {lo / scale:9.2f} {hi / scale:9.2f}  {unit:8s} {frac:>20s}")
for t in (1, 2):
    row(f"BM_read_bandwidth/{t}/real_time", "bytes_per_second", "GB/s", G)
for t in (1, 2):
    row(f"BM_fma_peak/{t}/real_time", "FLOP/s", "GFLOP/s", G)
for name in runs:
    if name.startswith("gemv"):
        row(name, "bytes_per_second", "GB/s", G, bw)
for name in runs:
    if name.startswith("gemm"):
        row(name, "FLOP/s", "GFLOP/s", G, peak)
for name in runs:
    if name.startswith("BM_silu"):
        row(name, "bytes_per_second", "GB/s", G, bw)
m, lo, hi = stat("BM_run_empty/2/real_time", "real_time")
unit = runs["BM_run_empty/2/real_time"][0]["time_unit"]
print(f"{'ThreadPool run() empty, 2 threads':58s} {m:10.2f} {lo:9.2f} {hi:9.2f}  {unit:8s}")
PY
