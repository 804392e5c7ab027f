#!/usr/bin/env bash
# Measures this machine's limits (read bandwidth, FMA peak) and tmoe's key kernels in one go and
# prints each kernel's fraction of its limit: median over repetitions, with min and max.
#   scripts/bench_report.sh [repetitions]     (default 5; builds the benchmarks in build/ first)
# GEMV and elementwise kernels are read against the 2-thread read bandwidth (bytes/s), GEMMs
# against the 2-thread FMA peak (FLOP/s), both per wall-clock second and per second of process
# CPU time (all threads; steadier when other work shares the cores). Numbers on a shared machine
# move with its load: the limits are measured in the same run so that the fractions stay
# comparable.
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
        name = b["run_name"].replace("/process_time", "").replace("/real_time", "")
        runs.setdefault(name, []).append(b)
def stat(name, key, per_cpu=False):
    # per_cpu: the rate per second of process CPU time (all threads) instead of wall time.
    v = sorted(float(b[key]) * (b["real_time"] / b["cpu_time"] if per_cpu else 1.0)
               for b in runs[name] if key in b)
    return statistics.median(v), v[0], v[-1]
G = 1e9
lim = {k: (stat(n, k), stat(n, k, True)) for n, k in
       (("BM_read_bandwidth/2", "bytes_per_second"), ("BM_fma_peak/2", "FLOP/s"))}
print(f"# {ctx['date']}  host={ctx['host_name']}  cpus={ctx['num_cpus']}  reps={len(runs['BM_read_bandwidth/2'])}")
print(f"{'benchmark':52s} {'median':>8s} {'min':>8s} {'max':>8s}  {'unit':7s} {'of limit, wall':>17s} {'per CPU-s':>17s}")
def frac(name, key, per_cpu):
    m, lo, hi = stat(name, key, per_cpu)
    l = lim[key][1 if per_cpu else 0][0]
    return f"{m / l:4.0%} ({lo / l:.0%}-{hi / l:.0%})"
def row(name, key, unit, scale, limit=False):
    m, lo, hi = stat(name, key)
    fw = frac(name, key, False) if limit else ""
    fc = frac(name, key, True) if limit and "cpu_time" in runs[name][0] else ""
    print(f"{name:52s} {m / scale:8.2f} {lo / scale:8.2f} {hi / scale:8.2f}  {unit:7s} {fw:>17s} {fc:>17s}")
for t in (1, 2):
    row(f"BM_read_bandwidth/{t}", "bytes_per_second", "GB/s", G)
for t in (1, 2):
    row(f"BM_fma_peak/{t}", "FLOP/s", "GFLOP/s", G)
for name in runs:
    if name.startswith("gemv"):
        row(name, "bytes_per_second", "GB/s", G, True)
for name in runs:
    if name.startswith("gemm"):
        row(name, "FLOP/s", "GFLOP/s", G, True)
for name in runs:
    if name.startswith("BM_silu"):
        row(name, "bytes_per_second", "GB/s", G, True)
m, lo, hi = stat("BM_run_empty/2", "real_time")
unit = runs["BM_run_empty/2"][0]["time_unit"]
print(f"{'ThreadPool run() empty, 2 threads':52s} {m:8.1f} {lo:8.1f} {hi:8.1f}  {unit:7s}")
PY
