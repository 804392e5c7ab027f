// tmoe/backend/cuda/sample.cuh: next-token sampling on the device, with the rules of the CPU
// Sampler (runtime/sampler.hpp, whose Sampler::distribution() is the reference twin):
//   1. repetition penalty over the last `window` tokens of the history, once per distinct id
//      (positive logits divided by the penalty, negative ones multiplied), in place;
//   2. temperature <= 0 or top_k == 1: argmax (first index on ties, NaN skipped);
//   3. else key_i = logit_i * (1 / temperature) (NaN logits are never drawn); top-k (ties at the
//      boundary: lowest ids first); e_i = exp(key_i - max key); top-p: the smallest prefix, in
//      descending key order (ties by id), whose mass reaches top_p; min-p: e_i >= min_p (the
//      top token has e = 1); one draw u * (kept mass).
// No sort: the cut-offs come from radix selection over the keys' order-preserving bit patterns
// (four 8-bit digit passes with per-warp histograms in shared memory, counting for top-k,
// summing e for top-p), ties at a cut-off resolved by id. The draw walks the kept tokens in a
// fixed device order (thread t's tokens t, t + 1024, ... by t), not in descending probability as
// the CPU does: the same distribution, but a seed does not give the CPU's tokens. e_i is fp32
// (expf); top-p compares fixed-point sums (2^-40 units, exact and order-free), the draw fp64
// sums (the CPU: fp64 throughout); kept sets can differ from the CPU's only where a cumulative
// sum lands within rounding of top_p. sample_kernel: one block of 1024 threads per row (a
// 151936-token row is read 5 to 13 times from L2 by one SM: ~0.45 ms); sample_grid_kernel (below):
// one row over all SMs (~27 us at that size).
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/sample.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "tmoe/backend/cuda/launch.cuh"
#include "tmoe/backend/cuda/model_ops.cuh"
#include "tmoe/backend/cuda/reduce.cuh"
#include "tmoe/config.hpp"

namespace tmoe::cuda {

inline constexpr int kSampleThreads = 1024;
// Dynamic shared memory of sample_kernel: per-warp digit histograms, 32 x 256 x (8 + 4) bytes.
inline constexpr std::size_t kSampleSmem =
    32 * 256 * (sizeof(unsigned long long) + sizeof(unsigned));

struct SampleArgs {
  float* logits;  // (rows, V), penalized in place
  std::size_t V;
  bool greedy;
  float inv_temp;
  int top_k;      // <= 0 or >= V: off
  float top_p;    // 1: off
  float min_p;    // 0: off
  float penalty;  // 1: off
  int window;
  // History for the penalty and the uniforms: with advance (one row, a captured decode step),
  // the tokens are history[0 .. *advance] and the draw uses u[*advance + 1]; then *advance is
  // incremented and history[*advance] = the token (as argmax_kernel does). Without: history
  // (history_len tokens, may be null) for every row, u[row].
  const std::int32_t* history;
  std::size_t history_len;
  const double* u;
  std::int32_t* token;  // (rows)
  std::int32_t* advance;
  std::int32_t* history_out;
};

namespace sample_detail {

// The history the penalty reads (hist_len tokens) and the index of the draw's uniform, as
// SampleArgs describes them (with advance: from the step's position; else history_len and row).
__device__ TMOE_INLINE void draw_inputs(const SampleArgs& a, int row, long long& hist_len,
                                        long long& uidx) {
  hist_len = (long long)a.history_len, uidx = row;
  if (a.advance) {
    hist_len = a.history ? (long long)(*a.advance) + 1 : 0;
    uidx = (long long)(*a.advance) + 1;
  }
}

// Stores the drawn token of `row`; with advance, moves the step to the next position and records
// the token there (as argmax_kernel does). One thread.
__device__ TMOE_INLINE void emit_token(const SampleArgs& a, int row, std::int32_t tok) {
  a.token[row] = tok;
  if (a.advance) {
    const int p = *a.advance + 1;
    *a.advance = p;
    if (a.history_out) a.history_out[p] = tok;
  }
}

// Order-preserving map of a float to uint32 (larger float, larger key); NaN never asked.
__device__ TMOE_INLINE std::uint32_t ordered(float f) {
  const std::uint32_t b = __float_as_uint(f);
  return b & 0x80000000u ? ~b : b | 0x80000000u;
}

__device__ TMOE_INLINE double block_sum_d(double v) {
  __shared__ double partial[kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / kWarpSize) ? partial[lane] : 0.0;
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ TMOE_INLINE float block_max_f(float v) {
  __shared__ float partial[kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / kWarpSize) ? partial[lane] : -INFINITY;
  return warp_max(v);
}

// Prefix sums over the block's threads in thread order: [excl, incl) is thread t's share, with
// incl of thread t exactly excl of thread t + 1 (no rounding gaps between shares).
template <class T>
__device__ void block_scan(T v, T& excl, T& incl) {
  __shared__ T buf[kSampleThreads];
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int o = 1; o < int(blockDim.x); o *= 2) {  // Hillis-Steele, inclusive
    const T add = int(threadIdx.x) >= o ? buf[threadIdx.x - o] : T(0);
    __syncthreads();
    buf[threadIdx.x] += add;
    __syncthreads();
  }
  incl = buf[threadIdx.x];
  excl = threadIdx.x > 0 ? buf[threadIdx.x - 1] : T(0);
  __syncthreads();
}

// The cut of a descending order: every token with ordered key > `key` is in, and of those equal
// to it, the first `eq` by id (eq < 0: all of them).
struct Cut {
  std::uint32_t key = 0;
  long long eq = -1;
  long long n_eq = 0;  // how many tokens have that key
};

// f(i, row[i]) over this thread's tokens i = threadIdx.x + j * blockDim.x in increasing j, the
// loads of kU of them in flight at once (a pass is bound by L2 latency, not bandwidth).
template <class F>
__device__ TMOE_INLINE void for_row(const float* row, int V, F&& f) {
  constexpr int kU = 8;
  const int nt = blockDim.x;
  for (int i0 = threadIdx.x; i0 < V; i0 += kU * nt) {
    float v[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) v[u] = i0 + u * nt < V ? row[i0 + u * nt] : 0.f;
#pragma unroll
    for (int u = 0; u < kU; ++u)
      if (i0 + u * nt < V) f(i0 + u * nt, v[u]);
  }
}

// Probability mass in fixed point (e * 2^40, e <= 1): integer sums are exact and independent of
// the order of the additions, so the top-p cut does not depend on the thread schedule.
using Fx = unsigned long long;
inline constexpr double kFxScale = 1099511627776.0;  // 2^40
__device__ TMOE_INLINE Fx to_fx(float e) {
  return Fx(double(e) * kFxScale);
}

// Warp 0 of the block: the digit bin (of 256) where the weight accumulated from the top bin down,
// starting at `above`, first reaches `target`, among non-empty bins (cnt > 0); if none does
// (rounding), the lowest non-empty bin. Writes the bin, the weight above it and its count.
__device__ inline void select_bin(const unsigned* cnt, const Fx* wt, Fx above, Fx target,
                                  int* s_bin, Fx* s_above, unsigned* s_count) {
  const int lane = threadIdx.x % kWarpSize;
  if (threadIdx.x >= kWarpSize) return;
  Fx own = 0;  // lane l owns bins 255 - 8l down to 248 - 8l
  bool any = false;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    own += wt[255 - 8 * lane - j];
    any |= cnt[255 - 8 * lane - j] > 0;
  }
  Fx incl = own;  // inclusive scan over the lanes, lane 0 (the top bins) first
#pragma unroll
  for (int o = 1; o < kWarpSize; o *= 2) {
    const Fx t = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += t;
  }
  const Fx before = above + incl - own;
  const unsigned reach = __ballot_sync(0xffffffffu, any && before + own >= target);
  const unsigned nonempty = __ballot_sync(0xffffffffu, any);
  const bool found = reach != 0;
  const int who = found ? __ffs(reach) - 1 : 31 - __clz(nonempty);
  if (lane == who) {
    Fx acc = before, acc_lowest = before;
    int bin = -1, lowest = -1;
    for (int j = 0; j < 8; ++j) {
      const int b = 255 - 8 * lane - j;
      if (!cnt[b]) continue;
      if (found && acc + wt[b] >= target) {
        bin = b;
        break;
      }
      lowest = b, acc_lowest = acc;
      acc += wt[b];
    }
    if (bin < 0) bin = lowest, acc = acc_lowest;
    *s_bin = bin, *s_above = acc, *s_count = cnt[bin];
  }
}

}  // namespace sample_detail

__global__ void __launch_bounds__(kSampleThreads) sample_kernel(SampleArgs a) {
  using namespace sample_detail;
  pdl_trigger();
  pdl_wait();
  const int tid = threadIdx.x, nt = blockDim.x;
  float* row = a.logits + std::size_t(blockIdx.x) * a.V;
  const int V = int(a.V);
  const std::int32_t* hist = a.history;
  long long hist_len = 0, uidx = 0;
  draw_inputs(a, blockIdx.x, hist_len, uidx);
  // 1. Repetition penalty: entry j of the window applies iff no earlier entry holds its id.
  if (a.penalty != 1.f && hist && hist_len > 0) {
    const long long w = min(hist_len, (long long)max(0, a.window)), j0 = hist_len - w;
    for (long long j = j0 + tid; j < hist_len; j += nt) {
      const std::int32_t id = hist[j];
      if (id < 0 || id >= V) continue;
      bool first = true;
      for (long long i = j0; i < j && first; ++i) first = hist[i] != id;
      if (first) {
        const float l = row[id];
        row[id] = l > 0 ? l / a.penalty : l * a.penalty;
      }
    }
    __syncthreads();
  }
  __shared__ std::int32_t result;
  if (a.greedy) {
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for_row(row, V, [&](int i, float v) {
      if (v > best) best = v, bi = i;  // NaN never wins; increasing i keeps the first of equals
    });
    block_argmax(best, bi);
    if (tid == 0) result = bi == 0x7fffffff ? 0 : bi;
  } else {
    const float inv_t = a.inv_temp;
    // Max key and the number of drawable (non-NaN) tokens.
    float mx = -INFINITY;
    int cnt = 0;
    for_row(row, V, [&](int, float l) {
      if (l == l) mx = fmaxf(mx, l * inv_t), ++cnt;
    });
    mx = block_max_f(mx);
    const long long n_ok = (long long)(block_sum_d(double(cnt)) + 0.5);
    // Per-warp digit histograms (dynamic shared memory, kSampleSmem bytes): fixed-point mass and
    // counts; warp 0's rows receive the block's sums.
    extern __shared__ unsigned long long sample_smem[];
    Fx* hw = sample_smem;                                                // [32][256]
    unsigned* hc = reinterpret_cast<unsigned*>(sample_smem + 32 * 256);  // [32][256]
    __shared__ int s_bin;
    __shared__ Fx s_above;
    __shared__ unsigned s_count;
    __shared__ long long s_last_id;
    // Equal-key ties resolved by id: the largest id admitted among the tokens whose key is c.key.
    auto tie_limit = [&](const Cut& c) -> long long {
      if (c.eq < 0 || c.eq >= c.n_eq) return (long long)V;  // every equal token admitted
      const int chunk = (V + nt - 1) / nt, lo = min(V, tid * chunk), hi = min(V, lo + chunk);
      long long mine = 0;
      for (int i = lo; i < hi; ++i) {
        const float l = row[i];
        mine += l == l && ordered(l * inv_t) == c.key;
      }
      long long before = 0, upto = 0;
      block_scan<long long>(mine, before, upto);
      if (tid == 0) s_last_id = (long long)V;
      __syncthreads();
      if (before < c.eq && upto >= c.eq) {
        long long seen = before;
        for (int i = lo; i < hi; ++i) {
          const float l = row[i];
          if (l == l && ordered(l * inv_t) == c.key && ++seen == c.eq) {
            s_last_id = i;
            break;
          }
        }
      }
      __syncthreads();
      return s_last_id;
    };
    // Radix selection over the ordered keys of the tokens that pass `in`: the cut where the
    // weight (count, or fixed-point mass e) accumulated from the largest key down reaches target.
    const int warp = tid / kWarpSize;
    auto select = [&](auto&& in, bool by_mass, Fx target) {
      std::uint32_t prefix = 0, mask = 0;
      Fx above = 0;
      for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = tid; b < 32 * 256; b += nt) hw[b] = 0, hc[b] = 0;
        __syncthreads();
        // Warp-uniform loop: the lanes that hit the same bin add once, through their leader
        // (most tokens share the first digits: per-lane atomics would serialize on one bin).
        constexpr int kU = 8;
        for (int base = 0; base < V; base += kU * nt) {
          float v[kU];
#pragma unroll
          for (int u = 0; u < kU; ++u) {
            const int i = base + u * nt + tid;
            v[u] = i < V ? row[i] : NAN;
          }
#pragma unroll
          for (int u = 0; u < kU; ++u) {
            const int i = base + u * nt + tid;
            unsigned d = 256;
            Fx w = 0;
            if (v[u] == v[u]) {
              const float k = v[u] * inv_t;
              const std::uint32_t o = ordered(k);
              if ((o & mask) == prefix && in(i, o)) {
                d = (o >> shift) & 255u;
                if (by_mass) w = to_fx(expf(k - mx));
              }
            }
            const unsigned grp = __match_any_sync(0xffffffffu, d);
            if (d < 256) {
              // w <= 2^40: two 20-bit halves, each summed over <= 32 lanes without overflow
              const unsigned lo = __reduce_add_sync(grp, unsigned(w & 0xfffffu));
              const unsigned hi = __reduce_add_sync(grp, unsigned(w >> 20));
              if (tid % kWarpSize == __ffs(grp) - 1) {
                atomicAdd(&hc[warp * 256 + d], unsigned(__popc(grp)));
                if (by_mass) atomicAdd(&hw[warp * 256 + d], Fx(lo) + (Fx(hi) << 20));
              }
            }
          }
        }
        __syncthreads();
        for (int b = tid; b < 256; b += nt) {
          Fx w = 0;
          unsigned c = 0;
          for (int j = 0; j < int(nt / kWarpSize); ++j) w += hw[j * 256 + b], c += hc[j * 256 + b];
          hw[b] = by_mass ? w : Fx(c), hc[b] = c;
        }
        __syncthreads();
        select_bin(hc, hw, above, target, &s_bin, &s_above, &s_count);
        __syncthreads();
        prefix |= std::uint32_t(s_bin) << shift, mask |= 255u << shift, above = s_above;
      }
      Cut c;
      c.key = prefix, c.n_eq = s_count;
      if (!by_mass) {
        c.eq = (long long)(target - above);  // how many of the equal tokens, by id
      } else {
        // Tokens with the cut key share one e: the fewest (by id) that reach the target.
        const float kc = __uint_as_float(prefix & 0x80000000u ? prefix & 0x7fffffffu : ~prefix);
        const Fx e = to_fx(expf(kc - mx));
        long long n = 1;
        Fx m = above + e;
        while (m < target && n < (long long)s_count) m += e, ++n;
        c.eq = n;
      }
      __syncthreads();
      return c;
    };
    // 3a. Top-k.
    const bool topk = a.top_k > 0 && a.top_k < n_ok;
    Cut ck;
    if (topk) ck = select([](int, std::uint32_t) { return true; }, false, Fx(a.top_k));
    const long long k_last = tie_limit(ck);
    auto in_topk = [&](int i, std::uint32_t o) {
      return !topk || o > ck.key || (o == ck.key && i <= k_last);
    };
    // 3b. Top-p over the fixed-point mass of the top-k set.
    const bool topp = a.top_p < 1.f;
    Cut cp;
    long long p_last = (long long)V;
    if (topp) {
      Fx tot = 0;
      for_row(row, V, [&](int i, float l) {
        if (l != l) return;
        const float k = l * inv_t;
        if (in_topk(i, ordered(k))) tot += to_fx(expf(k - mx));
      });
      __shared__ Fx s_tot;
      if (tid == 0) s_tot = 0;
      __syncthreads();
#pragma unroll
      for (int o = kWarpSize / 2; o > 0; o /= 2) tot += __shfl_xor_sync(0xffffffffu, tot, o);
      if (tid % kWarpSize == 0) atomicAdd(&s_tot, tot);
      __syncthreads();
      const Fx target = Fx(std::ceil(double(a.top_p) * double(s_tot)));
      cp = select(in_topk, true, target);
      if (topk && cp.key == ck.key) cp.eq = min(cp.eq, ck.eq);
      p_last = tie_limit(cp);
    }
    // 3d. Kept (with min-p) and drawn: e of token i, or 0 when it is not kept.
    const double min_p = a.min_p;
    auto kept_e = [&](int i, float l) -> double {
      if (l != l) return 0.0;
      const float k = l * inv_t;
      const std::uint32_t o = ordered(k);
      if (!in_topk(i, o)) return 0.0;
      if (topp && !(o > cp.key || (o == cp.key && i <= p_last))) return 0.0;
      const double e = expf(k - mx);
      return min_p > 0.0 && e < min_p && k != mx ? 0.0 : e;
    };
    double mine = 0;
    for_row(row, V, [&](int i, float l) { mine += kept_e(i, l); });
    double before = 0, upto = 0;
    block_scan<double>(mine, before, upto);
    __shared__ double s_all;
    if (tid == nt - 1) s_all = upto;
    __shared__ int s_tok, s_last_t;
    if (tid == 0) s_tok = -1, s_last_t = -1;
    __syncthreads();
    const double target = a.u[uidx] * s_all;
    if (mine > 0) atomicMax(&s_last_t, tid);
    __syncthreads();
    // The thread whose share [before, upto) holds the target walks its tokens again (same order);
    // a target at or past the end (rounding) goes to the last share.
    const bool holds =
        mine > 0 && target >= before && (target < upto || (tid == s_last_t && target >= upto));
    if (holds) {
      double acc = before;
      int pick = -1, last = -1;
      for_row(row, V, [&](int i, float l) {
        if (pick >= 0) return;
        const double e = kept_e(i, l);
        if (e <= 0.0) return;
        last = i;
        acc += e;
        if (target < acc) pick = i;
      });
      atomicMax(&s_tok, pick >= 0 ? pick : last);
    }
    __syncthreads();
    if (tid == 0) result = s_tok < 0 ? 0 : s_tok;  // no drawable token (all NaN): 0
  }
  __syncthreads();
  if (tid == 0) emit_token(a, blockIdx.x, result);
}

// ---- One row across the GPU: sample_grid_kernel (cooperative launch) ---------------------------
// The same rules and the same cuts as sample_kernel, with the row split into one contiguous slice
// per block (kept in shared memory), per-digit histograms summed in global memory (integer
// atomics: order-free) and a grid barrier between the phases. The draw walks the slices in block
// order, each slice in its threads' order. Workspace: sample_grid_workspace() bytes, zeroed
// before every launch (the barrier counter and the histograms start at 0).
inline constexpr int kSampleGridThreads = 512;
inline constexpr int kSampleGridMaxSlice = 4096;  // floats of a block's slice in shared memory
inline constexpr int kSampleGridMaxBlocks = 256;

struct SampleGridWork {
  unsigned barrier;
  unsigned pad_;
  unsigned long long hist_w[8][256];  // digit histograms: [0, 4) top-k, [4, 8) top-p
  unsigned hist_c[8][256];
  float part_max[kSampleGridMaxBlocks];
  int part_cnt[kSampleGridMaxBlocks];
  long long part_eq[2][kSampleGridMaxBlocks];
  unsigned long long part_kept[kSampleGridMaxBlocks];
  long long last_id[2];
};

namespace sample_detail {

// All blocks of a cooperative grid meet here (phase counts the barriers passed so far).
__device__ inline void grid_sync(unsigned* counter, unsigned& phase) {
  __syncthreads();
  ++phase;
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1u);
    const unsigned target = phase * gridDim.x;
    while (*reinterpret_cast<volatile unsigned*>(counter) < target) __nanosleep(20);
    __threadfence();
  }
  __syncthreads();
}

}  // namespace sample_detail

__global__ void __launch_bounds__(kSampleGridThreads)
    sample_grid_kernel(SampleArgs a, SampleGridWork* w) {
  using namespace sample_detail;
  const int tid = threadIdx.x, nt = blockDim.x, G = gridDim.x, blk = blockIdx.x;
  const int lane = tid % kWarpSize;
  const int V = int(a.V), chunk = (V + G - 1) / G;
  const int lo = min(V, blk * chunk), n = min(V, lo + chunk) - lo;
  float* row = a.logits;
  __shared__ float slice[kSampleGridMaxSlice];
  const bool cached = chunk <= kSampleGridMaxSlice;
  unsigned phase = 0;
  pdl_wait();
  const std::int32_t* hist = a.history;
  long long hist_len = 0, uidx = 0;
  draw_inputs(a, 0, hist_len, uidx);
  if (cached)
    for (int j = tid; j < n; j += nt) slice[j] = row[lo + j];
  __syncthreads();
  auto val = [&](int j) { return cached ? slice[j] : row[lo + j]; };
  // 1. Repetition penalty on this block's ids (each distinct id once).
  if (a.penalty != 1.f && hist && hist_len > 0) {
    const long long win = min(hist_len, (long long)max(0, a.window)), j0 = hist_len - win;
    for (long long j = j0 + tid; j < hist_len; j += nt) {
      const std::int32_t id = hist[j];
      if (id < lo || id >= lo + n) continue;
      bool first = true;
      for (long long i = j0; i < j && first; ++i) first = hist[i] != id;
      if (first) {
        const float l = val(id - lo);
        const float pl = l > 0 ? l / a.penalty : l * a.penalty;
        row[id] = pl;
        if (cached) slice[id - lo] = pl;
      }
    }
    __syncthreads();
  }
  const float inv_t = a.greedy ? 1.f : a.inv_temp;
  // Block max (of logits when greedy, keys otherwise) with its first index, and the count.
  float bm = -INFINITY;
  int bi = 0x7fffffff, cnt = 0;
  for (int j = tid; j < n; j += nt) {
    const float l = val(j);
    if (l != l) continue;
    ++cnt;
    const float k = l * inv_t;
    if (k > bm) bm = k, bi = lo + j;
  }
  block_argmax(bm, bi);  // thread 0
  const int bcnt = int(block_sum_d(double(cnt)) + 0.5);
  if (tid == 0) w->part_max[blk] = bm, w->part_cnt[blk] = bcnt;
  __shared__ float s_mx;
  __shared__ int s_arg;
  __shared__ long long s_nok;
  grid_sync(&w->barrier, phase);
  if (tid == 0) {
    float m = -INFINITY;
    long long c = 0;
    for (int b = 0; b < G; ++b) m = fmaxf(m, w->part_max[b]), c += w->part_cnt[b];
    s_mx = m, s_nok = c;
  }
  __syncthreads();
  const float mx = s_mx;
  const long long n_ok = s_nok;
  if (a.greedy) {
    // The first block holding the maximum writes the token (lowest index among equal maxima).
    if (tid == 0) {
      int first = -1;
      for (int b = 0; b < G && first < 0; ++b)
        if (w->part_max[b] == mx) first = b;
      s_arg = first;
    }
    __syncthreads();
    if (blk == (s_arg < 0 ? 0 : s_arg) && tid == 0)
      emit_token(a, 0, s_arg < 0 || bi == 0x7fffffff ? 0 : bi);
    return;
  }
  __shared__ unsigned hc[256];
  __shared__ unsigned long long hw[256];
  __shared__ int s_bin;
  __shared__ Fx s_above;
  __shared__ unsigned s_count;
  // Radix selection (as sample_kernel's) with global histograms h (of 8).
  auto select = [&](auto&& in, bool by_mass, Fx target, int h, Fx* total) {
    std::uint32_t prefix = 0, mask = 0;
    Fx above = 0;
    for (int digit = 0; digit < 4; ++digit) {
      const int shift = 24 - 8 * digit;
      for (int b = tid; b < 256; b += nt) hc[b] = 0, hw[b] = 0;
      __syncthreads();
      for (int j0 = 0; j0 < n; j0 += nt) {  // warp-uniform trip count
        const int j = j0 + tid;
        unsigned d = 256;
        Fx e = 0;
        if (j < n) {
          const float l = val(j);
          if (l == l) {
            const float k = l * inv_t;
            const std::uint32_t o = ordered(k);
            if ((o & mask) == prefix && in(lo + j, o)) {
              d = (o >> shift) & 255u;
              if (by_mass) e = to_fx(expf(k - mx));
            }
          }
        }
        const unsigned grp = __match_any_sync(0xffffffffu, d);
        if (d < 256) {
          const unsigned elo = __reduce_add_sync(grp, unsigned(e & 0xfffffu));
          const unsigned ehi = __reduce_add_sync(grp, unsigned(e >> 20));
          if (lane == __ffs(grp) - 1) {
            atomicAdd(&hc[d], unsigned(__popc(grp)));
            if (by_mass) atomicAdd(&hw[d], Fx(elo) + (Fx(ehi) << 20));
          }
        }
      }
      __syncthreads();
      for (int b = tid; b < 256; b += nt)
        if (hc[b]) {
          atomicAdd(&w->hist_c[h + digit][b], hc[b]);
          atomicAdd(&w->hist_w[h + digit][b], by_mass ? hw[b] : Fx(hc[b]));
        }
      grid_sync(&w->barrier, phase);
      for (int b = tid; b < 256; b += nt)
        hc[b] = w->hist_c[h + digit][b], hw[b] = w->hist_w[h + digit][b];
      __syncthreads();
      if (digit == 0 && total) {  // the whole mass of the set: the target is a share of it
        __shared__ Fx s_total;
        if (tid == 0) {
          Fx t = 0;
          for (int b = 0; b < 256; ++b) t += hw[b];
          s_total = t;
        }
        __syncthreads();
        *total = s_total;
        target = Fx(ceil(double(a.top_p) * double(s_total)));
      }
      select_bin(hc, hw, above, target, &s_bin, &s_above, &s_count);
      __syncthreads();
      prefix |= std::uint32_t(s_bin) << shift, mask |= 255u << shift, above = s_above;
    }
    Cut c;
    c.key = prefix, c.n_eq = s_count;
    if (!by_mass) {
      c.eq = (long long)(target - above);
    } else {
      __shared__ long long s_need;
      if (tid == 0) {
        const float kc = __uint_as_float(prefix & 0x80000000u ? prefix & 0x7fffffffu : ~prefix);
        const Fx e = to_fx(expf(kc - mx));
        long long cnt_n = 1;
        Fx m = above + e;
        while (m < target && cnt_n < (long long)s_count) m += e, ++cnt_n;
        s_need = cnt_n;
      }
      __syncthreads();
      c.eq = s_need;
    }
    __syncthreads();
    return c;
  };
  // Ties by id across the blocks: the largest id admitted among the tokens whose key is c.key.
  auto tie_limit = [&](const Cut& c, int which) -> long long {
    if (c.eq < 0 || c.eq >= c.n_eq) return (long long)V;  // grid-uniform
    // Tokens of this slice with the key, in id order: each thread a contiguous run of the slice.
    const int per = (n + nt - 1) / nt, a0 = min(n, tid * per), a1 = min(n, a0 + per);
    long long mine = 0;
    for (int j = a0; j < a1; ++j) {
      const float l = val(j);
      mine += l == l && ordered(l * inv_t) == c.key;
    }
    long long tb = 0, tu = 0;
    block_scan<long long>(mine, tb, tu);
    __shared__ long long s_blk;
    if (tid == nt - 1) s_blk = tu;
    __syncthreads();
    if (tid == 0) w->part_eq[which][blk] = s_blk;
    grid_sync(&w->barrier, phase);
    __shared__ long long s_before;
    if (tid == 0) {
      long long before = 0;
      for (int b = 0; b < blk; ++b) before += w->part_eq[which][b];
      s_before = before;
    }
    __syncthreads();
    const long long before = s_before + tb;
    if (before < c.eq && s_before + tu >= c.eq) {
      long long seen = before;
      for (int j = a0; j < a1; ++j) {
        const float l = val(j);
        if (l == l && ordered(l * inv_t) == c.key && ++seen == c.eq) {
          w->last_id[which] = lo + j;
          break;
        }
      }
    }
    grid_sync(&w->barrier, phase);
    return *reinterpret_cast<volatile long long*>(&w->last_id[which]);
  };
  const bool topk = a.top_k > 0 && a.top_k < n_ok;
  Cut ck;
  if (topk) ck = select([](int, std::uint32_t) { return true; }, false, Fx(a.top_k), 0, nullptr);
  const long long k_last = tie_limit(ck, 0);
  auto in_topk = [&](int i, std::uint32_t o) {
    return !topk || o > ck.key || (o == ck.key && i <= k_last);
  };
  const bool topp = a.top_p < 1.f;
  Cut cp;
  long long p_last = (long long)V;
  if (topp) {
    Fx total = 0;
    cp = select(in_topk, true, Fx(0), 4, &total);
    if (topk && cp.key == ck.key) cp.eq = min(cp.eq, ck.eq);
    p_last = tie_limit(cp, 1);
  }
  const double min_p = a.min_p;
  auto kept_fx = [&](int i, float l) -> Fx {
    if (l != l) return 0;
    const float k = l * inv_t;
    const std::uint32_t o = ordered(k);
    if (!in_topk(i, o)) return 0;
    if (topp && !(o > cp.key || (o == cp.key && i <= p_last))) return 0;
    const float e = expf(k - mx);
    if (min_p > 0.0 && double(e) < min_p && k != mx) return 0;
    return to_fx(e);
  };
  // The draw: kept mass per block, then per thread within the block that holds the target.
  Fx mine = 0;
  for (int j = tid; j < n; j += nt) mine += kept_fx(lo + j, val(j));
  Fx tb = 0, tu = 0;
  block_scan<Fx>(mine, tb, tu);
  __shared__ Fx s_bk;
  if (tid == nt - 1) s_bk = tu;
  __syncthreads();
  if (tid == 0) w->part_kept[blk] = s_bk;
  grid_sync(&w->barrier, phase);
  __shared__ Fx s_before_k, s_all;
  if (tid == 0) {
    Fx before = 0, all = 0;
    for (int b = 0; b < G; ++b) {
      if (b < blk) before += w->part_kept[b];
      all += w->part_kept[b];
    }
    s_before_k = before, s_all = all;
  }
  __syncthreads();
  const Fx all = s_all;
  if (all == 0) {  // nothing drawable (all NaN): token 0
    if (blk == 0 && tid == 0) emit_token(a, 0, 0);
    return;
  }
  Fx target = Fx(a.u[uidx] * double(all));
  if (target >= all) target = all - 1;
  const Fx b0 = s_before_k;
  if (!(target >= b0 && target < b0 + s_bk)) return;  // another block's slice holds it
  __shared__ int s_tok;
  if (tid == 0) s_tok = -1;
  __syncthreads();
  if (mine > 0 && target >= b0 + tb && target < b0 + tu) {
    Fx acc = b0 + tb;
    int pick = -1;
    for (int j = tid; j < n && pick < 0; j += nt) {
      const Fx e = kept_fx(lo + j, val(j));
      if (e == 0) continue;
      acc += e;
      if (target < acc) pick = lo + j;
    }
    s_tok = pick;
  }
  __syncthreads();
  if (tid == 0) emit_token(a, 0, s_tok < 0 ? 0 : s_tok);
}

}  // namespace tmoe::cuda
