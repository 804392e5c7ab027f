// tmoe/models/weights.hpp: where a model's weights come from, and how they reach the layers.
//
// WeightSource is a name -> raw tensor map (dtype, shape, bytes): a memory-mapped safetensors
// checkpoint (SafetensorsSource) or tensors held in memory (MemoryWeights, used by the built-in
// default model and `tmoe init`). WeightLoader turns raw tensors into the typed views the layers
// take: zero-copy when the stored dtype is the one asked for, otherwise converted once into a
// buffer the loader owns (e.g. F8_E4M3 + weight_scale_inv blocks -> float, or bf16 norm weights
// -> float). Every lookup checks the name and the shape and names both in its error.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tmoe/core/dtype.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/huge_arena.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/io/safetensors.hpp"
#include "tmoe/layers/linear_any.hpp"
#include "tmoe/quant/formats.hpp"

namespace tmoe::models {

// A stored tensor: dtype + shape (PyTorch order) + bytes. Quantized block data (GGUF Q8_0, Q4_0,
// Q4_K, Q6_K) sets `quant` (dtype is then u8): rows of shape.back() values packed in blocks along
// the row, exactly as quant/formats.hpp lays them out.
struct RawTensor {
  DType dtype = DType::f32;
  std::vector<std::size_t> shape;
  const std::byte* data = nullptr;
  std::size_t nbytes = 0;
  std::optional<quant::QuantType> quant;
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // nullptr when absent.
  virtual const RawTensor* find(std::string_view name) const = 0;
  // Where the weights come from, for error messages ("model folder /x", "built-in model").
  virtual std::string where() const = 0;
};

// A safetensors checkpoint (file, sharded folder or index), memory-mapped.
class SafetensorsSource final : public WeightSource {
 public:
  explicit SafetensorsSource(const std::string& path) : path_(path), st_(path) {
    for (const auto& name : st_.names()) {
      const io::TensorInfo& t = st_.info(name);
      raw_.emplace(name, RawTensor{t.dtype, t.shape, t.data, t.nbytes(), std::nullopt});
    }
  }
  const RawTensor* find(std::string_view name) const override {
    auto it = raw_.find(name);
    return it == raw_.end() ? nullptr : &it->second;
  }
  std::string where() const override { return path_; }
  const io::SafetensorsModel& checkpoint() const { return st_; }

 private:
  std::string path_;
  io::SafetensorsModel st_;
  std::map<std::string, RawTensor, std::less<>> raw_;
};

// Tensors owned in memory.
class MemoryWeights final : public WeightSource {
 public:
  explicit MemoryWeights(std::string where = "in-memory weights") : where_(std::move(where)) {}
  template <class T>
  void add(std::string name, std::vector<std::size_t> shape, std::vector<T> values) {
    auto buf = std::make_unique<std::vector<std::byte>>(values.size() * sizeof(T));
    std::memcpy(buf->data(), values.data(), buf->size());
    raw_[name] = RawTensor{dtype_of_v<T>, std::move(shape), buf->data(), buf->size(), std::nullopt};
    bufs_.push_back(std::move(buf));
  }
  const RawTensor* find(std::string_view name) const override {
    auto it = raw_.find(name);
    return it == raw_.end() ? nullptr : &it->second;
  }
  std::string where() const override { return where_; }
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& [k, v] : raw_) n.push_back(k);
    return n;
  }

 private:
  std::string where_;
  std::map<std::string, RawTensor, std::less<>> raw_;
  std::vector<std::unique_ptr<std::vector<std::byte>>> bufs_;
};

// Typed access to a WeightSource for the layers (see the file comment).
class WeightLoader {
 public:
  explicit WeightLoader(std::shared_ptr<const WeightSource> src) : src_(std::move(src)) {}

  const WeightSource& source() const { return *src_; }
  bool has(std::string_view name) const { return src_->find(name) != nullptr; }

  const RawTensor& raw(std::string_view name) const {
    const RawTensor* t = src_->find(name);
    if (!t) fail("weights", src_->where(), ": tensor '", name, "' is missing");
    return *t;
  }

  // (rows, cols) as T; converts when the stored dtype differs (FP8 uses <name>_scale_inv).
  template <class T>
  MatrixView<const T> matrix(const std::string& name, std::size_t rows, std::size_t cols) {
    const RawTensor& t = raw(name);
    check_shape(name, t, {rows, cols});
    if (t.dtype == dtype_of_v<T>)
      return MatrixView<const T>(reinterpret_cast<const T*>(t.data), rows, cols);
    auto& buf = convert<T>(name, t);
    return MatrixView<const T>(buf.data(), rows, cols);
  }
  // (n) as T.
  template <class T>
  VectorView<const T> vector(const std::string& name, std::size_t n) {
    const RawTensor& t = raw(name);
    check_shape(name, t, {n});
    if (t.dtype == dtype_of_v<T>) return VectorView<const T>(reinterpret_cast<const T*>(t.data), n);
    auto& buf = convert<T>(name, t);
    return VectorView<const T>(buf.data(), n);
  }
  // (rows, cols) in the stored format, zero-copy (AnyFormat): F32 / BF16 / F16 and the GGUF block
  // formats as they are; F8_E4M3 (+ scale_inv) and other dtypes converted once to float. `dense`
  // asks for F32 / BF16 / F16 rows (MLA's absorbed kv_b): block formats are then dequantized to a
  // float copy the loader owns (counted in converted_bytes).
  // `repack` (matrices multiplied by Linear, not embedding tables): Q4_0, Q8_0, Q4_K, Q6_K get an
  // 8-row interleaved copy for the decode GEMV (quant/formats.hpp, repack_x8), made once per
  // tensor, owned by the loader and counted in repacked_bytes; `data` stays the stored bytes.
  // TMOE_REPACK=0 in the environment turns it off (A/B measurements). The copies live in a
  // HugeArena (2 MiB pages where THP allows; TMOE_HUGEPAGES=0 keeps 4 KiB pages).
  AnyMatrixView any_matrix(const std::string& name, std::size_t rows, std::size_t cols,
                           bool dense = false, bool repack = true) {
    const RawTensor& t = raw(name);
    check_shape(name, t, {rows, cols});
    auto note = [&](AnyMatrixView v) {
      kinds_[std::string(any_kind_name(v.kind))]++;
      return v;
    };
    if (t.quant && !dense) {
      switch (*t.quant) {
        case quant::QuantType::q8_0:
          return note(packed<quant::Q8_0>(
              name, AnyMatrixView::of(AnyKind::q8_0, t.data, rows, cols), repack));
        case quant::QuantType::q4_0:
          return note(packed<quant::Q4_0>(
              name, AnyMatrixView::of(AnyKind::q4_0, t.data, rows, cols), repack));
        case quant::QuantType::q4_k:
          return note(packed<quant::Q4_K>(
              name, AnyMatrixView::of(AnyKind::q4_k, t.data, rows, cols), repack));
        case quant::QuantType::q6_k:
          return note(packed<quant::Q6_K>(
              name, AnyMatrixView::of(AnyKind::q6_k, t.data, rows, cols), repack));
        default:
          break;
      }
    }
    if (!t.quant) {
      if (t.dtype == DType::f32) return note(AnyMatrixView::of(AnyKind::f32, t.data, rows, cols));
      if (t.dtype == DType::bf16) return note(AnyMatrixView::of(AnyKind::bf16, t.data, rows, cols));
      if (t.dtype == DType::f16) return note(AnyMatrixView::of(AnyKind::f16, t.data, rows, cols));
    }
    return note(AnyMatrixView::of(AnyKind::f32, convert<float>(name, t).data(), rows, cols));
  }
  // How many matrices any_matrix handed out per kind ("Q4_K" -> 120).
  const std::map<std::string, std::size_t>& kinds() const { return kinds_; }

  // (n) floats, or nullptr when the tensor is absent and optional.
  const float* floats(const std::string& name, std::size_t n, bool optional = false) {
    if (optional && !has(name)) return nullptr;
    return vector<float>(name, n).data();
  }

  // Bytes the loader holds in converted copies (0 when every weight is used in place).
  std::size_t converted_bytes() const { return converted_bytes_; }
  // Bytes the loader holds in 8-row interleaved copies (any_matrix's `repack`).
  std::size_t repacked_bytes() const { return repacked_bytes_; }

  // Whether any_matrix makes interleaved copies: TMOE_REPACK unset or not "0".
  static bool repack_enabled() {
    static const bool on = [] {
      const char* e = std::getenv("TMOE_REPACK");
      return !(e && std::string_view(e) == "0");
    }();
    return on;
  }

  // The values of tensor `name` widened to float32 (FP8 blocks scaled by <name>_scale_inv), in a
  // fresh vector the loader does not keep (export, re-quantization).
  std::vector<float> read_floats(const std::string& name) const {
    const RawTensor& t = raw(name);
    std::vector<float> out;
    to_floats(name, t, out);
    return out;
  }

 private:
  void check_shape(const std::string& name, const RawTensor& t,
                   std::vector<std::size_t> want) const {
    if (t.shape != want)
      fail("weights", src_->where(), ": tensor '", name, "': expected shape ",
           io::shape_string(want), ", got ", io::shape_string(t.shape));
  }

  static float element(const RawTensor& t, std::size_t i) {
    switch (t.dtype) {
      case DType::f32: {
        float v;
        std::memcpy(&v, t.data + 4 * i, 4);
        return v;
      }
      case DType::bf16: {
        std::uint16_t b;
        std::memcpy(&b, t.data + 2 * i, 2);
        return bf16::from_bits(b).to_float();
      }
      case DType::f16: {
        std::uint16_t b;
        std::memcpy(&b, t.data + 2 * i, 2);
        return f16::from_bits(b).to_float();
      }
      case DType::f8_e4m3:
        return f8_e4m3::from_bits(static_cast<std::uint8_t>(t.data[i])).to_float();
      case DType::f8_e5m2:
        return f8_e5m2::from_bits(static_cast<std::uint8_t>(t.data[i])).to_float();
      case DType::f64: {
        double v;
        std::memcpy(&v, t.data + 8 * i, 8);
        return static_cast<float>(v);
      }
      default:
        return 0.f;
    }
  }

  // Widens t to float32 into out (see read_floats).
  template <class Q>
  static void dequantize_into(const RawTensor& t, std::vector<float>& out) {
    const std::size_t cols = t.shape.back(), rows = out.size() / cols;
    const quant::QuantMatrixView<Q> v{reinterpret_cast<const typename Q::Block*>(t.data),
                                      rows,
                                      cols,
                                      cols / Q::kBlockSize,
                                      nullptr,
                                      0};
    for (std::size_t r = 0; r < rows; ++r) quant::dequantize_row(v, r, out.data() + r * cols);
  }

  void to_floats(const std::string& name, const RawTensor& t, std::vector<float>& out) const {
    if (t.quant) {
      std::size_t n = 1;
      for (auto d : t.shape) n *= d;
      out.resize(n);
      switch (*t.quant) {
        case quant::QuantType::q8_0:
          return dequantize_into<quant::Q8_0>(t, out);
        case quant::QuantType::q4_0:
          return dequantize_into<quant::Q4_0>(t, out);
        case quant::QuantType::q4_k:
          return dequantize_into<quant::Q4_K>(t, out);
        case quant::QuantType::q6_k:
          return dequantize_into<quant::Q6_K>(t, out);
        default:
          fail("weights", src_->where(), ": tensor '", name,
               "': quantized type not readable here (Q8_0, Q4_0, Q4_K, Q6_K)");
      }
    }
    const bool fp = t.dtype == DType::f32 || t.dtype == DType::bf16 || t.dtype == DType::f16 ||
                    t.dtype == DType::f8_e4m3 || t.dtype == DType::f8_e5m2 || t.dtype == DType::f64;
    if (!fp)
      fail("weights", src_->where(), ": tensor '", name, "' has dtype ", dtype_name(t.dtype),
           ", expected a floating-point type");
    std::size_t n = 1;
    for (auto d : t.shape) n *= d;
    out.resize(n);
    // FP8 blocks (DeepSeek-V3/R1): W[i, j] = q[i, j] * scale_inv[i / 128, j / 128].
    const RawTensor* scale = nullptr;
    if (t.dtype == DType::f8_e4m3 && t.shape.size() == 2) {
      scale = src_->find(name + "_scale_inv");
      if (!scale)
        fail("weights", src_->where(), ": tensor '", name, "' is F8_E4M3 but '", name,
             "_scale_inv' is missing");
      const std::size_t br = (t.shape[0] + 127) / 128, bc = (t.shape[1] + 127) / 128;
      if (scale->dtype != DType::f32 || scale->shape != std::vector<std::size_t>{br, bc})
        fail("weights", src_->where(), ": tensor '", name, "_scale_inv': expected F32 ",
             io::shape_string(std::vector<std::size_t>{br, bc}), ", got ", dtype_name(scale->dtype),
             " ", io::shape_string(scale->shape));
    }
    const std::size_t cols = t.shape.empty() ? 1 : t.shape.back();
    const std::size_t bc = (cols + 127) / 128;
    for (std::size_t i = 0; i < n; ++i) {
      float v = element(t, i);
      if (scale) v *= element(*scale, (i / cols / 128) * bc + (i % cols) / 128);
      out[i] = v;
    }
  }

  // v with its interleaved copy (made on the first request of `name`, then shared).
  template <class Q>
  AnyMatrixView packed(const std::string& name, AnyMatrixView v, bool repack) {
    if (!repack || !repack_enabled() || v.rows < 8) return v;
    auto it = packed_.find(name);
    if (it == packed_.end()) {
      const auto q = v.blocks<Q>();
      const std::size_t n = quant::repacked_x8_bytes(q);
      std::byte* buf = arena_.allocate(n);
      quant::repack_x8(q, reinterpret_cast<typename quant::RepackedX8<Q>::Block*>(buf));
      repacked_bytes_ += n;
      it = packed_.emplace(name, buf).first;
    }
    v.packed = it->second;
    return v;
  }

  template <class T>
  std::vector<T>& convert(const std::string& name, const RawTensor& t) {
    std::vector<float> f;
    to_floats(name, t, f);
    auto buf = std::make_unique<std::vector<T>>(f.size());
    for (std::size_t i = 0; i < f.size(); ++i) (*buf)[i] = from_float<T>(f[i]);
    converted_bytes_ += f.size() * sizeof(T);
    owned_.push_back(
        std::shared_ptr<void>(buf.get(), [](void* p) { delete static_cast<std::vector<T>*>(p); }));
    return *buf.release();
  }

  std::shared_ptr<const WeightSource> src_;
  std::vector<std::shared_ptr<void>> owned_;
  std::size_t converted_bytes_ = 0;
  // The interleaved copies, on transparent huge pages (core/huge_arena.hpp): a decode step
  // streams all of them once, and 4 KiB pages cost a TLB miss every 4 KiB of that stream.
  HugeArena arena_;
  std::map<std::string, std::byte*, std::less<>> packed_;
  std::size_t repacked_bytes_ = 0;
  std::map<std::string, std::size_t> kinds_;
};

}  // namespace tmoe::models
