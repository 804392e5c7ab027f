// tmoe/backend/cuda/mla_tc.cuh: MLA absorbed decode attention on the tensor cores, over a bf16
// latent cache (the float-cache kernel is mla.cuh; same math, same slices, same merge).
//
//   ctx[t, h] = sum_{j <= pos[t]} softmax_j(scale qa[t, h] . cache[j]) cache[j, 0:R]
//
// cache (cap, K) bf16, K = R + Dr; qa (T, H, K) float (rounded to bf16 once per block) or bf16
// (mla_absorb_q's bf16 output, the same values: copied as is, half the bytes); ctx,
// the slices' partials and their log-sum-exp float, as mla.cuh writes them; mla_tc_merge_kernel
// combines the slices (mla_merge_kernel's weights, more loads in flight).
//
// mla_attention_tc_kernel<MT, Q, S> (grid (ceil(H / 16 MT), n_split, T), 32 MT Q threads = MT Q
// warps, + 1 producer warp when S > 0): a block takes 16 MT heads (the mma's M dimension: MT m16
// tiles; MT = 4 for R1's 128 heads, two head blocks per slice; MT = 1 for up to 32 heads, e.g.
// R1's 16 per GPU under 8-way tensor parallelism) and one slice of the keys 0..pos[t]. Q warps
// per m-tile: 4 for MT = 4 (512 threads), 8 for MT = 1 when R % 128 == 0 (256 threads), else 4.
// Tiles of 32 keys (K bf16 each, rows padded by 16 bytes so that ldmatrix rows hit distinct
// banks) stream through a ring in shared memory:
//   S = 0 (MT = 4, and MT = 1 with 4 warps): every thread issues cp.async for the tiles,
//     mla_tc_stages(MT) buffers (2 for MT = 4: its q and partial scores leave room for no more),
//     rows past the slice zero-filled; three __syncthreads per tile;
//   S > 0 (MT = 1 with 8 warps, R1's 16 heads: S = kMlaTcWsStages = 4, 188 KB at R1): the last
//     warp is a producer: lane r copies key row r of each tile (one contiguous row) with the copy
//     engine (cp.async.bulk, L2 evict_first: the stream is read once) into stage it % S, which
//     completes the stage's `full` mbarrier; the consumer warps wait on it, compute, and arrive on
//     its `empty` mbarrier, which the producer waits on before refilling the stage; the two
//     barriers inside a tile are named barriers over the consumers. Rows past the slice repeat
//     its last row (their p is 0). Before griddepcontrol.wait (the previous kernel may still
//     run), the producer asks the L2 for the slice's first kMlaTcPrefetch tiles
//     (cp.async.bulk.prefetch.L2, a hint: pos may be read before its writer completes).
// All products are mma.sync.m16n8k16 bf16 x bf16 -> fp32:
//   scores (16 MT x 32) = q (16 MT x K) key^T: warp (mt, kq) = (w % MT, w / MT) takes m-tile mt
//     and the share kq (of Q) of the K / 16 k-steps (q's A fragments read from shared memory per
//     tile: held in registers they spilled); the Q partials are added through shared memory;
//   softmax: 2 Q threads per head row, 16 / Q keys each, running max and sum in registers (base
//     2: the scale times log2(e) multiplies the fp32 scores), p rounded to bf16 into shared
//     memory;
//   values (16 MT x R) += p (16 MT x 32) tile[:, 0:R]: warp (mt, dq) takes m-tile mt and the
//     share dq of the R latent dims (ldmatrix.trans gives the B fragments of the key-major tile),
//     R / (8 Q) n8 tiles of fp32 accumulators in registers, rescaled by the tile's correction.
// Errors against exact arithmetic on the stored (bf16) cache: q rounded to bf16 (each score off
// by at most scale 2^-9 sum_i |q_i k_i|) and p rounded to bf16 (relative 2^-9; the softmax sum
// stays fp32); tests/cuda/test_mla.cpp bounds ctx by both.
// Needs R % 64 == 0, R <= 512, Dr % 16 == 0, R + Dr <= 576 (checked by the launcher).
#pragma once
#if !defined(__CUDACC__)
#error "tmoe/backend/cuda/mla_tc.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "tmoe/backend/cuda/launch.cuh"
#include "tmoe/backend/cuda/mla.cuh"
#include "tmoe/core/dtype.hpp"

namespace tmoe::cuda {

inline constexpr int kMlaTcKeys = 32;  // keys per tile
inline constexpr int kMlaTcMaxK = 576;
inline constexpr int kMlaTcMaxR = 512;
inline constexpr int kMlaTcSp = kMlaTcKeys + 4;  // fp32 score row pitch (floats)
inline constexpr int kMlaTcPp = kMlaTcKeys + 8;  // bf16 p row pitch (elements)

struct MlaTcArgs {
  const float* qa;    // (T, H, K)
  const bf16* cache;  // (cap, K)
  const std::int32_t* pos;
  float* ctx;       // (T, H, R)
  float* part_o;    // (T, H, n_split, R)
  float* part_lse;  // (T, H, n_split)
  int H, R, Dr, n_split;
  float scale;
  const bf16* qa_b = nullptr;  // (T, H, K) bf16: used instead of qa when set (16-byte aligned)
};

// Key tiles in flight per block: four for 16-head blocks (one block per SM, 188 KB at R1), two
// for 64-head blocks (their q and partial scores leave room for two: 192 KB).
inline constexpr int mla_tc_stages(int MT) {
  return MT == 1 ? 4 : 2;
}
// The ring of the 16-head kernel with 8 warps per m-tile (R % 128 == 0), fed by a producer warp
// through the copy engine: 4 stages (5 measured the same: 24.1 against 24.0 us at 32K).
inline constexpr int kMlaTcWsStages = 4;
// Tiles of its slice that the producer asks the L2 for before the previous kernel has completed
// (PDL): 2 (9.7 MB at R1's 132 slices, about the HBM time of the merge kernel before it; 3
// measured 0.1-0.2 us faster alone but 1 us slower after mla_absorb_q, whose reads it delays).
inline constexpr int kMlaTcPrefetch = 2;
// Warps per m-tile (each owns 1 / Q of the k-steps and of the latent dims): 8 for 16-head blocks
// when R % 128 == 0 (256 threads: the per-tile critical path of 4 warps was ~2 us, longer than
// the tile's 1.5 us share of HBM), else 4 (R / 4 is then a whole number of n8-tile pairs); 4 for
// 64-head blocks (512 threads).
inline int mla_tc_groups(int MT, int R) {
  return MT == 1 && R % 128 == 0 ? 8 : 4;
}

// Shared memory of mla_attention_tc_kernel<MT, Q, S>, in bytes, for K = R + Dr (S > 0: the ring
// of S stages fed by a producer warp, with its 2 S mbarriers; S = 0: mla_tc_stages(MT), cp.async).
inline constexpr std::size_t mla_tc_smem_bytes(int MT, int Q, int K, int S = 0) {
  const std::size_t rows = 16 * std::size_t(MT), kp = std::size_t(K) + 8;
  const std::size_t stages = S > 0 ? S : mla_tc_stages(MT);
  return rows * kp * 2                           // q, bf16
         + stages * kMlaTcKeys * kp * 2          // the key tiles, bf16
         + std::size_t(Q) * rows * kMlaTcSp * 4  // the groups' partial scores
         + rows * kMlaTcPp * 2                   // p, bf16
         + 4 * rows * 4                          // correction, max, sum (+ 8-byte alignment)
         + (S > 0 ? 2 * stages * 8 : 0);         // full and empty mbarriers
}

__device__ TMOE_INLINE void ldsm_x4(unsigned (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ TMOE_INLINE void ldsm_x4_t(unsigned (&r)[4], const void* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// c += a (16x16, row) b (16x8, col), bf16 in, fp32 accumulate.
__device__ TMOE_INLINE void mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                     unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// mbarriers (shared::cta addresses) and the bulk copy engine (sm_90).
__device__ TMOE_INLINE unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ TMOE_INLINE void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ TMOE_INLINE void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ TMOE_INLINE void mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ TMOE_INLINE void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Waits until the phase of parity `parity` has completed.
__device__ TMOE_INLINE void mbar_wait(unsigned bar, unsigned parity) {
  unsigned done;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
// An L2 policy for data read once: evicted first (the key stream, which would otherwise push the
// slices' partials out of the L2 before the merge reads them).
__device__ TMOE_INLINE std::uint64_t l2_evict_first() {
  std::uint64_t p;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
  return p;
}
// bytes (a multiple of 16; both addresses 16-byte aligned) from global to shared memory by the
// copy engine, completing on the mbarrier bar (complete_tx), under the L2 policy pol.
__device__ TMOE_INLINE void bulk_copy_g2s(void* dst, const void* src, unsigned bytes, unsigned bar,
                                          std::uint64_t pol) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], "
      "[%1], %2, [%3], %4;\n" ::"r"(smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(bar), "l"(pol)
      : "memory");
}
// Asks the L2 for bytes (a multiple of 16) at src (16-byte aligned), a hint with no completion to
// wait for (sm_90).
__device__ TMOE_INLINE void bulk_prefetch_l2(const void* src, unsigned bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
}
// Named barrier 1 over the n consumer threads (the producer warp takes no part).
__device__ TMOE_INLINE void consumers_sync(int n) {
  asm volatile("bar.sync 1, %0;\n" ::"r"(n) : "memory");
}

template <int MT, int Q, int S = 0>
__global__ void __launch_bounds__(32 * MT * Q + (S > 0 ? 32 : 0), 1)
    mla_attention_tc_kernel(MlaTcArgs a) {
  constexpr int kQ = Q, kRows = 16 * MT, kThreads = 32 * MT * kQ;  // kThreads: the consumers
  constexpr bool kWs = S > 0;  // a producer warp (the last) feeds the ring by the copy engine
  constexpr int kStages = kWs ? S : mla_tc_stages(MT);
  constexpr int kTpr = kThreads / kRows, kKpt = kMlaTcKeys / kTpr;  // softmax: threads, keys
  constexpr int kMaxKs = (kMlaTcMaxK / 16 + kQ - 1) / kQ;           // k-steps per group
  constexpr int kMaxPairs = kMlaTcMaxR / (16 * kQ);                 // n8-tile pairs per group
  static_assert(kKpt == 4 || kKpt == 2, "softmax: 2 or 4 keys per thread");
  const int hb = blockIdx.x, split = blockIdx.y, t = blockIdx.z;
  const int R = a.R, K = a.R + a.Dr, kp = K + 8;
  const int h0 = hb * kRows, nh = min(kRows, a.H - h0);
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int mt = warp % MT, quarter = warp / MT;  // quarter: the group, 0 .. kQ - 1
  extern __shared__ __align__(16) unsigned char mla_tc_smem[];
  __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(mla_tc_smem);  // (rows, kp)
  __nv_bfloat16* tile = sq + kRows * kp;                              // kStages x (32, kp)
  float* spart =
      reinterpret_cast<float*>(tile + kStages * kMlaTcKeys * kp);  // kQ x (rows, kMlaTcSp)
  __nv_bfloat16* sp = reinterpret_cast<__nv_bfloat16*>(spart + kQ * kRows * kMlaTcSp);
  float* scorr = reinterpret_cast<float*>(sp + kRows * kMlaTcPp);  // (rows)
  float* sm = scorr + kRows;                                       // (rows)
  float* sl = sm + kRows;                                          // (rows)
  // kWs: full[s] completes when stage s has landed (the producer's arrival + the copies' bytes),
  // empty[s] when every consumer thread is done with it.
  std::uint64_t* full = reinterpret_cast<std::uint64_t*>(
      (reinterpret_cast<std::uintptr_t>(sl + kRows) + 7) & ~std::uintptr_t(7));
  std::uint64_t* empty = full + kStages;
  if constexpr (kWs) {
    if (tid == 0) {
      for (int s = 0; s < kStages; ++s)
        mbar_init(smem_addr(full + s), 1), mbar_init(smem_addr(empty + s), kThreads);
      mbar_fence_init();
    }
    __syncthreads();
  }
  pdl_trigger();
  if constexpr (kWs) {
    // Before the previous kernel has completed (PDL: its tail and this grid's launch leave the
    // HBM idle for ~2 us), the producer asks the L2 for the first tiles of this block's slice.
    // A hint only: pos may still be an earlier value (read volatile; any value an earlier call
    // used with this cache names rows that exist), and the copies below read after pdl_wait.
    if (warp == kThreads / kWarpSize) {
      const int len0 = *static_cast<const volatile std::int32_t*>(a.pos + t) + 1;
      if (len0 > 0) {
        const MlaSlice s0 = mla_slice(len0, a.n_split, split);  // empty past the slices
        const int e0 = min(s0.j1, s0.j0 + kMlaTcPrefetch * kMlaTcKeys);
        for (int j = s0.j0 + lane; j < e0; j += kWarpSize)
          bulk_prefetch_l2(a.cache + std::size_t(j) * K, K * 2);
      }
    }
  }
  pdl_wait();

  const int len = a.pos[t] + 1;
  const auto [ns, j0, j1] = mla_slice(len, a.n_split, split);
  if (split >= ns) return;
  const int ntiles = (j1 - j0 + kMlaTcKeys - 1) / kMlaTcKeys;
  const int K8 = K / 8;

  auto load_tile = [&](int it, int buf) {
    __nv_bfloat16* dst = tile + buf * kMlaTcKeys * kp;
    const int base = j0 + it * kMlaTcKeys;
    for (int i = tid; i < kMlaTcKeys * K8; i += kThreads) {
      const int r = i / K8, c = i % K8;
      const bool valid = base + r < j1;
      const bf16* src = a.cache + std::size_t(valid ? base + r : j0) * K + 8 * c;
      cp_async16(dst + r * kp + 8 * c, src, valid);
    }
    cp_async_commit();
  };
  if constexpr (kWs) {
    // The producer warp: lane r copies key row r of each tile (1 row of K bf16, contiguous; rows
    // past the slice repeat its last row, whose p is 0) into stage it % kStages once the
    // consumers have released it.
    if (warp == kThreads / kWarpSize) {
      const std::uint64_t pol = l2_evict_first();
      for (int it = 0; it < ntiles; ++it) {
        const int s = it % kStages;
        if (it >= kStages) mbar_wait(smem_addr(empty + s), (it / kStages - 1) & 1);
        if (lane == 0) mbar_arrive_expect_tx(smem_addr(full + s), kMlaTcKeys * K * 2);
        __syncwarp();
        const int j = min(j0 + it * kMlaTcKeys + lane, j1 - 1);
        bulk_copy_g2s(tile + (s * kMlaTcKeys + lane) * kp, a.cache + std::size_t(j) * K, K * 2,
                      smem_addr(full + s), pol);
      }
      return;
    }
  } else {
    // The first kStages - 1 tiles (one commit group each, empty past the slice).
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s)
      if (s < ntiles)
        load_tile(s, s);
      else
        cp_async_commit();
  }

  if (a.qa_b != nullptr) {
    // q already in bf16 (mla_absorb_q's bf16 output: the same rounding as below): 16-byte
    // copies, kQb in flight per thread (all of a 16-head block's 18 KB in one round).
    constexpr int kQb = MT == 1 ? (16 * kMlaTcMaxK / 8 + kThreads - 1) / kThreads : 8;
    const int n8 = kRows * K8, rot = MT == 1 ? (split * 64) % n8 : 0;
    const uint4* q8 = reinterpret_cast<const uint4*>(a.qa_b + (std::size_t(t) * a.H + h0) * K);
    for (int i0 = tid; i0 < n8; i0 += kQb * kThreads) {
      uint4 v[kQb];
#pragma unroll
      for (int u = 0; u < kQb; ++u) {
        int i = i0 + u * kThreads;
        i = i + rot < n8 ? i + rot : i + rot - n8;
        v[u] = i0 + u * kThreads < n8 && i / K8 < nh ? __ldg(q8 + i) : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int u = 0; u < kQb; ++u) {
        int i = i0 + u * kThreads;
        i = i + rot < n8 ? i + rot : i + rot - n8;
        if (i0 + u * kThreads < n8)
          *reinterpret_cast<uint4*>(sq + (i / K8) * kp + 8 * (i % K8)) = v[u];
      }
    }
  } else {
    const float* qsrc = a.qa + (std::size_t(t) * a.H + h0) * K;
    // q: 16-byte loads, kQu in flight per thread (a 64-head block reads 147 KB of q from L2; one
    // dependent 4-byte load at a time cost ~20 us per block); a 16-head block takes all of its
    // q (36 KB at R1) in one round, and, since every slice reads the same q, starts at its own
    // offset (rot) so that the SMs' requests do not all meet on the same L2 lines at once (64-head
    // blocks: unchanged, as measured before).
    {
      constexpr int kQu = MT == 1 ? (16 * kMlaTcMaxK / 4 + kThreads - 1) / kThreads : 8;
      const int K4 = K / 4, n4 = kRows * K4, rot = MT == 1 ? (split * 64) % n4 : 0;
      const float4* q4 = reinterpret_cast<const float4*>(qsrc);
      for (int i0 = tid; i0 < n4; i0 += kQu * kThreads) {
        float4 v[kQu];
#pragma unroll
        for (int u = 0; u < kQu; ++u) {
          int i = i0 + u * kThreads;
          i = i + rot < n4 ? i + rot : i + rot - n4;
          v[u] = i0 + u * kThreads < n4 && i / K4 < nh ? __ldg(q4 + i)
                                                       : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < kQu; ++u) {
          int i = i0 + u * kThreads;
          i = i + rot < n4 ? i + rot : i + rot - n4;
          if (i0 + u * kThreads < n4) {
            __nv_bfloat162* d =
                reinterpret_cast<__nv_bfloat162*>(sq + (i / K4) * kp + 4 * (i % K4));
            d[0] = __floats2bfloat162_rn(v[u].x, v[u].y);
            d[1] = __floats2bfloat162_rn(v[u].z, v[u].w);
          }
        }
      }
    }
  }
  if (tid < kRows) sm[tid] = -INFINITY, sl[tid] = 0.f;
  auto sync = [] {
    if constexpr (kWs)
      consumers_sync(kThreads);
    else
      __syncthreads();
  };
  sync();

  // This warp's q: m-tile mt, k-steps [ks0, ks1) (A fragments read from shared memory per tile:
  // holding them in registers spilled at 512 threads' 128-register cap).
  const int nks = K / 16, ks0 = quarter * nks / kQ, ks1 = (quarter + 1) * nks / kQ;
  const __nv_bfloat16* qrow = sq + (mt * 16 + lane % 16) * kp + (lane / 16) * 8;

  // Softmax role: row sr, keys kKpt sub .. kKpt (sub + 1) - 1; running max / sum (base 2) in
  // registers.
  const int sr = tid / kTpr, sub = tid % kTpr;
  float run_m = -INFINITY, run_l = 0.f;
  const float scale2 = a.scale * 1.4426950408889634f;

  // Value role: m-tile mt, latent dims [d0, d0 + R / kQ): R / (16 kQ) pairs of n8 tiles (whole:
  // mla_tc_groups takes 8 only for R % 128 == 0).
  const int dq = R / kQ, d0 = quarter * dq, npairs = dq / 16;
  float acc[kMaxPairs][2][4];
#pragma unroll
  for (int p = 0; p < kMaxPairs; ++p)
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[p][n][e] = 0.f;

  // Three barriers per tile: (a) tile it has landed, and every warp is done with tile it - 1 (its
  // buffer is refilled with tile it + kStages - 1 right after) and with sp / scorr; (b) the
  // partial scores are complete; (c) p and the correction are complete. spart is rewritten only
  // after the next (a), which every warp reaches after reading it in the softmax.
  // kWs: (a) is the wait on full[it % kStages]; each consumer releases the stage after its values
  // (empty), and (b), (c) are named barriers over the consumers.
  for (int it = 0; it < ntiles; ++it) {
    if constexpr (kWs) {
      mbar_wait(smem_addr(full + it % kStages), (it / kStages) & 1);
    } else {
      cp_async_wait<kStages - 2>();
      __syncthreads();
      const int nx = it + kStages - 1;
      if (nx < ntiles)
        load_tile(nx, nx % kStages);
      else
        cp_async_commit();
    }
    const __nv_bfloat16* kt = tile + (it % kStages) * kMlaTcKeys * kp;
    // Scores, this warp's quarter of the k-steps, all 32 keys (4 n8 tiles).
    {
      float s[4][4];
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
      for (int i = 0; i < kMaxKs; ++i) {
        if (ks0 + i < ks1) {
          const int k0 = (ks0 + i) * 16 + ((lane / 8) % 2) * 8;
          unsigned qf[4];
          ldsm_x4(qf, qrow + (ks0 + i) * 16);
#pragma unroll
          for (int np = 0; np < 2; ++np) {
            unsigned b[4];
            ldsm_x4(b, kt + (np * 16 + lane % 8 + (lane / 16) * 8) * kp + k0);
            mma_bf16(s[2 * np], qf, b[0], b[1]);
            mma_bf16(s[2 * np + 1], qf, b[2], b[3]);
          }
        }
      }
      float* dst = spart + (quarter * kRows + mt * 16 + lane / 4) * kMlaTcSp + 2 * (lane % 4);
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        *reinterpret_cast<float2*>(dst + n * 8) = make_float2(s[n][0], s[n][1]);
        *reinterpret_cast<float2*>(dst + 8 * kMlaTcSp + n * 8) = make_float2(s[n][2], s[n][3]);
      }
    }
    sync();
    // Online softmax: kTpr threads per row (consecutive lanes), kKpt keys each.
    {
      const int base = j0 + it * kMlaTcKeys + kKpt * sub;
      float v[kKpt];
#pragma unroll
      for (int k = 0; k < kKpt; ++k) v[k] = 0.f;
#pragma unroll
      for (int q = 0; q < kQ; ++q) {
        const float* src = spart + (q * kRows + sr) * kMlaTcSp + kKpt * sub;
        if constexpr (kKpt == 4) {
          const float4 w = *reinterpret_cast<const float4*>(src);
          v[0] += w.x, v[1] += w.y, v[2] += w.z, v[3] += w.w;
        } else {
          const float2 w = *reinterpret_cast<const float2*>(src);
          v[0] += w.x, v[1] += w.y;
        }
      }
      float s[kKpt], mx = -INFINITY;
#pragma unroll
      for (int k = 0; k < kKpt; ++k)
        mx = fmaxf(mx, s[k] = base + k < j1 ? v[k] * scale2 : -INFINITY);
#pragma unroll
      for (int o = 1; o < kTpr; o *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(run_m, mx);  // finite: a tile has at least one valid key
      float p[kKpt], ps = 0.f;
#pragma unroll
      for (int k = 0; k < kKpt; ++k) ps += (p[k] = exp2f(s[k] - m_new));
#pragma unroll
      for (int o = 1; o < kTpr; o *= 2) ps += __shfl_xor_sync(0xffffffffu, ps, o);
      const float corr = exp2f(run_m - m_new);  // 0 on the first tile
      run_l = fmaf(run_l, corr, ps);
      run_m = m_new;
      __nv_bfloat162* pd = reinterpret_cast<__nv_bfloat162*>(sp + sr * kMlaTcPp + kKpt * sub);
#pragma unroll
      for (int k = 0; k < kKpt / 2; ++k) pd[k] = __floats2bfloat162_rn(p[2 * k], p[2 * k + 1]);
      if (sub == 0) scorr[sr] = corr, sm[sr] = run_m, sl[sr] = run_l;
    }
    sync();
    // Values: acc = acc * corr + p tile[:, d0 .. d0 + R / kQ).
    {
      const float c0 = scorr[mt * 16 + lane / 4], c1 = scorr[mt * 16 + lane / 4 + 8];
#pragma unroll
      for (int p = 0; p < kMaxPairs; ++p)
#pragma unroll
        for (int n = 0; n < 2; ++n)
          acc[p][n][0] *= c0, acc[p][n][1] *= c0, acc[p][n][2] *= c1, acc[p][n][3] *= c1;
#pragma unroll
      for (int ks = 0; ks < kMlaTcKeys / 16; ++ks) {
        unsigned pf[4];
        ldsm_x4(pf, sp + (mt * 16 + lane % 16) * kMlaTcPp + ks * 16 + (lane / 16) * 8);
        const __nv_bfloat16* vrow =
            kt + (ks * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kp + d0 + (lane / 16) * 8;
#pragma unroll
        for (int p = 0; p < kMaxPairs; ++p) {
          if (p < npairs) {
            unsigned b[4];
            ldsm_x4_t(b, vrow + p * 16);
            mma_bf16(acc[p][0], pf, b[0], b[1]);
            mma_bf16(acc[p][1], pf, b[2], b[3]);
          }
        }
      }
    }
    if constexpr (kWs) mbar_arrive(smem_addr(empty + it % kStages));
  }

  // Output: rows g, g + 8 of m-tile mt, dims d0 + 16 p + 8 n + 2 (lane % 4) + {0, 1}.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = mt * 16 + lane / 4 + 8 * half;
    if (row >= nh) continue;
    const int h = h0 + row;
    const float L = sl[row];  // 0 only for a slice with no keys
    const float inv = L > 0.f ? 1.f / L : 0.f;
    float* o;
    if (ns == 1) {
      o = a.ctx + (std::size_t(t) * a.H + h) * R;
    } else {
      const std::size_t ps = (std::size_t(t) * a.H + h) * a.n_split + split;
      o = a.part_o + ps * R;
      if (quarter == 0 && lane % 4 == 0)
        a.part_lse[ps] = L > 0.f ? (sm[row] + log2f(L)) * 0.6931471805599453f : -INFINITY;
    }
#pragma unroll
    for (int p = 0; p < kMaxPairs; ++p) {
      if (p < npairs) {
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          const int d = d0 + 16 * p + 8 * n + 2 * (lane % 4);
          *reinterpret_cast<float2*>(o + d) =
              make_float2(acc[p][n][2 * half] * inv, acc[p][n][2 * half + 1] * inv);
        }
      }
    }
  }
}

// Merge of the slices (grid (T H, R / 64), N threads): thread (g, c) = (tid / 16, tid % 16) sums
// the slices g, g + N / 16, ... of dims 4 c .. 4 c + 3 of the block's 64 (16-byte loads, all
// slices' loads of a thread independent), the N / 16 groups are added through shared memory.
// The same weights as mla_merge_kernel (exp(lse_s - max) / sum), whose one thread per dim and ns
// dependent rounds of loads took ~4 us more per call at 128 heads and 66 slices (H100, 4K
// context: 24.8 against 28.6 us). Loading all of a thread's slices before the weights (16
// registers of float4) was no faster at 16 heads and 3 us slower at 128. N = 512 after the
// 16-head kernel with its producer warp (132 slices: <= 5 loads per thread, one round;
// mla_absorb_q + attention + mla_absorb_out at 32K 36.0 -> 33.8 us; 1024 threads 2 us slower),
// 256 after the others (512 was 2 us slower at 128 heads, 66 slices, 32K).
inline constexpr int kMlaTcMergeDims = 64;
template <int N>
__global__ void __launch_bounds__(N) mla_tc_merge_kernel(MlaTcArgs a) {
  constexpr int kGroups = N / (kMlaTcMergeDims / 4);
  static_assert(kMlaMaxSplit <= N, "mla_tc_merge_kernel: one lse per thread");
  pdl_trigger();
  pdl_wait();
  const int th = blockIdx.x, t = th / a.H, tid = threadIdx.x;
  const int ns = mla_slices(a.pos[t] + 1, a.n_split);
  if (ns == 1) return;  // the attention kernel wrote ctx
  __shared__ float w[kMlaMaxSplit];
  __shared__ float red[N / kWarpSize];
  __shared__ float4 acc[kGroups][kMlaTcMergeDims / 4];
  const float* lse = a.part_lse + std::size_t(th) * a.n_split;
  const float l = tid < ns ? lse[tid] : -INFINITY;  // ns <= kMlaMaxSplit = the block size
  float M = warp_max(l);
  if (tid % kWarpSize == 0) red[tid / kWarpSize] = M;
  __syncthreads();
  M = red[0];
#pragma unroll
  for (int i = 1; i < N / kWarpSize; ++i) M = fmaxf(M, red[i]);
  const float e = tid < ns ? expf(l - M) : 0.f;  // M finite: slice 0 has keys
  if (tid < ns) w[tid] = e;
  const float part = warp_sum(e);
  __syncthreads();  // red read above
  if (tid % kWarpSize == 0) red[tid / kWarpSize] = part;
  __syncthreads();  // red and w complete
  float W = 0.f;
#pragma unroll
  for (int i = 0; i < N / kWarpSize; ++i) W += red[i];
  const int g = tid / (kMlaTcMergeDims / 4), c = tid % (kMlaTcMergeDims / 4);
  const int d = blockIdx.y * kMlaTcMergeDims + 4 * c;
  const float4* po =
      reinterpret_cast<const float4*>(a.part_o + std::size_t(th) * a.n_split * a.R + d);
  const int R4 = a.R / 4;
  float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
  for (int s = g; s < ns; s += kGroups) {
    const float4 v = po[std::size_t(s) * R4];
    const float ws = w[s];
    o.x = fmaf(ws, v.x, o.x), o.y = fmaf(ws, v.y, o.y), o.z = fmaf(ws, v.z, o.z),
    o.w = fmaf(ws, v.w, o.w);
  }
  acc[g][c] = o;
  __syncthreads();
  if (tid < kMlaTcMergeDims) {
    const float* af = reinterpret_cast<const float*>(&acc[0][0]);
    float O = 0.f;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) O += af[i * kMlaTcMergeDims + tid];
    a.ctx[std::size_t(th) * a.R + blockIdx.y * kMlaTcMergeDims + tid] = O / W;
  }
}

// Head rows per block: 64 (four m16 tiles) when there are more than 32 heads, else 16.
inline int mla_tc_mtiles(int H) {
  return H > 32 ? 4 : 1;
}

inline cudaError_t launch_mla_attention_tc(MlaTcArgs a, int T, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  const int MT = mla_tc_mtiles(a.H), Q = mla_tc_groups(MT, a.R), K = a.R + a.Dr;
  const int S = MT == 1 && Q == 8 ? kMlaTcWsStages : 0;  // a producer warp and its ring
  const std::size_t smem = mla_tc_smem_bytes(MT, Q, K, S);
  auto kernel = MT == 4 ? mla_attention_tc_kernel<4, 4>
                : S > 0 ? mla_attention_tc_kernel<1, 8, kMlaTcWsStages>
                        : mla_attention_tc_kernel<1, 4>;
  cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  const dim3 grid((a.H + 16 * MT - 1) / (16 * MT), a.n_split, T);
  e = launch(kernel, grid, dim3(32 * MT * Q + (S > 0 ? 32 : 0)), smem, stream, a);
  if (e == cudaSuccess && a.n_split > 1) {  // R % 64 == 0 (checked by the caller)
    const dim3 mgrid(T * a.H, a.R / kMlaTcMergeDims);
    e = S > 0 ? launch(mla_tc_merge_kernel<512>, mgrid, dim3(512), 0, stream, a)
              : launch(mla_tc_merge_kernel<256>, mgrid, dim3(256), 0, stream, a);
  }
  return e;
}

}  // namespace tmoe::cuda
