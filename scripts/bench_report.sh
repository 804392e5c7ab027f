#!/usr/bin/env bash
# Measures this machine's limits (read bandwidth, FMA peak) and tmoe's key kernels in one go and
# prints each kernel's fraction of its limit: median over repetitions, with min and max.
#   scripts/bench_report.sh [repetitions] [build dir]
#   (default 5 and build/; builds the benchmarks there first, Release; TMOE_BENCH_OUT=dir keeps
#   the benchmarks' JSON output there)
# GEMV and elementwise kernels are read against the 2-thread read bandwidth (bytes/s), GEMMs
# against the 2-thread FMA peak (FLOP/s), both per wall-clock second and per second of process
# CPU time (all threads; steadier when other work shares the cores). Numbers on a shared machine
# move with its load: the limits are measured in the same run so that the fractions stay
# comparable. On a shared VM whose second vCPU comes and goes, a limit measured a few seconds
# before a kernel can still be off by 40%, so the two target kernels (f32 GEMM 1024^3, bf16 GEMV
# 18432 x 7168) are also measured by bench_interleaved: kernel and limit alternating in one
# process, each kernel run against the mean of the limit runs right before and after it; the
# last table gives the median of those per-pair ratios per repetition.
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-5}"
bdir="${2:-build}"
cmake -S . -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release ${TMOE_CMAKE_ARGS:-} >/dev/null
cmake --build "$bdir" --target bench_limits bench_blas bench_thread_pool bench_expr bench_interleaved >/dev/null
if [[ -n "${TMOE_BENCH_OUT:-}" ]]; then  # keep the JSON files there
  out="$TMOE_BENCH_OUT"
  mkdir -p "$out"
else
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
run() {  # run <binary> <filter> <json>
  "$bdir/bench/$1" --benchmark_filter="$2" --benchmark_repetitions="$reps" \
    --benchmark_min_time=0.2 --benchmark_out="$out/$3" --benchmark_out_format=json >/dev/null 2>&1
}
run bench_limits '.' limits.json
run bench_blas 'gemv_(f32|bf16|f16)/out:(18432|8960)/|gemm_(f32|bf16)/out:(8960|1024)/in:(1536|1024)/T:(128|1024)/' blas.json
run bench_thread_pool 'BM_run_empty/2' pool.json
run bench_expr 'BM_silu_mul/' expr.json
run bench_interleaved '.' interleaved.json
python3 - "$out" <<'PY'
import json, statistics, sys, os
d = sys.argv[1]
runs = {}
for f in ("limits.json", "blas.json", "pool.json", "expr.json", "interleaved.json"):
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
    if name.startswith("gemv") and "_vs_" not in name:
        row(name, "bytes_per_second", "GB/s", G, True)
for name in runs:
    if name.startswith("gemm") and "_vs_" not in name:
        row(name, "FLOP/s", "GFLOP/s", G, True)
for name in runs:
    if name.startswith("BM_silu"):
        row(name, "bytes_per_second", "GB/s", G, True)
m, lo, hi = stat("BM_run_empty/2", "real_time")
unit = runs["BM_run_empty/2"][0]["time_unit"]
print(f"{'ThreadPool run() empty, 2 threads':52s} {m:8.1f} {lo:8.1f} {hi:8.1f}  {unit:7s}")
print()
print("Interleaved with the limit (bench_interleaved): per repetition the median over the pairs of")
print("kernel rate / mean of the limit runs before and after; median (min-max) over repetitions,")
print("the median of each repetition's 10th-90th percentiles, and the median rates.")
print(f"{'kernel vs limit':40s} {'ratio':>16s} {'p10-p90':>11s} {'kernel':>9s} {'limit':>9s}  unit")
for name in runs:
    if "_vs_" not in name:
        continue
    v = sorted(float(b["ratio"]) for b in runs[name])
    p10 = statistics.median(float(b["ratio_p10"]) for b in runs[name])
    p90 = statistics.median(float(b["ratio_p90"]) for b in runs[name])
    kr = statistics.median(float(b["kernel_rate"]) for b in runs[name]) / G
    lr = statistics.median(float(b["limit_rate"]) for b in runs[name]) / G
    unit = "GFLOP/s" if "fma" in name else "GB/s"
    r = f"{statistics.median(v):4.0%} ({v[0]:.0%}-{v[-1]:.0%})"
    print(f"{name.split('/iterations')[0]:40s} {r:>16s} {p10:4.0%}-{p90:<5.0%} {kr:9.1f} {lr:9.1f}  {unit}")
PY
