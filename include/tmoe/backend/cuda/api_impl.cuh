// tmoe/backend/cuda/api_impl.cuh: the definitions of everything tmoe/backend/cuda/api.hpp
// declares. Include it in exactly ONE nvcc-compiled translation unit of a program (its functions
// are not inline); every other file, g++-compiled ones included, includes api.hpp alone.
//
// Each function checks its arguments (tmoe::check, "[cuda::<op>] ..."), enqueues through the
// kernel headers' launch_* templates and turns any CUDA error into tmoe::Error naming the call.
#pragma once
#if !defined(__CUDACC__)
#error \
    "tmoe/backend/cuda/api_impl.cuh is for nvcc only; include tmoe/backend/cuda/api.hpp elsewhere"
#endif

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <type_traits>

#include "tmoe/backend/cuda/api.hpp"
#include "tmoe/backend/cuda/attention.cuh"
#include "tmoe/backend/cuda/check.cuh"
#include "tmoe/backend/cuda/gemv.cuh"
#include "tmoe/backend/cuda/mla.cuh"
#include "tmoe/backend/cuda/mla_tc.cuh"
#include "tmoe/backend/cuda/model_ops.cuh"
#include "tmoe/backend/cuda/moe.cuh"
#include "tmoe/backend/cuda/norm.cuh"
#include "tmoe/backend/cuda/random.cuh"
#include "tmoe/backend/cuda/rope.cuh"
#include "tmoe/backend/cuda/router.cuh"
#include "tmoe/backend/cuda/sample.cuh"
#include "tmoe/backend/cuda/swiglu.cuh"

namespace tmoe::cuda {

// Helpers of this file (one translation unit: not inline).
namespace api_detail {
constexpr std::size_t kIntMax = std::size_t(std::numeric_limits<int>::max());
// Frees cannot throw (destructors call them): report and go on.
void report_free_error(const char* call, cudaError_t e) noexcept {
  std::fprintf(stderr, "tmoe: [cuda] %s: %s (%s)\n", call, cudaGetErrorString(e),
               cudaGetErrorName(e));
}
void check_size(std::string_view op, const char* what, std::size_t v) {
  check(v <= kIntMax, op, what, ": expected at most ", kIntMax, ", got ", v);
}
}  // namespace api_detail

// ---- devices and memory ---------------------------------------------------------------------
namespace api_detail {
cudaError_t g_device_count_error = cudaSuccess;  // why device_count() last gave 0
}  // namespace api_detail
int device_count() noexcept {
  int n = 0;
  api_detail::g_device_count_error = cudaGetDeviceCount(&n);
  if (api_detail::g_device_count_error != cudaSuccess) {
    cudaGetLastError();  // clear it: "no device" is an answer here, not a sticky failure
    return 0;
  }
  return n;
}
const char* device_count_error() noexcept {
  return api_detail::g_device_count_error == cudaSuccess
             ? ""
             : cudaGetErrorString(api_detail::g_device_count_error);
}
DeviceInfo device_info(int device) {
  cudaDeviceProp p;
  TMOE_CUDA_CHECK("cuda::device_info", cudaGetDeviceProperties(&p, device));
  DeviceInfo d{};
  std::snprintf(d.name, sizeof d.name, "%s", p.name);
  d.sm_count = p.multiProcessorCount;
  d.major = p.major;
  d.minor = p.minor;
  d.global_mem = p.totalGlobalMem;
  d.l2_bytes = std::size_t(p.l2CacheSize);
  return d;
}
void set_device(int device) {
  TMOE_CUDA_CHECK("cuda::set_device", cudaSetDevice(device));
}
void synchronize_device() {
  TMOE_CUDA_CHECK("cuda::synchronize_device", cudaDeviceSynchronize());
}

void* device_alloc(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail("cuda::device_alloc", "cudaMalloc(", bytes, " bytes): ", cudaGetErrorString(e), " (",
         cudaGetErrorName(e), ")");
  }
  return p;
}
void device_free(void* p) noexcept {
  if (!p) return;
  if (const cudaError_t e = cudaFree(p); e != cudaSuccess)
    api_detail::report_free_error("cudaFree", e);
}
void* pinned_alloc(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t e = cudaMallocHost(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail("cuda::pinned_alloc", "cudaMallocHost(", bytes, " bytes): ", cudaGetErrorString(e), " (",
         cudaGetErrorName(e), ")");
  }
  return p;
}
void pinned_free(void* p) noexcept {
  if (!p) return;
  if (const cudaError_t e = cudaFreeHost(p); e != cudaSuccess)
    api_detail::report_free_error("cudaFreeHost", e);
}
void copy_to_device(void* dst, const void* src, std::size_t bytes, StreamHandle s) {
  TMOE_CUDA_CHECK("cuda::copy_to_device",
                  cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
}
// Device-to-host copies synchronize the stream: the caller reads dst right after (pinned dst
// included, so the copy stays asynchronous with respect to other streams only).
void copy_to_host(void* dst, const void* src, std::size_t bytes, StreamHandle s) {
  TMOE_CUDA_CHECK("cuda::copy_to_host",
                  cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
  TMOE_CUDA_CHECK("cuda::copy_to_host", cudaStreamSynchronize(s));
}
void copy_device(void* dst, const void* src, std::size_t bytes, StreamHandle s) {
  TMOE_CUDA_CHECK("cuda::copy_device",
                  cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
}
void fill_bytes(void* dst, int byte, std::size_t bytes, StreamHandle s) {
  TMOE_CUDA_CHECK("cuda::fill_bytes", cudaMemsetAsync(dst, byte, bytes, s));
}

StreamHandle stream_create() {
  cudaStream_t s = nullptr;
  TMOE_CUDA_CHECK("cuda::Stream", cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}
void stream_destroy(StreamHandle s) noexcept {
  if (!s) return;
  if (const cudaError_t e = cudaStreamDestroy(s); e != cudaSuccess)
    api_detail::report_free_error("cudaStreamDestroy", e);
}
void stream_synchronize(StreamHandle s) {
  TMOE_CUDA_CHECK("cuda::Stream", cudaStreamSynchronize(s));
}
EventHandle event_create() {
  cudaEvent_t e = nullptr;
  TMOE_CUDA_CHECK("cuda::Event", cudaEventCreate(&e));
  return e;
}
void event_destroy(EventHandle e) noexcept {
  if (!e) return;
  if (const cudaError_t r = cudaEventDestroy(e); r != cudaSuccess)
    api_detail::report_free_error("cudaEventDestroy", r);
}
void event_record(EventHandle e, StreamHandle s) {
  TMOE_CUDA_CHECK("cuda::Event", cudaEventRecord(e, s));
}
float event_elapsed_ms(EventHandle start, EventHandle stop) {
  TMOE_CUDA_CHECK("cuda::Event", cudaEventSynchronize(stop));
  float ms = 0.f;
  TMOE_CUDA_CHECK("cuda::Event", cudaEventElapsedTime(&ms, start, stop));
  return ms;
}

// ---- graphs ---------------------------------------------------------------------------------
void graph_capture_begin(StreamHandle s) {
  TMOE_CUDA_CHECK("cuda::graph_capture_begin",
                  cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
}
GraphHandle graph_capture_end(StreamHandle s) {
  cudaGraph_t g = nullptr;
  TMOE_CUDA_CHECK("cuda::graph_capture_end", cudaStreamEndCapture(s, &g));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  if (e != cudaSuccess) fail_call("cuda::graph_capture_end", "cudaGraphInstantiate", e);
  return exec;
}
void graph_launch(GraphHandle g, StreamHandle s) {
  check(g != nullptr, "cuda::graph_launch", "empty graph");
  TMOE_CUDA_CHECK("cuda::graph_launch", cudaGraphLaunch(g, s));
}
void graph_destroy(GraphHandle g) noexcept {
  if (!g) return;
  if (const cudaError_t e = cudaGraphExecDestroy(g); e != cudaSuccess)
    api_detail::report_free_error("cudaGraphExecDestroy", e);
}

// ---- GEMV -----------------------------------------------------------------------------------
namespace api_detail {
template <class W, class X>
void gemv_impl(const char* op, const W* w, std::size_t ldw, const float* scale_inv, const X* x,
               float* y, std::size_t out, std::size_t in, StreamHandle s) {
  check(ldw >= in, op, "ldw: expected >= in = ", in, ", got ", ldw);
  check_size(op, "out", out);
  check_size(op, "in", in);
  if (out == 0) return;
  check(w && x && y, op, "null pointer: w, x and y must be device pointers");
  if constexpr (std::is_same_v<W, f8_e4m3>) check(scale_inv != nullptr, op, "scale_inv is null");
  const cudaError_t e = launch_gemv(w, ldw, scale_inv, x, y, int(out), int(in), s);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

template <class W, class X>
void gemv_gather_impl(const char* op, const W* w, std::size_t ldw, std::size_t w_stride,
                      const float* scale_inv, std::size_t scale_stride, const std::int32_t* idx,
                      std::size_t batch, const X* x, std::size_t x_stride, float* y,
                      std::size_t out, std::size_t in, StreamHandle s) {
  check(ldw >= in, op, "ldw: expected >= in = ", in, ", got ", ldw);
  check(w_stride >= out * ldw, op, "w_stride: expected >= out * ldw = ", out * ldw, ", got ",
        w_stride);
  check(x_stride == 0 || x_stride >= in, op, "x_stride: expected 0 or >= in = ", in, ", got ",
        x_stride);
  check(batch <= 65535, op, "batch: expected at most 65535, got ", batch);
  check_size(op, "out", out);
  check_size(op, "in", in);
  if (out == 0 || batch == 0) return;
  check(w && idx && x && y, op, "null pointer: w, idx, x and y must be device pointers");
  if constexpr (std::is_same_v<W, f8_e4m3>) {
    const std::size_t blocks =
        ((out + kFp8Block - 1) / kFp8Block) * ((in + kFp8Block - 1) / kFp8Block);
    check(scale_inv != nullptr, op, "scale_inv is null");
    check(scale_stride >= blocks, op, "scale_stride: expected >= ", blocks, ", got ", scale_stride);
  }
  const cudaError_t e = launch_gemv(w, ldw, scale_inv, x, y, int(out), int(in), s, int(batch),
                                    GemvBatch{idx, w_stride, scale_stride, x_stride});
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}
}  // namespace api_detail

void gemv_bf16(const bf16* w, std::size_t ldw, const float* x, float* y, std::size_t out,
               std::size_t in, StreamHandle s) {
  api_detail::gemv_impl("cuda::gemv_bf16", w, ldw, nullptr, x, y, out, in, s);
}
void gemv_bf16(const bf16* w, std::size_t ldw, const bf16* x, float* y, std::size_t out,
               std::size_t in, StreamHandle s) {
  api_detail::gemv_impl("cuda::gemv_bf16", w, ldw, nullptr, x, y, out, in, s);
}
void gemv_f32(const float* w, std::size_t ldw, const float* x, float* y, std::size_t out,
              std::size_t in, StreamHandle s) {
  api_detail::gemv_impl("cuda::gemv_f32", w, ldw, nullptr, x, y, out, in, s);
}

namespace api_detail {
template <class W>
void gemv_swiglu_impl(const char* op, const W* w, std::size_t ldw, const float* x, float* y,
                      std::size_t width, std::size_t in, StreamHandle s) {
  constexpr std::size_t kVec = 16 / sizeof(W);
  check(ldw >= in, op, "ldw: expected >= in = ", in, ", got ", ldw);
  check_size(op, "2 * width", 2 * width);
  check_size(op, "in", in);
  if (width == 0) return;
  check(w && x && y, op, "null pointer: w, x and y must be device pointers");
  check(in % kVec == 0 && (ldw * sizeof(W)) % 16 == 0 &&
            reinterpret_cast<std::uintptr_t>(w) % 16 == 0 &&
            reinterpret_cast<std::uintptr_t>(x) % 16 == 0,
        op, "needs 16-byte rows: in and ldw multiples of ", kVec,
        " and 16-byte aligned w and x, got in ", in, ", ldw ", ldw);
  GemvBatch gb;
  gb.swiglu = true;
  const cudaError_t e = launch_gemv(w, ldw, nullptr, x, y, int(2 * width), int(in), s, 1, gb);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}
}  // namespace api_detail
void gemv_swiglu_bf16(const bf16* w, std::size_t ldw, const float* x, float* y, std::size_t width,
                      std::size_t in, StreamHandle s) {
  api_detail::gemv_swiglu_impl("cuda::gemv_swiglu_bf16", w, ldw, x, y, width, in, s);
}
void gemv_swiglu_f32(const float* w, std::size_t ldw, const float* x, float* y, std::size_t width,
                     std::size_t in, StreamHandle s) {
  api_detail::gemv_swiglu_impl("cuda::gemv_swiglu_f32", w, ldw, x, y, width, in, s);
}
static_assert(kNormedGemvMaxIn == std::size_t(kGemvNormMaxIn), "api.hpp and gemv.cuh disagree");
namespace api_detail {
// The decode GEMVs with a prologue (nx: residual add + RMSNorm) and / or an epilogue (SwiGLU, or
// rope: the q/k/v store); x is used when nx is null.
template <class W>
void gemv_fused_impl(const char* op, const W* w, std::size_t ldw, const float* scale_inv,
                     const float* x, const NormedX* nx, float* y, std::size_t out, std::size_t in,
                     bool swiglu, const QkvRope* rope, StreamHandle s) {
  constexpr std::size_t kVec = 16 / sizeof(W);
  auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  check(ldw >= in, op, "ldw: expected >= in = ", in, ", got ", ldw);
  check_size(op, "out", out);
  check_size(op, "in", in);
  if (out == 0) return;
  check(w && y && (nx || x), op, "null pointer: w, x and y must be device pointers");
  check(in % kVec == 0 && (ldw * sizeof(W)) % 16 == 0 && aligned(w) && aligned(x), op,
        "needs 16-byte rows: in and ldw multiples of ", kVec,
        " and 16-byte aligned w and x, got in ", in, ", ldw ", ldw);
  if constexpr (std::is_same_v<W, f8_e4m3>) check(scale_inv != nullptr, op, "scale_inv is null");
  GemvBatch gb;
  gb.swiglu = swiglu;
  if (nx) {
    check(nx->h_in && nx->gamma, op, "null pointer: x.h_in and x.gamma must be device pointers");
    check(!nx->delta || nx->h_out, op,
          "x.h_out is null: the sum h_in + delta needs somewhere to go");
    check(!nx->h_out || (nx->h_out != nx->h_in && nx->h_out != nx->delta), op,
          "x.h_out aliases x.h_in or x.delta (the blocks still read them while h is stored)");
    check(in % 4 == 0 && in <= std::size_t(kGemvNormMaxIn), op, "in: expected a multiple of ",
          std::max<std::size_t>(4, kVec), " and at most ", kGemvNormMaxIn, ", got ", in);
    check(aligned(nx->h_in) && aligned(nx->delta) && aligned(nx->h_out) && aligned(nx->gamma), op,
          "x.h_in, x.delta, x.h_out and x.gamma must be 16-byte aligned");
    gb.norm_h = nx->h_in, gb.norm_delta = nx->delta, gb.norm_out = nx->h_out;
    gb.norm_gamma = nx->gamma, gb.norm_eps = nx->eps;
    x = nx->h_in;
  }
  if (rope) {
    const std::size_t heads = rope->H + 2 * rope->Hkv;
    check(rope->H > 0 && rope->Hkv > 0 && rope->D > 0 && rope->D % 2 == 0, op,
          "H, Hkv and an even D expected, got H ", rope->H, ", Hkv ", rope->Hkv, ", D ", rope->D);
    check(out == heads * rope->D, op, "out: expected (H + 2 Hkv) * D = ", heads * rope->D, ", got ",
          out);
    check(rope->k_cache && rope->v_cache && rope->pos && rope->inv_freq && rope->cap > 0, op,
          "null pointer or zero capacity: k_cache, v_cache, pos and inv_freq must be device "
          "pointers");
    gb.rope_pos = rope->pos, gb.rope_inv_freq = rope->inv_freq, gb.rope_bias = rope->bias;
    gb.k_cache = rope->k_cache, gb.v_cache = rope->v_cache, gb.cache_cap = rope->cap;
    gb.rope_factor = rope->attn_factor;
    gb.rope_H = int(rope->H), gb.rope_Hkv = int(rope->Hkv), gb.rope_D = int(rope->D);
  }
  const cudaError_t e =
      launch_gemv(w, ldw, scale_inv, x, y, int(swiglu ? 2 * out : out), int(in), s, 1, gb);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}
}  // namespace api_detail

void gemv_bf16(const bf16* w, std::size_t ldw, const NormedX& x, float* y, std::size_t out,
               std::size_t in, StreamHandle s) {
  api_detail::gemv_fused_impl("cuda::gemv_bf16", w, ldw, nullptr, nullptr, &x, y, out, in, false,
                              nullptr, s);
}
void gemv_f32(const float* w, std::size_t ldw, const NormedX& x, float* y, std::size_t out,
              std::size_t in, StreamHandle s) {
  api_detail::gemv_fused_impl("cuda::gemv_f32", w, ldw, nullptr, nullptr, &x, y, out, in, false,
                              nullptr, s);
}
void gemv_swiglu_bf16(const bf16* w, std::size_t ldw, const NormedX& x, float* y, std::size_t width,
                      std::size_t in, StreamHandle s) {
  api_detail::gemv_fused_impl("cuda::gemv_swiglu_bf16", w, ldw, nullptr, nullptr, &x, y, width, in,
                              true, nullptr, s);
}
void gemv_swiglu_f32(const float* w, std::size_t ldw, const NormedX& x, float* y, std::size_t width,
                     std::size_t in, StreamHandle s) {
  api_detail::gemv_fused_impl("cuda::gemv_swiglu_f32", w, ldw, nullptr, nullptr, &x, y, width, in,
                              true, nullptr, s);
}
void gemv_fp8_block(const f8_e4m3* wq, std::size_t ldw, const float* scale_inv, const NormedX& x,
                    float* y, std::size_t out, std::size_t in, StreamHandle s) {
  api_detail::gemv_fused_impl("cuda::gemv_fp8_block", wq, ldw, scale_inv, nullptr, &x, y, out, in,
                              false, nullptr, s);
}
void gemv_qkv_rope_bf16(const bf16* w, std::size_t ldw, const float* x, const NormedX* nx,
                        const QkvRope& rope, float* y, std::size_t in, StreamHandle s) {
  api_detail::gemv_fused_impl("cuda::gemv_qkv_rope_bf16", w, ldw, nullptr, x, nx, y,
                              (rope.H + 2 * rope.Hkv) * rope.D, in, false, &rope, s);
}
void gemv_qkv_rope_f32(const float* w, std::size_t ldw, const float* x, const NormedX* nx,
                       const QkvRope& rope, float* y, std::size_t in, StreamHandle s) {
  api_detail::gemv_fused_impl("cuda::gemv_qkv_rope_f32", w, ldw, nullptr, x, nx, y,
                              (rope.H + 2 * rope.Hkv) * rope.D, in, false, &rope, s);
}

void gemv_fp8_block(const f8_e4m3* wq, std::size_t ldw, const float* scale_inv, const float* x,
                    float* y, std::size_t out, std::size_t in, StreamHandle s) {
  api_detail::gemv_impl("cuda::gemv_fp8_block", wq, ldw, scale_inv, x, y, out, in, s);
}
void gemv_fp8_block(const f8_e4m3* wq, std::size_t ldw, const float* scale_inv, const bf16* x,
                    float* y, std::size_t out, std::size_t in, StreamHandle s) {
  api_detail::gemv_impl("cuda::gemv_fp8_block", wq, ldw, scale_inv, x, y, out, in, s);
}

void gemv_bf16_gather(const bf16* w, std::size_t ldw, std::size_t w_stride, const std::int32_t* idx,
                      std::size_t batch, const bf16* x, std::size_t x_stride, float* y,
                      std::size_t out, std::size_t in, StreamHandle s) {
  api_detail::gemv_gather_impl("cuda::gemv_bf16_gather", w, ldw, w_stride, nullptr, 0, idx, batch,
                               x, x_stride, y, out, in, s);
}
void gemv_fp8_block_gather(const f8_e4m3* wq, std::size_t ldw, std::size_t w_stride,
                           const float* scale_inv, std::size_t scale_stride,
                           const std::int32_t* idx, std::size_t batch, const bf16* x,
                           std::size_t x_stride, float* y, std::size_t out, std::size_t in,
                           StreamHandle s) {
  api_detail::gemv_gather_impl("cuda::gemv_fp8_block_gather", wq, ldw, w_stride, scale_inv,
                               scale_stride, idx, batch, x, x_stride, y, out, in, s);
}

void gemv_f32_gather(const float* w, std::size_t ldw, std::size_t w_stride, const std::int32_t* idx,
                     std::size_t batch, const float* x, std::size_t x_stride, float* y,
                     std::size_t out, std::size_t in, StreamHandle s) {
  api_detail::gemv_gather_impl("cuda::gemv_f32_gather", w, ldw, w_stride, nullptr, 0, idx, batch, x,
                               x_stride, y, out, in, s);
}
void gemv_bf16_gather(const bf16* w, std::size_t ldw, std::size_t w_stride, const std::int32_t* idx,
                      std::size_t batch, const float* x, std::size_t x_stride, float* y,
                      std::size_t out, std::size_t in, StreamHandle s) {
  api_detail::gemv_gather_impl("cuda::gemv_bf16_gather", w, ldw, w_stride, nullptr, 0, idx, batch,
                               x, x_stride, y, out, in, s);
}
void gemv_fp8_block_gather(const f8_e4m3* wq, std::size_t ldw, std::size_t w_stride,
                           const float* scale_inv, std::size_t scale_stride,
                           const std::int32_t* idx, std::size_t batch, const float* x,
                           std::size_t x_stride, float* y, std::size_t out, std::size_t in,
                           StreamHandle s) {
  api_detail::gemv_gather_impl("cuda::gemv_fp8_block_gather", wq, ldw, w_stride, scale_inv,
                               scale_stride, idx, batch, x, x_stride, y, out, in, s);
}
void moe_combine(const float* y, const float* weight, std::size_t k, const float* shared,
                 float* out, std::size_t d, std::size_t T, StreamHandle s) {
  constexpr const char* op = "cuda::moe_combine";
  api_detail::check_size(op, "k", k);
  api_detail::check_size(op, "d", d);
  check(T <= 65535, op, "T: at most 65535 tokens per call, got ", T);
  if (T == 0 || d == 0) return;
  check(y && weight && out, op, "null pointer: y, weight and out are required");
  const cudaError_t e = launch_moe_combine(y, weight, int(k), shared, out, int(d), int(T), s);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

void fill_uniform(float* x, std::size_t n, std::uint64_t seed, float lo, float hi, StreamHandle s) {
  check(x || n == 0, "cuda::fill_uniform", "null pointer");
  const cudaError_t e = launch_fill_uniform(x, n, seed, lo, hi, s);
  if (e != cudaSuccess) fail_call("cuda::fill_uniform", "kernel launch", e);
}
void fill_uniform(bf16* x, std::size_t n, std::uint64_t seed, float lo, float hi, StreamHandle s) {
  check(x || n == 0, "cuda::fill_uniform", "null pointer");
  const cudaError_t e = launch_fill_uniform(x, n, seed, lo, hi, s);
  if (e != cudaSuccess) fail_call("cuda::fill_uniform", "kernel launch", e);
}
void fill_uniform(f8_e4m3* x, std::size_t n, std::uint64_t seed, float lo, float hi,
                  StreamHandle s) {
  check(x || n == 0, "cuda::fill_uniform", "null pointer");
  const cudaError_t e = launch_fill_uniform(x, n, seed, lo, hi, s);
  if (e != cudaSuccess) fail_call("cuda::fill_uniform", "kernel launch", e);
}

// ---- norms, RoPE, SwiGLU --------------------------------------------------------------------
namespace api_detail {
template <class T>
void add_rmsnorm_impl(const T* x, T* residual, const T* weight, T* out, std::size_t rows,
                      std::size_t dim, float eps, StreamHandle s) {
  constexpr const char* op = "cuda::add_rmsnorm";
  check_size(op, "rows", rows);
  check_size(op, "dim", dim);
  check(eps >= 0.f, op, "eps: expected >= 0, got ", eps);
  if (rows == 0 || dim == 0) return;
  check(residual && weight && out, op, "null pointer: residual, weight and out are required");
  const cudaError_t e = launch_add_rmsnorm(x, residual, weight, out, int(rows), int(dim), eps, s);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

template <class T>
void rope_impl(T* x, std::size_t tokens, std::size_t heads, std::size_t ld_token,
               std::size_t ld_head, std::size_t rope_begin, std::size_t rope_dim,
               const std::int32_t* positions, const float* inv_freq, float attn_factor,
               RopeLayout layout, StreamHandle s) {
  constexpr const char* op = "cuda::rope";
  check(rope_dim % 2 == 0, op, "rope_dim: expected even, got ", rope_dim);
  check(rope_begin + rope_dim <= ld_head || heads == 1, op,
        "rope range: expected rope_begin + rope_dim <= ld_head = ", ld_head, ", got ",
        rope_begin + rope_dim);
  check_size(op, "tokens", tokens);
  check_size(op, "heads", heads);
  check_size(op, "rope_dim", rope_dim);
  if (tokens == 0 || heads == 0 || rope_dim == 0) return;
  check(x && positions && inv_freq, op, "null pointer: x, positions and inv_freq are required");
  const cudaError_t e =
      launch_rope(x, int(tokens), int(heads), ld_token, ld_head, int(rope_begin), int(rope_dim),
                  positions, inv_freq, attn_factor, layout == RopeLayout::interleaved, s);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

template <class T>
void swiglu_impl(const T* gate, std::size_t ld_gate, const T* up, std::size_t ld_up, T* out,
                 std::size_t ld_out, std::size_t rows, std::size_t width, StreamHandle s) {
  constexpr const char* op = "cuda::swiglu";
  check(ld_gate >= width && ld_up >= width && ld_out >= width, op,
        "row strides: expected >= width = ", width, ", got ", ld_gate, ", ", ld_up, ", ", ld_out);
  check_size(op, "rows", rows);
  check_size(op, "width", width);
  if (rows == 0 || width == 0) return;
  check(gate && up && out, op, "null pointer: gate, up and out are required");
  const cudaError_t e =
      launch_swiglu(gate, ld_gate, up, ld_up, out, ld_out, int(rows), int(width), s);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}
}  // namespace api_detail

void add_rmsnorm(const float* x, float* residual, const float* weight, float* out, std::size_t rows,
                 std::size_t dim, float eps, StreamHandle s) {
  api_detail::add_rmsnorm_impl(x, residual, weight, out, rows, dim, eps, s);
}
void add_rmsnorm(const bf16* x, bf16* residual, const bf16* weight, bf16* out, std::size_t rows,
                 std::size_t dim, float eps, StreamHandle s) {
  api_detail::add_rmsnorm_impl(x, residual, weight, out, rows, dim, eps, s);
}
void rope(float* x, std::size_t tokens, std::size_t heads, std::size_t ld_token,
          std::size_t ld_head, std::size_t rope_begin, std::size_t rope_dim,
          const std::int32_t* positions, const float* inv_freq, float attn_factor,
          RopeLayout layout, StreamHandle s) {
  api_detail::rope_impl(x, tokens, heads, ld_token, ld_head, rope_begin, rope_dim, positions,
                        inv_freq, attn_factor, layout, s);
}
void rope(bf16* x, std::size_t tokens, std::size_t heads, std::size_t ld_token, std::size_t ld_head,
          std::size_t rope_begin, std::size_t rope_dim, const std::int32_t* positions,
          const float* inv_freq, float attn_factor, RopeLayout layout, StreamHandle s) {
  api_detail::rope_impl(x, tokens, heads, ld_token, ld_head, rope_begin, rope_dim, positions,
                        inv_freq, attn_factor, layout, s);
}
void swiglu(const float* gate, std::size_t ld_gate, const float* up, std::size_t ld_up, float* out,
            std::size_t ld_out, std::size_t rows, std::size_t width, StreamHandle s) {
  api_detail::swiglu_impl(gate, ld_gate, up, ld_up, out, ld_out, rows, width, s);
}
void swiglu(const bf16* gate, std::size_t ld_gate, const bf16* up, std::size_t ld_up, bf16* out,
            std::size_t ld_out, std::size_t rows, std::size_t width, StreamHandle s) {
  api_detail::swiglu_impl(gate, ld_gate, up, ld_up, out, ld_out, rows, width, s);
}

// ---- prefill GEMM ---------------------------------------------------------------------------
namespace api_detail {
struct CublasHandle {
  cublasHandle_t h = nullptr;
  CublasHandle() {
    const cublasStatus_t st = cublasCreate(&h);
    if (st != CUBLAS_STATUS_SUCCESS)
      fail("cuda::gemm", "cublasCreate: ", cublasGetStatusString(st));
  }
  ~CublasHandle() {
    if (h) cublasDestroy(h);
  }
};
cublasHandle_t cublas(StreamHandle s) {
  thread_local CublasHandle handle;
  const cublasStatus_t st = cublasSetStream(handle.h, s);
  if (st != CUBLAS_STATUS_SUCCESS)
    fail("cuda::gemm", "cublasSetStream: ", cublasGetStatusString(st));
  return handle.h;
}
void check_gemm(const char* op, std::size_t ldw, std::size_t ldx, std::size_t ldy, std::size_t T,
                std::size_t out, std::size_t in) {
  check(ldw >= in && ldx >= in && ldy >= out, op, "strides: expected ldw, ldx >= in = ", in,
        " and ldy >= out = ", out, ", got ", ldw, ", ", ldx, ", ", ldy);
  check_size(op, "T", T);
  check_size(op, "out", out);
  check_size(op, "in", in);
  check_size(op, "ldw", ldw);
  check_size(op, "ldx", ldx);
  check_size(op, "ldy", ldy);
}
}  // namespace api_detail

// Row-major y (T, out) = x (T, in) W^T is column-major y^T (out, T) = W (as (in, out)^T) x^T.
void gemm_f32(const float* w, std::size_t ldw, const float* x, std::size_t ldx, float* y,
              std::size_t ldy, std::size_t T, std::size_t out, std::size_t in, StreamHandle s) {
  constexpr const char* op = "cuda::gemm_f32";
  api_detail::check_gemm(op, ldw, ldx, ldy, T, out, in);
  if (T == 0 || out == 0) return;
  check(w && x && y, op, "null pointer: w, x and y must be device pointers");
  const float one = 1.f, zero = 0.f;
  const cublasStatus_t st =
      cublasSgemm(api_detail::cublas(s), CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(T), int(in), &one,
                  w, int(ldw), x, int(ldx), &zero, y, int(ldy));
  if (st != CUBLAS_STATUS_SUCCESS) fail(op, "cublasSgemm: ", cublasGetStatusString(st));
}
void gemm_bf16(const bf16* w, std::size_t ldw, const bf16* x, std::size_t ldx, float* y,
               std::size_t ldy, std::size_t T, std::size_t out, std::size_t in, StreamHandle s) {
  constexpr const char* op = "cuda::gemm_bf16";
  api_detail::check_gemm(op, ldw, ldx, ldy, T, out, in);
  if (T == 0 || out == 0) return;
  check(w && x && y, op, "null pointer: w, x and y must be device pointers");
  const float one = 1.f, zero = 0.f;
  const cublasStatus_t st =
      cublasGemmEx(api_detail::cublas(s), CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(T), int(in), &one,
                   w, CUDA_R_16BF, int(ldw), x, CUDA_R_16BF, int(ldx), &zero, y, CUDA_R_32F,
                   int(ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS) fail(op, "cublasGemmEx: ", cublasGetStatusString(st));
}
void to_bf16(const float* x, bf16* y, std::size_t n, StreamHandle s) {
  if (n == 0) return;
  check(x && y, "cuda::to_bf16", "null pointer: x and y must be device pointers");
  const unsigned blocks = unsigned(std::min<std::size_t>((n + 255) / 256, 65535));
  const cudaError_t e = launch(to_bf16_kernel, dim3(blocks), dim3(256), 0, s, x, y, n);
  if (e != cudaSuccess) fail_call("cuda::to_bf16", "kernel launch", e);
}

namespace api_detail {
// Column-major view: y^T (out, T) = op(W) (out, in) x^T (in, T); op(W) = W as (in, out)^T when
// !w_t (lda ldw), W as (out, in) when w_t (its row-major (in, out) storage, lda ldw).
void check_gemm_batched(const char* op, std::size_t ldw, bool w_t, std::size_t ldx, std::size_t ldy,
                        std::size_t T, std::size_t out, std::size_t in, std::size_t batch,
                        std::size_t sw, std::size_t sx, std::size_t sy) {
  check(ldw >= (w_t ? out : in) && ldx >= in && ldy >= out, op,
        "strides: expected ldw >= ", w_t ? "out = " : "in = ", w_t ? out : in, ", ldx >= in = ", in,
        ", ldy >= out = ", out, ", got ", ldw, ", ", ldx, ", ", ldy);
  for (std::size_t v : {T, out, in, ldw, ldx, ldy, batch}) check_size(op, "a size", v);
  constexpr std::size_t big = std::size_t(1) << 62;
  check(sw < big && sx < big && sy < big, op, "batch strides too large");
}
}  // namespace api_detail
void gemm_batched_f32(const float* w, std::size_t ldw, std::size_t stride_w, bool w_t,
                      const float* x, std::size_t ldx, std::size_t stride_x, float* y,
                      std::size_t ldy, std::size_t stride_y, std::size_t T, std::size_t out,
                      std::size_t in, std::size_t batch, StreamHandle s) {
  constexpr const char* op = "cuda::gemm_batched_f32";
  api_detail::check_gemm_batched(op, ldw, w_t, ldx, ldy, T, out, in, batch, stride_w, stride_x,
                                 stride_y);
  if (T == 0 || out == 0 || batch == 0) return;
  check(w && x && y, op, "null pointer: w, x and y must be device pointers");
  const float one = 1.f, zero = 0.f;
  const cublasStatus_t st = cublasSgemmStridedBatched(
      api_detail::cublas(s), w_t ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(T),
      int(in), &one, w, int(ldw), static_cast<long long>(stride_w), x, int(ldx),
      static_cast<long long>(stride_x), &zero, y, int(ldy), static_cast<long long>(stride_y),
      int(batch));
  if (st != CUBLAS_STATUS_SUCCESS)
    fail(op, "cublasSgemmStridedBatched: ", cublasGetStatusString(st));
}
void gemm_batched_bf16(const bf16* w, std::size_t ldw, std::size_t stride_w, bool w_t,
                       const bf16* x, std::size_t ldx, std::size_t stride_x, float* y,
                       std::size_t ldy, std::size_t stride_y, std::size_t T, std::size_t out,
                       std::size_t in, std::size_t batch, StreamHandle s) {
  constexpr const char* op = "cuda::gemm_batched_bf16";
  api_detail::check_gemm_batched(op, ldw, w_t, ldx, ldy, T, out, in, batch, stride_w, stride_x,
                                 stride_y);
  if (T == 0 || out == 0 || batch == 0) return;
  check(w && x && y, op, "null pointer: w, x and y must be device pointers");
  const float one = 1.f, zero = 0.f;
  const cublasStatus_t st = cublasGemmStridedBatchedEx(
      api_detail::cublas(s), w_t ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(T),
      int(in), &one, w, CUDA_R_16BF, int(ldw), static_cast<long long>(stride_w), x, CUDA_R_16BF,
      int(ldx), static_cast<long long>(stride_x), &zero, y, CUDA_R_32F, int(ldy),
      static_cast<long long>(stride_y), int(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS)
    fail(op, "cublasGemmStridedBatchedEx: ", cublasGetStatusString(st));
}
void dequant_fp8_block(const f8_e4m3* wq, std::size_t ldw, const float* scale_inv, bf16* w,
                       std::size_t rows, std::size_t cols, StreamHandle s) {
  constexpr const char* op = "cuda::dequant_fp8_block";
  check(ldw >= cols, op, "ldw: expected >= cols = ", cols, ", got ", ldw);
  if (rows == 0 || cols == 0) return;
  check(wq && scale_inv && w, op, "null pointer: wq, scale_inv and w must be device pointers");
  const bool vec = cols % 16 == 0 && ldw % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(wq) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(w) % 16 == 0;
  const std::size_t n = rows * cols / (vec ? 16 : 1);
  const unsigned blocks = unsigned(std::min<std::size_t>((n + 255) / 256, 8 * 65535));
  const cudaError_t e = vec ? launch(dequant_fp8_block_vec_kernel, dim3(blocks), dim3(256), 0, s,
                                     reinterpret_cast<const uint4*>(wq), ldw / 16, scale_inv,
                                     reinterpret_cast<uint4*>(w), rows, cols / 16)
                            : launch(dequant_fp8_block_kernel, dim3(blocks), dim3(256), 0, s, wq,
                                     ldw, scale_inv, w, rows, cols);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}
void copy_device_2d(void* dst, std::size_t dpitch, const void* src, std::size_t spitch,
                    std::size_t width, std::size_t rows, StreamHandle s) {
  constexpr const char* op = "cuda::copy_device_2d";
  check(width <= dpitch && width <= spitch, op, "width ", width, " exceeds a pitch (", dpitch, ", ",
        spitch, ")");
  if (width == 0 || rows == 0) return;
  check(dst && src, op, "null pointer: dst and src must be device pointers");
  const cudaError_t e =
      cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice, s);
  if (e != cudaSuccess) fail_call(op, "cudaMemcpy2DAsync", e);
}

// ---- decoder plumbing -----------------------------------------------------------------------
namespace api_detail {
template <class T>
void embedding_impl(const T* table, std::size_t dim, const std::int32_t* tokens, std::size_t n,
                    float* out, StreamHandle s) {
  constexpr const char* op = "cuda::embedding";
  check(n <= 65535 * 32768ull, op, "T: too many tokens, got ", n);
  if (n == 0 || dim == 0) return;
  check(table && tokens && out, op, "null pointer: table, tokens and out are required");
  const cudaError_t e =
      launch(embedding_kernel<T>, dim3(unsigned(n)), dim3(256), 0, s, table, dim, tokens, out);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}
}  // namespace api_detail
void embedding(const float* table, std::size_t dim, const std::int32_t* tokens, std::size_t T,
               float* out, StreamHandle s) {
  api_detail::embedding_impl(table, dim, tokens, T, out, s);
}
void embedding(const bf16* table, std::size_t dim, const std::int32_t* tokens, std::size_t T,
               float* out, StreamHandle s) {
  api_detail::embedding_impl(table, dim, tokens, T, out, s);
}

void gqa_qkv_store(float* qkv, std::size_t ld, const float* bias, float* k_cache, float* v_cache,
                   std::size_t cap, const std::int32_t* pos, std::size_t T, std::size_t H,
                   std::size_t Hkv, std::size_t D, std::size_t rope_dim, const float* inv_freq,
                   float attn_factor, RopeLayout layout, StreamHandle s) {
  constexpr const char* op = "cuda::gqa_qkv_store";
  check(H >= 1 && Hkv >= 1 && H % Hkv == 0, op, "heads: expected H a multiple of Hkv >= 1, got H ",
        H, ", Hkv ", Hkv);
  check(D >= 2 && D <= 1024 && rope_dim % 2 == 0 && rope_dim <= D, op,
        "head_dim 2..1024 and an even rope_dim <= head_dim expected, got ", D, " and ", rope_dim);
  check(ld >= (H + 2 * Hkv) * D, op, "ld: expected >= (H + 2 Hkv) D = ", (H + 2 * Hkv) * D,
        ", got ", ld);
  check(T <= 65535 && H + 2 * Hkv <= 65535, op, "T and heads: at most 65535, got ", T, ", ",
        H + 2 * Hkv);
  if (T == 0) return;
  check(qkv && k_cache && v_cache && pos && (inv_freq || rope_dim == 0), op,
        "null pointer: qkv, caches, pos and inv_freq are required");
  QkvStoreArgs a{qkv,           ld,
                 bias,          k_cache,
                 v_cache,       cap,
                 pos,           inv_freq,
                 attn_factor,   int(H),
                 int(Hkv),      int(D),
                 int(rope_dim), layout == RopeLayout::interleaved};
  const int threads = int(std::min<std::size_t>(std::max<std::size_t>(rope_dim / 2, 32), 256));
  const cudaError_t e =
      launch(qkv_store_kernel, dim3(unsigned(H + 2 * Hkv), unsigned(T)), dim3(threads), 0, s, a);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

std::size_t gqa_attention_workspace(std::size_t T, std::size_t H, std::size_t D,
                                    std::size_t n_split) {
  return n_split <= 1 ? 0 : T * H * n_split * (D + 1);
}
void gqa_attention(const float* q, std::size_t ld_q, const float* k_cache, const float* v_cache,
                   std::size_t cap, const std::int32_t* pos, std::size_t T, std::size_t H,
                   std::size_t Hkv, std::size_t D, float scale, float* out, std::size_t ld_out,
                   std::size_t n_split, float* workspace, StreamHandle s) {
  constexpr const char* op = "cuda::gqa_attention";
  check(D == 64 || D == 128 || D == 256, op, "head_dim: expected 64, 128 or 256, got ", D);
  check(H >= 1 && Hkv >= 1 && H % Hkv == 0, op, "heads: expected H a multiple of Hkv >= 1, got H ",
        H, ", Hkv ", Hkv);
  check(n_split >= 1 && n_split <= std::size_t(kAttnMaxSplit), op, "n_split: expected 1..",
        kAttnMaxSplit, ", got ", n_split);
  check(ld_q >= H * D && ld_out >= H * D, op, "ld_q and ld_out: expected >= H D = ", H * D,
        ", got ", ld_q, ", ", ld_out);
  check(T <= 65535, op, "T: at most 65535 tokens per call, got ", T);
  if (T == 0) return;
  check(q && k_cache && v_cache && pos && out, op,
        "null pointer: q, caches, pos and out are required");
  check(n_split == 1 || workspace, op, "n_split > 1 needs a workspace");
  const std::size_t group = H / Hkv, head_blocks = (group + kAttnMaxG - 1) / kAttnMaxG;
  GqaAttnArgs a{q,
                ld_q,
                k_cache,
                v_cache,
                cap,
                pos,
                out,
                ld_out,
                workspace,
                workspace ? workspace + T * H * n_split * D : nullptr,
                int(H),
                int(Hkv),
                int(head_blocks),
                int(n_split),
                scale};
  const cudaError_t e = launch_gqa_attention(a, int(D), int(T), s);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

namespace api_detail {
void check_mla_dims(std::string_view op, std::size_t R, std::size_t Dr) {
  check(R >= 4 && R % 4 == 0 && R <= std::size_t(kMlaMaxR), op,
        "kv_lora_rank: expected a multiple of 4 in [4, ", kMlaMaxR, "], got ", R);
  check(Dr >= 4 && Dr % 4 == 0, op, "qk_rope_head_dim: expected a multiple of 4, got ", Dr);
}
template <class W, class O>
void mla_absorb_q_impl(const W* kv_b, const float* q, std::size_t ld_q, O* qa, std::size_t T,
                       std::size_t H, std::size_t Dn, std::size_t Dr, std::size_t Dv, std::size_t R,
                       StreamHandle s) {
  constexpr const char* op = "cuda::mla_absorb_q";
  check_mla_dims(op, R, Dr);
  check(Dn >= 1 && Dv >= 1 && Dn + Dr <= std::size_t(kMlaMaxK), op,
        "head dims: expected Dn, Dv >= 1 and Dn + Dr <= ", kMlaMaxK, ", got Dn ", Dn, ", Dr ", Dr);
  check(ld_q >= H * (Dn + Dr), op, "ld_q: expected >= H (Dn + Dr) = ", H * (Dn + Dr), ", got ",
        ld_q);
  check(H >= 1 && H <= 65535 && T <= 65535, op, "H in 1..65535 and T <= 65535, got H ", H, ", T ",
        T);
  if (T == 0) return;
  check(kv_b && q && qa, op, "null pointer: kv_b, q and qa are required");
  const cudaError_t e = launch(mla_absorb_q_kernel<W, O>, dim3(unsigned(H), unsigned(T)), dim3(256),
                               0, s, kv_b, q, ld_q, qa, int(Dn), int(Dr), int(Dv), int(R));
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}
template <class W>
void mla_absorb_out_impl(const W* kv_b, const float* ctx, float* o, std::size_t ld_o, std::size_t T,
                         std::size_t H, std::size_t Dn, std::size_t Dv, std::size_t R,
                         StreamHandle s) {
  constexpr const char* op = "cuda::mla_absorb_out";
  check(R >= 1 && Dn >= 1 && Dv >= 1 && H >= 1, op, "dims: expected H, Dn, Dv, R >= 1");
  check(ld_o >= H * Dv, op, "ld_o: expected >= H Dv = ", H * Dv, ", got ", ld_o);
  check(H * Dv <= kIntMax && T <= 65535, op, "H Dv and T too large: ", H * Dv, ", ", T);
  if (T == 0) return;
  check(kv_b && ctx && o, op, "null pointer: kv_b, ctx and o are required");
  const unsigned rows_per_block = 256 / kWarpSize;
  const dim3 grid(unsigned((H * Dv + rows_per_block - 1) / rows_per_block), unsigned(T));
  const cudaError_t e = launch(mla_absorb_out_kernel<W>, grid, dim3(256), 0, s, kv_b, ctx, o, ld_o,
                               int(H), int(Dn), int(Dv), int(R));
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}
}  // namespace api_detail

namespace api_detail {
template <class C>
void mla_kv_store_impl(const float* kv, std::size_t ld_kv, const float* norm_weight, float eps,
                       std::size_t T, std::size_t R, std::size_t Dr, const std::int32_t* pos,
                       const float* inv_freq, float attn_factor, RopeLayout layout, C* cache,
                       StreamHandle s) {
  constexpr const char* op = "cuda::mla_kv_store";
  api_detail::check_mla_dims(op, R, Dr);
  check(ld_kv >= R + Dr, op, "ld_kv: expected >= R + Dr = ", R + Dr, ", got ", ld_kv);
  check(T <= 65535, op, "T: at most 65535 tokens per call, got ", T);
  if (T == 0) return;
  check(kv && norm_weight && pos && inv_freq && cache, op,
        "null pointer: kv, norm_weight, pos, inv_freq and cache are required");
  const cudaError_t e = launch(mla_kv_store_kernel<C>, dim3(unsigned(T)), dim3(256), 0, s, kv,
                               ld_kv, norm_weight, eps, int(R), int(Dr), pos, inv_freq, attn_factor,
                               layout == RopeLayout::interleaved, cache);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}
}  // namespace api_detail
void mla_kv_store(const float* kv, std::size_t ld_kv, const float* norm_weight, float eps,
                  std::size_t T, std::size_t R, std::size_t Dr, const std::int32_t* pos,
                  const float* inv_freq, float attn_factor, RopeLayout layout, float* cache,
                  StreamHandle s) {
  api_detail::mla_kv_store_impl(kv, ld_kv, norm_weight, eps, T, R, Dr, pos, inv_freq, attn_factor,
                                layout, cache, s);
}
void mla_kv_store(const float* kv, std::size_t ld_kv, const float* norm_weight, float eps,
                  std::size_t T, std::size_t R, std::size_t Dr, const std::int32_t* pos,
                  const float* inv_freq, float attn_factor, RopeLayout layout, bf16* cache,
                  StreamHandle s) {
  api_detail::mla_kv_store_impl(kv, ld_kv, norm_weight, eps, T, R, Dr, pos, inv_freq, attn_factor,
                                layout, cache, s);
}
void mla_absorb_q(const bf16* kv_b, const float* q, std::size_t ld_q, float* qa, std::size_t T,
                  std::size_t H, std::size_t Dn, std::size_t Dr, std::size_t Dv, std::size_t R,
                  StreamHandle s) {
  api_detail::mla_absorb_q_impl(kv_b, q, ld_q, qa, T, H, Dn, Dr, Dv, R, s);
}
void mla_absorb_q(const float* kv_b, const float* q, std::size_t ld_q, float* qa, std::size_t T,
                  std::size_t H, std::size_t Dn, std::size_t Dr, std::size_t Dv, std::size_t R,
                  StreamHandle s) {
  api_detail::mla_absorb_q_impl(kv_b, q, ld_q, qa, T, H, Dn, Dr, Dv, R, s);
}
void mla_absorb_q(const bf16* kv_b, const float* q, std::size_t ld_q, bf16* qa, std::size_t T,
                  std::size_t H, std::size_t Dn, std::size_t Dr, std::size_t Dv, std::size_t R,
                  StreamHandle s) {
  api_detail::mla_absorb_q_impl(kv_b, q, ld_q, qa, T, H, Dn, Dr, Dv, R, s);
}
void mla_absorb_q(const float* kv_b, const float* q, std::size_t ld_q, bf16* qa, std::size_t T,
                  std::size_t H, std::size_t Dn, std::size_t Dr, std::size_t Dv, std::size_t R,
                  StreamHandle s) {
  api_detail::mla_absorb_q_impl(kv_b, q, ld_q, qa, T, H, Dn, Dr, Dv, R, s);
}
void mla_absorb_out(const bf16* kv_b, const float* ctx, float* o, std::size_t ld_o, std::size_t T,
                    std::size_t H, std::size_t Dn, std::size_t Dv, std::size_t R, StreamHandle s) {
  api_detail::mla_absorb_out_impl(kv_b, ctx, o, ld_o, T, H, Dn, Dv, R, s);
}
void mla_absorb_out(const float* kv_b, const float* ctx, float* o, std::size_t ld_o, std::size_t T,
                    std::size_t H, std::size_t Dn, std::size_t Dv, std::size_t R, StreamHandle s) {
  api_detail::mla_absorb_out_impl(kv_b, ctx, o, ld_o, T, H, Dn, Dv, R, s);
}
std::size_t mla_attention_workspace(std::size_t T, std::size_t H, std::size_t R,
                                    std::size_t n_split) {
  return n_split <= 1 ? 0 : T * H * n_split * (R + 1);
}
void mla_attention(const float* qa, const float* cache, const std::int32_t* pos, std::size_t T,
                   std::size_t H, std::size_t R, std::size_t Dr, float scale, float* ctx,
                   std::size_t n_split, float* workspace, StreamHandle s) {
  constexpr const char* op = "cuda::mla_attention";
  api_detail::check_mla_dims(op, R, Dr);
  check(n_split >= 1 && n_split <= std::size_t(kMlaMaxSplit), op, "n_split: expected 1..",
        kMlaMaxSplit, ", got ", n_split);
  check(H >= 1 && T <= 65535 && T * H <= api_detail::kIntMax, op,
        "H >= 1 and T <= 65535 expected, got H ", H, ", T ", T);
  const std::size_t smem = mla_smem_floats(int(R + Dr)) * sizeof(float);
  int dev = 0, limit = 0;
  TMOE_CUDA_CHECK(op, cudaGetDevice(&dev));
  TMOE_CUDA_CHECK(op, cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  check(smem <= std::size_t(limit), op, "R + Dr = ", R + Dr, " needs ", smem,
        " bytes of shared memory per block, the device allows ", limit);
  if (T == 0) return;
  check(qa && cache && pos && ctx, op, "null pointer: qa, cache, pos and ctx are required");
  check(n_split == 1 || workspace, op, "n_split > 1 needs a workspace");
  MlaAttnArgs a{qa,           cache,     pos,
                ctx,          workspace, workspace ? workspace + T * H * n_split * R : nullptr,
                int(H),       int(R),    int(Dr),
                int(n_split), scale};
  const cudaError_t e = launch_mla_attention(a, int(T), s);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

namespace api_detail {
template <class QT>
void mla_attention_tc_impl(const QT* qa, const bf16* cache, const std::int32_t* pos, std::size_t T,
                           std::size_t H, std::size_t R, std::size_t Dr, float scale, float* ctx,
                           std::size_t n_split, float* workspace, StreamHandle s) {
  constexpr const char* op = "cuda::mla_attention";
  check(R >= 64 && R % 64 == 0 && R <= std::size_t(kMlaTcMaxR), op,
        "kv_lora_rank: the bf16 cache needs a multiple of 64 in [64, ", kMlaTcMaxR, "], got ", R);
  check(Dr >= 16 && Dr % 16 == 0 && R + Dr <= std::size_t(kMlaTcMaxK), op,
        "qk_rope_head_dim: the bf16 cache needs a multiple of 16 with R + Dr <= ", kMlaTcMaxK,
        ", got ", Dr);
  check(n_split >= 1 && n_split <= std::size_t(kMlaMaxSplit), op, "n_split: expected 1..",
        kMlaMaxSplit, ", got ", n_split);
  check(H >= 1 && T <= 65535 && T * H <= api_detail::kIntMax, op,
        "H >= 1 and T <= 65535 expected, got H ", H, ", T ", T);
  if (T == 0) return;
  check(qa && cache && pos && ctx, op, "null pointer: qa, cache, pos and ctx are required");
  check(n_split == 1 || workspace, op, "n_split > 1 needs a workspace");
  check(n_split == 1 || reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0, op,
        "workspace: expected 16-byte alignment (the merge reads it in 16-byte loads)");
  check(reinterpret_cast<std::uintptr_t>(cache) % 16 == 0, op,
        "cache (bf16): expected 16-byte alignment (the kernel copies its rows in 16-byte units)");
  MlaTcArgs a{nullptr,      cache,     pos,
              ctx,          workspace, workspace ? workspace + T * H * n_split * R : nullptr,
              int(H),       int(R),    int(Dr),
              int(n_split), scale};
  if constexpr (std::is_same_v<QT, bf16>) {
    check(reinterpret_cast<std::uintptr_t>(qa) % 16 == 0, op,
          "qa (bf16): expected 16-byte alignment (the kernel reads it in 16-byte loads)");
    a.qa_b = qa;
  } else {
    a.qa = qa;
  }
  const cudaError_t e = launch_mla_attention_tc(a, int(T), s);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}
}  // namespace api_detail
void mla_attention(const float* qa, const bf16* cache, const std::int32_t* pos, std::size_t T,
                   std::size_t H, std::size_t R, std::size_t Dr, float scale, float* ctx,
                   std::size_t n_split, float* workspace, StreamHandle s) {
  api_detail::mla_attention_tc_impl(qa, cache, pos, T, H, R, Dr, scale, ctx, n_split, workspace, s);
}
void mla_attention(const bf16* qa, const bf16* cache, const std::int32_t* pos, std::size_t T,
                   std::size_t H, std::size_t R, std::size_t Dr, float scale, float* ctx,
                   std::size_t n_split, float* workspace, StreamHandle s) {
  api_detail::mla_attention_tc_impl(qa, cache, pos, T, H, R, Dr, scale, ctx, n_split, workspace, s);
}

std::size_t argmax_workspace(std::size_t rows) {
  return rows * kArgmaxBlocks * (sizeof(float) + sizeof(int));
}
void gqa_decode_attention(const float* qkv, const float* bias, float* k_cache, float* v_cache,
                          std::size_t cap, const std::int32_t* pos, std::size_t H, std::size_t Hkv,
                          std::size_t D, const float* inv_freq, float attn_factor, float scale,
                          float* out, std::size_t n_split, float* workspace, StreamHandle s) {
  constexpr const char* op = "cuda::gqa_decode_attention";
  check(D == 64 || D == 128 || D == 256, op, "head_dim: expected 64, 128 or 256, got ", D);
  check(H >= 1 && Hkv >= 1 && H % Hkv == 0, op, "heads: expected H a multiple of Hkv >= 1, got H ",
        H, ", Hkv ", Hkv);
  check(n_split >= 1 && n_split <= std::size_t(kAttnMaxSplit), op, "n_split: expected 1..",
        kAttnMaxSplit, ", got ", n_split);
  check(qkv && k_cache && v_cache && pos && inv_freq && out, op,
        "null pointer: qkv, caches, pos, inv_freq and out are required");
  check(n_split == 1 || workspace, op, "n_split > 1 needs a workspace");
  const std::size_t group = H / Hkv, head_blocks = (group + kAttnMaxG - 1) / kAttnMaxG;
  GqaAttnArgs a{qkv,
                (H + 2 * Hkv) * D,
                k_cache,
                v_cache,
                cap,
                pos,
                out,
                H * D,
                workspace,
                workspace ? workspace + H * n_split * D : nullptr,
                int(H),
                int(Hkv),
                int(head_blocks),
                int(n_split),
                scale};
  a.fused = true;
  a.bias = bias;
  a.inv_freq = inv_freq;
  a.attn_factor = attn_factor;
  const cudaError_t e = launch_gqa_attention(a, int(D), 1, s);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

void argmax(const float* logits, std::size_t rows, std::size_t V, std::int32_t* idx,
            std::int32_t* advance, std::int32_t* history, void* workspace, StreamHandle s) {
  constexpr const char* op = "cuda::argmax";
  check(V >= 1 && V <= api_detail::kIntMax, op, "V: expected 1..", api_detail::kIntMax, ", got ",
        V);
  check(rows <= 65535, op, "rows: at most 65535, got ", rows);
  check(!advance || rows == 1, op, "advance needs rows == 1, got ", rows);
  if (rows == 0) return;
  check(logits && idx, op, "null pointer: logits and idx are required");
  cudaError_t e;
  if (workspace) {
    float* pv = static_cast<float*>(workspace);
    int* pi = reinterpret_cast<int*>(pv + rows * kArgmaxBlocks);
    e = launch(argmax_partial_kernel, dim3(kArgmaxBlocks, unsigned(rows)), dim3(256), 0, s, logits,
               V, pv, pi);
    if (e == cudaSuccess)
      e = launch(argmax_final_kernel, dim3(unsigned(rows)), dim3(kArgmaxBlocks), 0, s, pv, pi, idx,
                 advance, history);
  } else {
    e = launch(argmax_kernel, dim3(unsigned(rows)), dim3(1024), 0, s, logits, V, idx, advance,
               history);
  }
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

// ---- sampling -------------------------------------------------------------------------------
namespace api_detail {
SampleArgs sample_args(const char* op, float* logits, std::size_t V, const SamplerConfig& cfg,
                       const double* u) {
  check(V >= 1 && V <= kIntMax, op, "V: expected 1..", kIntMax, ", got ", V);
  check(logits != nullptr, op, "null pointer: logits");
  check(std::isfinite(cfg.temperature), op, "temperature must be finite");
  check(cfg.top_p > 0.f && cfg.top_p <= 1.f, op, "top_p must be in (0, 1], got ", cfg.top_p);
  check(cfg.min_p >= 0.f && cfg.min_p < 1.f, op, "min_p must be in [0, 1), got ", cfg.min_p);
  check(cfg.repetition_penalty > 0.f && std::isfinite(cfg.repetition_penalty), op,
        "repetition_penalty must be finite and > 0, got ", cfg.repetition_penalty);
  SampleArgs a{};
  a.logits = logits;
  a.V = V;
  a.greedy = cfg.temperature <= 0.f || cfg.top_k == 1;
  check(a.greedy || u != nullptr, op, "null pointer: u (the uniforms of the draws)");
  a.inv_temp = a.greedy ? 1.f : 1.0f / cfg.temperature;  // the CPU Sampler's float
  a.top_k = cfg.top_k, a.top_p = cfg.top_p, a.min_p = cfg.min_p;
  a.penalty = cfg.repetition_penalty, a.window = cfg.repetition_window;
  a.u = u;
  static const cudaError_t attr = cudaFuncSetAttribute(
      sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSampleSmem));
  if (attr != cudaSuccess) fail_call(op, "cudaFuncSetAttribute", attr);
  return a;
}
}  // namespace api_detail

std::size_t sample_workspace() {
  return sizeof(SampleGridWork);
}

namespace api_detail {
// One row: over the SMs (cooperative) with a workspace, else one block.
void launch_sample_row(const char* op, const SampleArgs& a, void* workspace, StreamHandle s) {
  cudaError_t e;
  if (workspace) {
    check(reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0, op,
          "workspace must be 16-byte aligned");
    int dev = 0, sms = 0;
    TMOE_CUDA_CHECK(op, cudaGetDevice(&dev));
    TMOE_CUDA_CHECK(op, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    const std::size_t want = (a.V + 511) / 512;
    const unsigned G = unsigned(std::clamp<std::size_t>(
        want, 1, std::min<std::size_t>(std::size_t(sms), kSampleGridMaxBlocks)));
    e = cudaMemsetAsync(workspace, 0, sizeof(SampleGridWork), s);
    if (e == cudaSuccess) {
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(G);
      cfg.blockDim = dim3(kSampleGridThreads);
      cfg.stream = s;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeCooperative;
      attr[0].val.cooperative = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      e = cudaLaunchKernelEx(&cfg, sample_grid_kernel, a, static_cast<SampleGridWork*>(workspace));
    }
  } else {
    e = launch(sample_kernel, dim3(1), dim3(kSampleThreads), kSampleSmem, s, a);
  }
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}
}  // namespace api_detail

void sample(float* logits, std::size_t rows, std::size_t V, const SamplerConfig& cfg,
            const double* u, const std::int32_t* history, std::size_t history_len,
            std::int32_t* tokens, void* workspace, StreamHandle s) {
  constexpr const char* op = "cuda::sample";
  check(rows <= 65535, op, "rows: at most 65535, got ", rows);
  if (rows == 0) return;
  SampleArgs a = api_detail::sample_args(op, logits, V, cfg, u);
  check(tokens != nullptr, op, "null pointer: tokens");
  check(history_len == 0 || history != nullptr, op, "history is null but history_len is ",
        history_len);
  a.history = history, a.history_len = history_len, a.token = tokens;
  if (rows == 1) return api_detail::launch_sample_row(op, a, workspace, s);
  const cudaError_t e =
      launch(sample_kernel, dim3(unsigned(rows)), dim3(kSampleThreads), kSampleSmem, s, a);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

void sample_step(float* logits, std::size_t V, const SamplerConfig& cfg, const double* u,
                 std::int32_t* history, std::int32_t* advance, std::int32_t* token, void* workspace,
                 StreamHandle s) {
  constexpr const char* op = "cuda::sample_step";
  SampleArgs a = api_detail::sample_args(op, logits, V, cfg, u);
  check(token && advance, op, "null pointer: token and advance are required");
  a.history = history, a.history_out = history, a.advance = advance, a.token = token;
  api_detail::launch_sample_row(op, a, workspace, s);
}

// ---- routers --------------------------------------------------------------------------------
void router_sigmoid_grouped_topk(const float* logits, const float* bias, std::int32_t* idx,
                                 float* weight, std::size_t tokens, std::size_t experts,
                                 std::size_t n_group, std::size_t topk_group, std::size_t top_k,
                                 bool normalize, float scale, StreamHandle s,
                                 std::uint32_t* counts) {
  constexpr const char* op = "cuda::router_sigmoid_grouped_topk";
  check(experts >= 1 && experts <= std::size_t(kRouterMaxExperts), op, "experts: expected 1..",
        kRouterMaxExperts, ", got ", experts);
  check(n_group >= 1 && n_group <= std::size_t(kWarpSize) && experts % n_group == 0, op,
        "n_group: expected 1..32 dividing experts = ", experts, ", got ", n_group);
  check(experts / n_group >= 2, op, "group size: expected >= 2 (score = top-2 sum), got ",
        experts / n_group);
  check(topk_group >= 1 && topk_group <= n_group, op, "topk_group: expected 1..", n_group, ", got ",
        topk_group);
  check(top_k >= 1 && top_k <= std::size_t(kRouterMaxTopK) &&
            top_k <= topk_group * (experts / n_group),
        op, "top_k: expected 1..min(32, experts in the kept groups = ",
        topk_group * (experts / n_group), "), got ", top_k);
  api_detail::check_size(op, "tokens", tokens);
  if (tokens == 0) return;
  check(logits && idx && weight, op, "null pointer: logits, idx and weight are required");
  const cudaError_t e = launch_router_sigmoid_grouped(
      logits, bias, idx, weight, int(tokens), int(experts), int(n_group), int(topk_group),
      int(top_k), normalize, scale, reinterpret_cast<unsigned*>(counts), s);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

void router_softmax_topk(const float* logits, std::int32_t* idx, float* weight, std::size_t tokens,
                         std::size_t experts, std::size_t top_k, bool normalize, float scale,
                         StreamHandle s, std::uint32_t* counts) {
  constexpr const char* op = "cuda::router_softmax_topk";
  check(experts >= 1 && experts <= std::size_t(kRouterMaxExperts), op, "experts: expected 1..",
        kRouterMaxExperts, ", got ", experts);
  check(top_k >= 1 && top_k <= std::size_t(kRouterMaxTopK) && top_k <= experts, op,
        "top_k: expected 1..min(32, experts), got ", top_k);
  api_detail::check_size(op, "tokens", tokens);
  if (tokens == 0) return;
  check(logits && idx && weight, op, "null pointer: logits, idx and weight are required");
  const cudaError_t e =
      launch_router_softmax(logits, idx, weight, int(tokens), int(experts), int(top_k), normalize,
                            scale, reinterpret_cast<unsigned*>(counts), s);
  if (e != cudaSuccess) fail_call(op, "kernel launch", e);
}

}  // namespace tmoe::cuda
