// tmoe/backend/cuda/api.hpp: the host-visible face of tmoe's CUDA backend. Compiles with any C++20
// compiler and needs no CUDA header: streams are the opaque `cudaStream_t` handle, buffers are raw
// device pointers, and every function below is defined in tmoe/backend/cuda/api_impl.cuh, which
// exactly one nvcc-compiled translation unit of the program includes.
//
// Conventions (as FlashInfer's launchers): a launcher takes device pointers, sizes and a stream,
// enqueues its kernel and returns without synchronizing. Bad arguments and every failing CUDA call
// throw tmoe::Error, one line naming the op and the call ("[cuda::gemv] cudaLaunchKernel: ...").
// Layouts follow the CPU backend: row-major, weights (out, in) as PyTorch stores them (y = x W^T).
// Errors from kernels themselves show up at the next synchronizing call, named by that call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "tmoe/core/dtype.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/runtime/sampler.hpp"

struct CUstream_st;  // the CUDA runtime's `typedef struct CUstream_st* cudaStream_t`
struct CUevent_st;
struct CUgraphExec_st;  // cudaGraphExec_t

namespace tmoe::cuda {

using StreamHandle = ::CUstream_st*;  // nullptr is the legacy default stream
using EventHandle = ::CUevent_st*;
using GraphHandle = ::CUgraphExec_st*;

// ---- devices and raw memory -------------------------------------------------------------------
// Number of visible CUDA devices; 0 when there is no driver or no device (never throws).
int device_count() noexcept;
// Why device_count() is 0, as the runtime says it ("no CUDA-capable device is detected"); empty
// when a device exists.
const char* device_count_error() noexcept;
// Name, multiprocessor count and memory of device `device` (throws when it does not exist).
struct DeviceInfo {
  char name[256];
  int sm_count, major, minor;
  std::size_t global_mem, l2_bytes;
};
DeviceInfo device_info(int device = 0);
void set_device(int device);
void synchronize_device();

void* device_alloc(std::size_t bytes);  // cudaMalloc; bytes == 0 gives nullptr
void device_free(void* p) noexcept;     // cudaFree; reports (does not throw) failures
void* pinned_alloc(std::size_t bytes);  // cudaMallocHost (page-locked host memory)
void pinned_free(void* p) noexcept;     // cudaFreeHost
void copy_to_device(void* dst, const void* src, std::size_t bytes, StreamHandle s = nullptr);
void copy_to_host(void* dst, const void* src, std::size_t bytes, StreamHandle s = nullptr);
void copy_device(void* dst, const void* src, std::size_t bytes, StreamHandle s = nullptr);
void fill_bytes(void* dst, int byte, std::size_t bytes,
                StreamHandle s = nullptr);  // cudaMemsetAsync

StreamHandle stream_create();  // non-blocking stream
void stream_destroy(StreamHandle s) noexcept;
void stream_synchronize(StreamHandle s);
EventHandle event_create();
void event_destroy(EventHandle e) noexcept;
void event_record(EventHandle e, StreamHandle s);
float event_elapsed_ms(EventHandle start, EventHandle stop);  // synchronizes on stop

// ---- owners -----------------------------------------------------------------------------------
namespace detail {
// Move-only owner of n elements of T obtained from Alloc and returned with Free.
template <class T, void* (*Alloc)(std::size_t), void (*Free)(void*) noexcept>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t n) : p_(static_cast<T*>(Alloc(n * sizeof(T)))), n_(n) {}
  Buffer(Buffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      Free(p_);
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Free(p_); }

  T* data() const { return p_; }
  std::size_t size() const { return n_; }
  std::size_t bytes() const { return n_ * sizeof(T); }
  bool empty() const { return n_ == 0; }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};
}  // namespace detail

// Device memory (cudaMalloc). Element access only through copies or kernels.
template <class T>
class DeviceBuffer : public detail::Buffer<T, device_alloc, device_free> {
  using Base = detail::Buffer<T, device_alloc, device_free>;

 public:
  using Base::Base;
  // Copies n = size() elements from host memory `src` (pageable or pinned) on stream s.
  void upload(const T* src, StreamHandle s = nullptr) const {
    copy_to_device(this->data(), src, this->bytes(), s);
  }
  void download(T* dst, StreamHandle s = nullptr) const {
    copy_to_host(dst, this->data(), this->bytes(), s);
  }
};

// Page-locked host memory (cudaMallocHost): the staging area for asynchronous copies.
template <class T>
class PinnedBuffer : public detail::Buffer<T, pinned_alloc, pinned_free> {
  using Base = detail::Buffer<T, pinned_alloc, pinned_free>;

 public:
  using Base::Base;
  T& operator[](std::size_t i) const { return this->data()[i]; }
  T* begin() const { return this->data(); }
  T* end() const { return this->data() + this->size(); }
};

// An owned non-blocking stream.
class Stream {
 public:
  Stream() : s_(stream_create()) {}
  Stream(Stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept {
    if (this != &o) {
      stream_destroy(s_);
      s_ = std::exchange(o.s_, nullptr);
    }
    return *this;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() { stream_destroy(s_); }
  StreamHandle get() const { return s_; }
  operator StreamHandle() const { return s_; }
  void synchronize() const { stream_synchronize(s_); }

 private:
  StreamHandle s_;
};

// An owned event (timing enabled), for device-side timing.
class Event {
 public:
  Event() : e_(event_create()) {}
  Event(Event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  Event& operator=(Event&&) = delete;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() { event_destroy(e_); }
  void record(StreamHandle s) const { event_record(e_, s); }
  // Milliseconds from `start` to this event (waits for this event).
  float since(const Event& start) const { return event_elapsed_ms(start.e_, e_); }

 private:
  EventHandle e_;
};

// ---- CUDA graphs -------------------------------------------------------------------------------
// Everything enqueued on s between graph_capture_begin and graph_capture_end is recorded, not run
// (cudaStreamCaptureModeThreadLocal), and instantiated into an executable graph that
// graph_launch replays on any stream. Kernel arguments are frozen at capture: per-step values
// (token, position) must be read by the kernels from device memory.
void graph_capture_begin(StreamHandle s);
GraphHandle graph_capture_end(StreamHandle s);
void graph_launch(GraphHandle g, StreamHandle s);
void graph_destroy(GraphHandle g) noexcept;

// An owned executable graph.
class Graph {
 public:
  Graph() = default;
  explicit Graph(GraphHandle g) : g_(g) {}
  Graph(Graph&& o) noexcept : g_(std::exchange(o.g_, nullptr)) {}
  Graph& operator=(Graph&& o) noexcept {
    if (this != &o) {
      graph_destroy(g_);
      g_ = std::exchange(o.g_, nullptr);
    }
    return *this;
  }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  ~Graph() { graph_destroy(g_); }
  explicit operator bool() const { return g_ != nullptr; }
  void launch(StreamHandle s) const { graph_launch(g_, s); }

 private:
  GraphHandle g_ = nullptr;
};

// ---- decode GEMV: y[o] = sum_i W[o, i] * x[i] (one token) -------------------------------------
// W (out, in) row-major with leading dimension ldw >= in (elements); x (in); y (out) float.
// Fast path: 16-byte aligned W rows (ldw * sizeof(element) % 16 == 0, aligned base); any other
// shape takes a correct, slower element-wise path.
void gemv_bf16(const bf16* w, std::size_t ldw, const float* x, float* y, std::size_t out,
               std::size_t in, StreamHandle s = nullptr);
void gemv_bf16(const bf16* w, std::size_t ldw, const bf16* x, float* y, std::size_t out,
               std::size_t in, StreamHandle s = nullptr);

void gemv_f32(const float* w, std::size_t ldw, const float* x, float* y, std::size_t out,
              std::size_t in, StreamHandle s = nullptr);

// GEMV with the SwiGLU epilogue: W (2 * width, in) holds the gate and up rows of each unit
// interleaved (row 2i = gate_i, row 2i + 1 = up_i), and
//   y[i] = silu(gate_i . x) * (up_i . x),  i < width  (fp32, silu(g) = g / (1 + exp(-g))),
// so a decode step's gate/up projection and its SwiGLU are one kernel. Needs the 16-byte path:
// in % 8 == 0 (bf16) or % 4 == 0 (float), 16-byte aligned rows (ldw) and pointers.
void gemv_swiglu_bf16(const bf16* w, std::size_t ldw, const float* x, float* y, std::size_t width,
                      std::size_t in, StreamHandle s = nullptr);
void gemv_swiglu_f32(const float* w, std::size_t ldw, const float* x, float* y, std::size_t width,
                     std::size_t in, StreamHandle s = nullptr);

// A decode GEMV with the residual add + RMSNorm in front (one token, one kernel instead of
// add_rmsnorm + GEMV): every block computes
//   h = h_in + delta (delta == nullptr: h = h_in),  x = h * rsqrt(mean(h^2) + eps) * gamma
// in fp32 (add_rmsnorm's order) into shared memory and multiplies W by that x; the first block
// also stores h to h_out when delta is given (h_out must not alias h_in or delta: the other
// blocks are still reading them). All float, `in` elements, 16-byte aligned; in % 4 == 0,
// in <= 10240, and the weights' 16-byte path (in % 8 == 0 for bf16, 16 for fp8, 16-byte rows).
inline constexpr std::size_t kNormedGemvMaxIn = 10240;
struct NormedX {
  const float* h_in = nullptr;
  const float* delta = nullptr;
  float* h_out = nullptr;
  const float* gamma = nullptr;
  float eps = 1e-6f;
};
void gemv_bf16(const bf16* w, std::size_t ldw, const NormedX& x, float* y, std::size_t out,
               std::size_t in, StreamHandle s = nullptr);
void gemv_f32(const float* w, std::size_t ldw, const NormedX& x, float* y, std::size_t out,
              std::size_t in, StreamHandle s = nullptr);
void gemv_swiglu_bf16(const bf16* w, std::size_t ldw, const NormedX& x, float* y, std::size_t width,
                      std::size_t in, StreamHandle s = nullptr);
void gemv_swiglu_f32(const float* w, std::size_t ldw, const NormedX& x, float* y, std::size_t width,
                     std::size_t in, StreamHandle s = nullptr);
void gemv_fp8_block(const f8_e4m3* wq, std::size_t ldw, const float* scale_inv, const NormedX& x,
                    float* y, std::size_t out, std::size_t in, StreamHandle s = nullptr);

// The q/k/v projection of one token with its epilogue fused in (one kernel instead of the GEMV
// and gqa_qkv_store): W's rows are [q heads (H) | k heads (Hkv) | v heads (Hkv)] of D rows each,
// with the rows of every q and k head in rotation-pair order: rows 2i and 2i + 1 of a head are
// the pair that RoPE rotates together (for a half-split checkpoint, its rows i and i + D/2; the
// result is the interleaved layout, which attention does not mind as long as q and k agree).
// Each row pair's sums get + bias, are rotated by (*pos) * inv_freq[i] with cos and sin times
// attn_factor (exactly gqa_qkv_store's fp32 arithmetic, full-dim rotary) and stored: q rows to
// y (q's (H * D) floats at the front of y), k and v to the caches (Hkv, cap, D) at position *pos.
// nx != nullptr: x is normed inside (NormedX), the x argument unused. The 16-byte path's
// conditions as for gemv_bf16 / gemv_f32.
struct QkvRope {
  const float* bias = nullptr;  // ((H + 2 Hkv) * D), in W's row order, or nullptr
  float* k_cache = nullptr;     // (Hkv, cap, D)
  float* v_cache = nullptr;
  std::size_t cap = 0;
  const std::int32_t* pos = nullptr;  // one position (device)
  const float* inv_freq = nullptr;    // (D / 2)
  float attn_factor = 1.f;
  std::size_t H = 0, Hkv = 0, D = 0;
};
void gemv_qkv_rope_bf16(const bf16* w, std::size_t ldw, const float* x, const NormedX* nx,
                        const QkvRope& rope, float* y, std::size_t in, StreamHandle s = nullptr);
void gemv_qkv_rope_f32(const float* w, std::size_t ldw, const float* x, const NormedX* nx,
                       const QkvRope& rope, float* y, std::size_t in, StreamHandle s = nullptr);

// FP8 e4m3 weights with DeepSeek's 128x128 block scales:
//   W[o, i] = float(wq[o, i]) * scale_inv[(o / 128) * ceil(in / 128) + i / 128]
// scale_inv is float (ceil(out/128), ceil(in/128)) row-major; edge blocks may be partial.
void gemv_fp8_block(const f8_e4m3* wq, std::size_t ldw, const float* scale_inv, const float* x,
                    float* y, std::size_t out, std::size_t in, StreamHandle s = nullptr);
void gemv_fp8_block(const f8_e4m3* wq, std::size_t ldw, const float* scale_inv, const bf16* x,
                    float* y, std::size_t out, std::size_t in, StreamHandle s = nullptr);

// Gathered GEMVs in one launch, e.g. a token's routed experts: for b < batch, with e = idx[b]
// (device int32 array), W_e = w + e * w_stride and (fp8) its scales at scale_inv + e *
// scale_stride (elements; for contiguous experts out * ldw and ceil(out/128) * ceil(in/128)),
//   y[b * out + o] = sum_i W_e[o, i] * x[b * x_stride + i]     (x_stride 0: one x for all)
void gemv_bf16_gather(const bf16* w, std::size_t ldw, std::size_t w_stride, const std::int32_t* idx,
                      std::size_t batch, const bf16* x, std::size_t x_stride, float* y,
                      std::size_t out, std::size_t in, StreamHandle s = nullptr);
void gemv_fp8_block_gather(const f8_e4m3* wq, std::size_t ldw, std::size_t w_stride,
                           const float* scale_inv, std::size_t scale_stride,
                           const std::int32_t* idx, std::size_t batch, const bf16* x,
                           std::size_t x_stride, float* y, std::size_t out, std::size_t in,
                           StreamHandle s = nullptr);

// The same with float activations (the float32 checkpoints, and fp32 activations throughout).
void gemv_f32_gather(const float* w, std::size_t ldw, std::size_t w_stride, const std::int32_t* idx,
                     std::size_t batch, const float* x, std::size_t x_stride, float* y,
                     std::size_t out, std::size_t in, StreamHandle s = nullptr);
void gemv_bf16_gather(const bf16* w, std::size_t ldw, std::size_t w_stride, const std::int32_t* idx,
                      std::size_t batch, const float* x, std::size_t x_stride, float* y,
                      std::size_t out, std::size_t in, StreamHandle s = nullptr);
void gemv_fp8_block_gather(const f8_e4m3* wq, std::size_t ldw, std::size_t w_stride,
                           const float* scale_inv, std::size_t scale_stride,
                           const std::int32_t* idx, std::size_t batch, const float* x,
                           std::size_t x_stride, float* y, std::size_t out, std::size_t in,
                           StreamHandle s = nullptr);
// MoE combine: out[t, i] = sum_{b < k} weight[t, b] y[t, b, i] + shared[t, i] (shared may be
// nullptr); y (T, k, d), weight (T, k) (the router's), out (T, d), all float.
void moe_combine(const float* y, const float* weight, std::size_t k, const float* shared,
                 float* out, std::size_t d, std::size_t T, StreamHandle s = nullptr);

// x[i] = T(uniform in [lo, hi)) from a counter-based generator (random.cuh): benchmark weights.
void fill_uniform(float* x, std::size_t n, std::uint64_t seed, float lo, float hi,
                  StreamHandle s = nullptr);
void fill_uniform(bf16* x, std::size_t n, std::uint64_t seed, float lo, float hi,
                  StreamHandle s = nullptr);
void fill_uniform(f8_e4m3* x, std::size_t n, std::uint64_t seed, float lo, float hi,
                  StreamHandle s = nullptr);

// ---- fused elementwise and row ops ------------------------------------------------------------
// Residual add + RMSNorm over `rows` rows of width `dim` (HF order, pitfall 1 of r1-architecture):
//   h = residual + x (stored back into residual, rounded to T);
//   out = T( T(h * rsqrt(mean(h^2) + eps)) * weight )
// With T = float no rounding happens. x may be nullptr (plain RMSNorm of residual).
void add_rmsnorm(const float* x, float* residual, const float* weight, float* out, std::size_t rows,
                 std::size_t dim, float eps, StreamHandle s = nullptr);
void add_rmsnorm(const bf16* x, bf16* residual, const bf16* weight, bf16* out, std::size_t rows,
                 std::size_t dim, float eps, StreamHandle s = nullptr);

// Rotary embedding, in place, on dims [rope_begin, rope_begin + rope_dim) of every head:
//   x is (tokens, heads, ...) with token stride ld_token and head stride ld_head (elements);
//   angle_i = float(positions[t]) * inv_freq[i] (fp32), c = cos * attn_factor, s = sin *
//   attn_factor interleaved (GPT-J, DeepSeek checkpoints): pairs (2i, 2i+1); half-split (NeoX,
//   Qwen2/Llama HF):          pairs (i, i + rope_dim/2); (a, b) -> (a c - b s, a s + b c), computed
//   in fp32 and rounded to T once.
enum class RopeLayout : std::uint8_t { interleaved, half_split };
void rope(float* x, std::size_t tokens, std::size_t heads, std::size_t ld_token,
          std::size_t ld_head, std::size_t rope_begin, std::size_t rope_dim,
          const std::int32_t* positions, const float* inv_freq, float attn_factor,
          RopeLayout layout, StreamHandle s = nullptr);
void rope(bf16* x, std::size_t tokens, std::size_t heads, std::size_t ld_token, std::size_t ld_head,
          std::size_t rope_begin, std::size_t rope_dim, const std::int32_t* positions,
          const float* inv_freq, float attn_factor, RopeLayout layout, StreamHandle s = nullptr);

// SwiGLU gate: out[r, j] = T(T(silu(gate[r, j])) * up[r, j]) for r < rows, j < width (HF rounding:
// silu rounded to T, then the product; pitfall 18). Row strides ld_* in elements.
void swiglu(const float* gate, std::size_t ld_gate, const float* up, std::size_t ld_up, float* out,
            std::size_t ld_out, std::size_t rows, std::size_t width, StreamHandle s = nullptr);
void swiglu(const bf16* gate, std::size_t ld_gate, const bf16* up, std::size_t ld_up, bf16* out,
            std::size_t ld_out, std::size_t rows, std::size_t width, StreamHandle s = nullptr);

// ---- prefill GEMM (cuBLAS): y (T, out) = x (T, in) W^T, W (out, in) row-major -----------------
// Row strides ldw >= in, ldx >= in, ldy >= out (elements). fp32 accumulation. The float version
// is cublasSgemm in its default math mode (no TF32: full fp32 products); the bf16 version takes
// bf16 activations (see to_bf16) and writes float. One cuBLAS handle per thread, created on first
// use.
void gemm_f32(const float* w, std::size_t ldw, const float* x, std::size_t ldx, float* y,
              std::size_t ldy, std::size_t T, std::size_t out, std::size_t in,
              StreamHandle s = nullptr);
void gemm_bf16(const bf16* w, std::size_t ldw, const bf16* x, std::size_t ldx, float* y,
               std::size_t ldy, std::size_t T, std::size_t out, std::size_t in,
               StreamHandle s = nullptr);
// y[i] = bf16(x[i]) (round to nearest even), i < n.
void to_bf16(const float* x, bf16* y, std::size_t n, StreamHandle s = nullptr);
// Strided batched GEMM (cuBLAS; the per-head products of MLA's absorbed prefill): for b < batch,
//   y_b (T, out) = x_b (T, in) op(W_b),  W_b = w + b stride_w, x_b = x + b stride_x,
//   y_b = y + b stride_y (elements; row strides ldw, ldx, ldy),
// w_t false: W_b is (out, in) row-major (ldw >= in) and op(W) = W^T, as gemm_f32 / gemm_bf16;
// w_t true:  W_b is (in, out) row-major (ldw >= out) and op(W) = W.
// fp32 accumulation; the float version in full fp32 (no TF32), the bf16 one writes float.
void gemm_batched_f32(const float* w, std::size_t ldw, std::size_t stride_w, bool w_t,
                      const float* x, std::size_t ldx, std::size_t stride_x, float* y,
                      std::size_t ldy, std::size_t stride_y, std::size_t T, std::size_t out,
                      std::size_t in, std::size_t batch, StreamHandle s = nullptr);
void gemm_batched_bf16(const bf16* w, std::size_t ldw, std::size_t stride_w, bool w_t,
                       const bf16* x, std::size_t ldx, std::size_t stride_x, float* y,
                       std::size_t ldy, std::size_t stride_y, std::size_t T, std::size_t out,
                       std::size_t in, std::size_t batch, StreamHandle s = nullptr);
// w (rows, cols) = bf16(float(e4m3 wq[o, i]) * scale_inv[(o / 128) ceil(cols / 128) + i / 128]),
// rounded once: an FP8-block matrix (gemv_fp8_block's layout, row stride ldw) as the bf16
// operand of a prefill GEMM. w is dense (row stride cols).
void dequant_fp8_block(const f8_e4m3* wq, std::size_t ldw, const float* scale_inv, bf16* w,
                       std::size_t rows, std::size_t cols, StreamHandle s = nullptr);
// rows rows of `width` bytes from src (row pitch spitch bytes) to dst (pitch dpitch), on the
// device (cudaMemcpy2DAsync).
void copy_device_2d(void* dst, std::size_t dpitch, const void* src, std::size_t spitch,
                    std::size_t width, std::size_t rows, StreamHandle s = nullptr);

// ---- decoder plumbing ---------------------------------------------------------------------------
// out[t, :] = float(table[tokens[t], :]) for t < T; table (vocab, dim). Token ids are not checked
// on the device (the caller checks them against vocab on the host).
void embedding(const float* table, std::size_t dim, const std::int32_t* tokens, std::size_t T,
               float* out, StreamHandle s = nullptr);
void embedding(const bf16* table, std::size_t dim, const std::int32_t* tokens, std::size_t T,
               float* out, StreamHandle s = nullptr);

// The q/k/v epilogue of GQA attention for T tokens: qkv (T, ld) holds [q (H*D) | k (Hkv*D) |
// v (Hkv*D)] per token (one fused projection). Adds bias ((H + 2 Hkv) * D floats, or nullptr),
// applies RoPE (dims [0, rope_dim) of each q and k head; angle float(pos[t]) * inv_freq[i], cos
// and sin times attn_factor; layout as rope()) to q in place and to k, and stores k and v into the
// head-major caches (Hkv, cap, D) at position pos[t] (device int32, < cap: not checked on the
// device).
void gqa_qkv_store(float* qkv, std::size_t ld, const float* bias, float* k_cache, float* v_cache,
                   std::size_t cap, const std::int32_t* pos, std::size_t T, std::size_t H,
                   std::size_t Hkv, std::size_t D, std::size_t rope_dim, const float* inv_freq,
                   float attn_factor, RopeLayout layout, StreamHandle s = nullptr);

// Causal GQA attention over the caches for T query tokens (flash decoding):
//   out[t, h*D:(h+1)*D] = sum_{j <= pos[t]} softmax_j(scale * q[t, h] . K[g, j]) V[g, j],
//   g = h / (H / Hkv); q (T, ld_q), out (T, ld_out) float; caches (Hkv, cap, D) float.
// D in {64, 128, 256}. Each head's keys are cut into n_split slices (1..128) reduced in
// parallel and merged; n_split > 1 needs a workspace of gqa_attention_workspace(T, H, D,
// n_split) floats. pos is read on the device, so the call can be captured in a graph.
std::size_t gqa_attention_workspace(std::size_t T, std::size_t H, std::size_t D,
                                    std::size_t n_split);
void gqa_attention(const float* q, std::size_t ld_q, const float* k_cache, const float* v_cache,
                   std::size_t cap, const std::int32_t* pos, std::size_t T, std::size_t H,
                   std::size_t Hkv, std::size_t D, float scale, float* out, std::size_t ld_out,
                   std::size_t n_split, float* workspace, StreamHandle s = nullptr);

// One decode token, q/k/v epilogue and attention in one launch: qkv is the raw projection row
// [q (H*D) | k (Hkv*D) | v (Hkv*D)] of the token at position pos[0]; bias ((H + 2 Hkv) D or
// nullptr) is added, half-split RoPE over all D dims (inv_freq (D/2), cos/sin times
// attn_factor) is applied to q and k, k and v are stored into the caches at pos[0], and
// out (H*D) gets the attention of gqa_attention. Same result as gqa_qkv_store followed by
// gqa_attention with T = 1 (the new key is used from registers, not re-read).
void gqa_decode_attention(const float* qkv, const float* bias, float* k_cache, float* v_cache,
                          std::size_t cap, const std::int32_t* pos, std::size_t H, std::size_t Hkv,
                          std::size_t D, const float* inv_freq, float attn_factor, float scale,
                          float* out, std::size_t n_split, float* workspace,
                          StreamHandle s = nullptr);

// ---- DeepSeek MLA, absorbed decode over the latent cache (mla.cuh has the design) ------------
// H heads, Dn / Dr / Dv the nope / rope / value head dims, R = kv_lora_rank, K = R + Dr. The
// cache is float (cap, K): row p = [c_p (R) | k_pe_p (Dr)]. kv_b is kv_b_proj (H (Dn + Dv), R).
// Needs R % 4 == 0, Dr % 4 == 0, R <= 512, Dn + Dr <= 1024 and the attention's shared memory
// (about 4 (80 K + 4900) bytes) within the device's per-block limit (R1: K = 576, 204 KB).
// cache[pos[t]] = [RMSNorm(kv[t, 0:R]) * norm_weight | RoPE(kv[t, R:K]) at pos[t]]: kv (T, ld_kv)
// is kv_a_proj's output; RoPE as rope() (inv_freq (Dr / 2), cos / sin times attn_factor).
void mla_kv_store(const float* kv, std::size_t ld_kv, const float* norm_weight, float eps,
                  std::size_t T, std::size_t R, std::size_t Dr, const std::int32_t* pos,
                  const float* inv_freq, float attn_factor, RopeLayout layout, float* cache,
                  StreamHandle s = nullptr);
// The same into a bf16 cache (each value rounded to nearest even once): mla_attention's
// tensor-core path.
void mla_kv_store(const float* kv, std::size_t ld_kv, const float* norm_weight, float eps,
                  std::size_t T, std::size_t R, std::size_t Dr, const std::int32_t* pos,
                  const float* inv_freq, float attn_factor, RopeLayout layout, bf16* cache,
                  StreamHandle s = nullptr);
// qa (T, H, K): qa[t, h] = [W_UK[h]^T q[t, h, 0:Dn] | q[t, h, Dn:Dn+Dr]], q (T, ld_q) holding
// (H, Dn + Dr) per token (q_pe already roped).
void mla_absorb_q(const bf16* kv_b, const float* q, std::size_t ld_q, float* qa, std::size_t T,
                  std::size_t H, std::size_t Dn, std::size_t Dr, std::size_t Dv, std::size_t R,
                  StreamHandle s = nullptr);
void mla_absorb_q(const float* kv_b, const float* q, std::size_t ld_q, float* qa, std::size_t T,
                  std::size_t H, std::size_t Dn, std::size_t Dr, std::size_t Dv, std::size_t R,
                  StreamHandle s = nullptr);
// The same with qa in bf16 (each value rounded to nearest even once: the bf16-cache attention's
// input, which rounds a float qa the same way; half the bytes for its blocks to read).
void mla_absorb_q(const bf16* kv_b, const float* q, std::size_t ld_q, bf16* qa, std::size_t T,
                  std::size_t H, std::size_t Dn, std::size_t Dr, std::size_t Dv, std::size_t R,
                  StreamHandle s = nullptr);
void mla_absorb_q(const float* kv_b, const float* q, std::size_t ld_q, bf16* qa, std::size_t T,
                  std::size_t H, std::size_t Dn, std::size_t Dr, std::size_t Dv, std::size_t R,
                  StreamHandle s = nullptr);
// ctx (T, H, R): ctx[t, h] = sum_{j <= pos[t]} softmax_j(scale qa[t, h] . cache[j]) cache[j, 0:R].
// The keys of each token are cut into up to n_split (1..256) slices of >= 64 keys (chosen on the
// device from pos[t]) and merged; n_split > 1 needs mla_attention_workspace(T, H, R, n_split)
// floats of workspace.
std::size_t mla_attention_workspace(std::size_t T, std::size_t H, std::size_t R,
                                    std::size_t n_split);
void mla_attention(const float* qa, const float* cache, const std::int32_t* pos, std::size_t T,
                   std::size_t H, std::size_t R, std::size_t Dr, float scale, float* ctx,
                   std::size_t n_split, float* workspace, StreamHandle s = nullptr);
// The same over a bf16 cache, on the tensor cores (mla_tc.cuh: q and the softmax weights rounded
// to bf16, fp32 accumulation; same slices and workspace, the workspace 16-byte aligned). Needs
// R % 64 == 0, R <= 512, Dr % 16 == 0 and R + Dr <= 576 (R1: 512 + 64).
void mla_attention(const float* qa, const bf16* cache, const std::int32_t* pos, std::size_t T,
                   std::size_t H, std::size_t R, std::size_t Dr, float scale, float* ctx,
                   std::size_t n_split, float* workspace, StreamHandle s = nullptr);
// The same with qa already in bf16 (mla_absorb_q's bf16 output, 16-byte aligned): the same
// result bit for bit, without the kernel's rounding of q and with half of q's bytes.
void mla_attention(const bf16* qa, const bf16* cache, const std::int32_t* pos, std::size_t T,
                   std::size_t H, std::size_t R, std::size_t Dr, float scale, float* ctx,
                   std::size_t n_split, float* workspace, StreamHandle s = nullptr);
// o (T, ld_o): o[t, h Dv + i] = W_UV[h][i] . ctx[t, h].
void mla_absorb_out(const bf16* kv_b, const float* ctx, float* o, std::size_t ld_o, std::size_t T,
                    std::size_t H, std::size_t Dn, std::size_t Dv, std::size_t R,
                    StreamHandle s = nullptr);
void mla_absorb_out(const float* kv_b, const float* ctx, float* o, std::size_t ld_o, std::size_t T,
                    std::size_t H, std::size_t Dn, std::size_t Dv, std::size_t R,
                    StreamHandle s = nullptr);

// idx[r] = argmax of row r of logits (rows, V) (first index of the largest value; 0 if a row is
// all NaN). With advance != nullptr (rows == 1): p = *advance; *advance = p + 1; and, with
// history != nullptr, history[p + 1] = idx[0]: a greedy decode graph feeds itself its next token
// and position and records the token by position. With a workspace of argmax_workspace(rows)
// bytes, 128 blocks per row share the scan (a 151936-wide row: ~4 us instead of ~70 us).
std::size_t argmax_workspace(std::size_t rows);
void argmax(const float* logits, std::size_t rows, std::size_t V, std::int32_t* idx,
            std::int32_t* advance = nullptr, std::int32_t* history = nullptr,
            void* workspace = nullptr, StreamHandle s = nullptr);

// ---- sampling (runtime/sampler.hpp's rules on the device; sample.cuh) ------------------------
// tokens[r] = a draw from row r of logits (rows, V) (device floats, modified in place by the
// repetition penalty) under cfg: penalty over the last cfg.repetition_window of history
// (history_len tokens, device, may be null), temperature <= 0 or top_k == 1 greedy (argmax),
// else temperature, top-k, softmax, top-p, min-p and one draw with u[r] (device doubles in
// [0, 1); cfg.seed is not used: the caller draws u, e.g. with Sampler::uniform()). The kept set
// and its probabilities are Sampler::distribution()'s (fp32 exp, fp64 sums); the draw walks the
// kept tokens in a fixed device order, so a seed gives the CPU's distribution, not its tokens.
// A row with no drawable token (all NaN) gives 0. One 1024-thread block per row.
// With a workspace of sample_workspace() bytes (device) and rows == 1, the row is spread over
// the GPU's SMs (a cooperative launch, sample_grid_kernel; the workspace is zeroed first on the
// stream); otherwise one block per row.
std::size_t sample_workspace();
void sample(float* logits, std::size_t rows, std::size_t V, const SamplerConfig& cfg,
            const double* u, const std::int32_t* history, std::size_t history_len,
            std::int32_t* tokens, void* workspace = nullptr, StreamHandle s = nullptr);
// One row inside a captured decode step (like argmax with advance): p = *advance; the history is
// history[0 .. p], the draw uses u[p + 1]; then *advance = p + 1 and history[p + 1] = the token.
void sample_step(float* logits, std::size_t V, const SamplerConfig& cfg, const double* u,
                 std::int32_t* history, std::int32_t* advance, std::int32_t* token,
                 void* workspace = nullptr, StreamHandle s = nullptr);

// ---- routers (one token per row of float logits (tokens, experts)) ----------------------------
// DeepSeek-V3 "noaux_tc": s = sigmoid(logits); c = s + bias (selection only); group score = sum of
// the 2 largest c of each of n_group equal groups; keep the topk_group best groups (others
// excluded); pick the top_k largest c among the kept experts; w_k = s[idx_k], divided by
// (sum_k w_k + 1e-20) when normalize, times scale. Writes idx (tokens, top_k) int32 and
// weight (tokens, top_k) float, best first. experts <= 1024, n_group <= 32, top_k <= 32.
// Both routers: with `counts` (experts, device), counts[e] += the number of tokens routed to e
// (atomics: the expert load statistics, accumulated across calls until the caller zeroes them).
void router_sigmoid_grouped_topk(const float* logits, const float* bias, std::int32_t* idx,
                                 float* weight, std::size_t tokens, std::size_t experts,
                                 std::size_t n_group, std::size_t topk_group, std::size_t top_k,
                                 bool normalize, float scale, StreamHandle s = nullptr,
                                 std::uint32_t* counts = nullptr);
// Softmax top-k (Mixtral / DeepSeek-V2 "greedy"): p = softmax(logits) in fp32; pick the top_k
// largest p; w_k = p[idx_k], renormalized to sum 1 when normalize, times scale.
void router_softmax_topk(const float* logits, std::int32_t* idx, float* weight, std::size_t tokens,
                         std::size_t experts, std::size_t top_k, bool normalize, float scale,
                         StreamHandle s = nullptr, std::uint32_t* counts = nullptr);

}  // namespace tmoe::cuda
