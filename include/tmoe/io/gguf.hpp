// tmoe/io/gguf.hpp: GGUF (v2 and v3) reader and writer, the llama.cpp tensor names, and the
// tokenizer stored in GGUF metadata.
//
// Layout (little-endian): "GGUF", u32 version, u64 tensor_count, u64 kv_count, then kv_count
// (string key, u32 type, value) pairs, then tensor_count infos (string name, u32 n_dims,
// u64 ne[n_dims], u32 ggml type, u64 offset), padding to general.alignment (default 32), then the
// data area; each tensor's offset is relative to the data area and a multiple of the alignment.
// Strings are u64 length + bytes (no terminator). Arrays are u32 element type, u64 count, values.
//
// Dimension order: GGUF lists ne[0] first, and ne[0] is the FASTEST-varying dimension (ggml
// order). A PyTorch weight of shape [out, in] is stored with ne = {in, out}. GgufTensor::ne holds
// the file's order; GgufTensor::shape() returns the PyTorch (row-major, slowest first) order.
// Quantized types pack blocks along ne[0]: Q8_0/Q4_0 blocks of 32 values (34/18 bytes),
// Q4_K/Q6_K super-blocks of 256 (144/210 bytes); ne[0] must be a multiple of the block size.
// Tensor data is exposed as raw bytes + type + shape; decoding blocks is tmoe/quant's job.
//
// Every count, length, offset and size is checked against the file size (overflow-checked) before
// use; any problem is one tmoe::Error naming the file and what is wrong.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tmoe/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/io/mmap.hpp"
#include "tmoe/io/tokenizer.hpp"

namespace tmoe::io {

enum class GgufType : std::uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};

// ggml tensor types tmoe reads (numbering from ggml.h).
enum class GgmlType : std::uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q8_0 = 8,
  q4_k = 12,
  q6_k = 14,
  bf16 = 30
};

struct GgmlTypeTraits {
  std::string_view name;
  std::size_t block;  // values per block
  std::size_t bytes;  // bytes per block
};

inline std::optional<GgmlTypeTraits> ggml_type_traits(GgmlType t) {
  switch (t) {
    case GgmlType::f32:
      return GgmlTypeTraits{"F32", 1, 4};
    case GgmlType::f16:
      return GgmlTypeTraits{"F16", 1, 2};
    case GgmlType::bf16:
      return GgmlTypeTraits{"BF16", 1, 2};
    case GgmlType::q8_0:
      return GgmlTypeTraits{"Q8_0", 32, 34};
    case GgmlType::q4_0:
      return GgmlTypeTraits{"Q4_0", 32, 18};
    case GgmlType::q4_k:
      return GgmlTypeTraits{"Q4_K", 256, 144};
    case GgmlType::q6_k:
      return GgmlTypeTraits{"Q6_K", 256, 210};
  }
  return std::nullopt;
}

// One metadata value. Scalars use u/i/f/b/s by type; arrays hold their elements in `arr`.
struct GgufValue {
  GgufType type = GgufType::u32;
  GgufType elem = GgufType::u8;  // arrays: element type
  std::uint64_t u = 0;
  std::int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<GgufValue> arr;

  static GgufValue of_u32(std::uint32_t v) {
    GgufValue x;
    x.type = GgufType::u32;
    x.u = v;
    return x;
  }
  static GgufValue of_i32(std::int32_t v) {
    GgufValue x;
    x.type = GgufType::i32;
    x.i = v;
    return x;
  }
  static GgufValue of_u64(std::uint64_t v) {
    GgufValue x;
    x.type = GgufType::u64;
    x.u = v;
    return x;
  }
  static GgufValue of_f32(float v) {
    GgufValue x;
    x.type = GgufType::f32;
    x.f = v;
    return x;
  }
  static GgufValue of_bool(bool v) {
    GgufValue x;
    x.type = GgufType::boolean;
    x.b = v;
    return x;
  }
  static GgufValue of_string(std::string v) {
    GgufValue x;
    x.type = GgufType::string;
    x.s = std::move(v);
    return x;
  }
  static GgufValue of_array(GgufType elem, std::vector<GgufValue> v) {
    GgufValue x;
    x.type = GgufType::array;
    x.elem = elem;
    x.arr = std::move(v);
    return x;
  }
  bool is_integer() const {
    switch (type) {
      case GgufType::u8:
      case GgufType::u16:
      case GgufType::u32:
      case GgufType::u64:
      case GgufType::i8:
      case GgufType::i16:
      case GgufType::i32:
      case GgufType::i64:
        return true;
      default:
        return false;
    }
  }
  bool is_signed() const {
    return type == GgufType::i8 || type == GgufType::i16 || type == GgufType::i32 ||
           type == GgufType::i64;
  }
};

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::f32;
  std::vector<std::uint64_t> ne;  // ggml order: ne[0] fastest
  std::uint64_t offset = 0;       // in the data area
  std::uint64_t nbytes = 0;
  const std::byte* data = nullptr;
  // PyTorch order (slowest first): ne reversed.
  std::vector<std::size_t> shape() const { return {ne.rbegin(), ne.rend()}; }
  std::uint64_t numel() const {
    std::uint64_t n = 1;
    for (auto d : ne) n *= d;
    return n;
  }
  std::span<const std::byte> bytes() const { return {data, static_cast<std::size_t>(nbytes)}; }
};

struct GgufContents {
  std::uint32_t version = 3;
  std::uint64_t alignment = 32;
  std::uint64_t data_start = 0;
  std::vector<std::pair<std::string, GgufValue>> kv;  // file order
  std::vector<GgufTensor> tensors;                    // file order
};

namespace detail {

class GgufCursor {
 public:
  GgufCursor(std::span<const std::byte> f, const std::string& path) : f_(f), path_(path) {}
  std::size_t pos() const { return pos_; }
  std::size_t left() const { return f_.size() - pos_; }
  template <class... A>
  [[noreturn]] void bad(A&&... a) const {
    fail("gguf", path_, ": ", std::forward<A>(a)..., " (at byte ", pos_, ")");
  }
  void need(std::uint64_t n, std::string_view what) const {
    if (n > left()) bad("truncated reading ", what, ": need ", n, " bytes, ", left(), " left");
  }
  template <class T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, f_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(std::string_view what) {
    const auto n = read<std::uint64_t>(what);
    if (n > left()) bad(what, ": string length ", n, " exceeds the ", left(), " bytes left");
    std::string s(reinterpret_cast<const char*>(f_.data() + pos_), static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }

 private:
  std::span<const std::byte> f_;
  const std::string& path_;
  std::size_t pos_ = 0;
};

inline std::size_t gguf_scalar_size(GgufType t) {
  switch (t) {
    case GgufType::u8:
    case GgufType::i8:
    case GgufType::boolean:
      return 1;
    case GgufType::u16:
    case GgufType::i16:
      return 2;
    case GgufType::u32:
    case GgufType::i32:
    case GgufType::f32:
      return 4;
    case GgufType::u64:
    case GgufType::i64:
    case GgufType::f64:
      return 8;
    case GgufType::string:
      return 8;  // at least the length
    case GgufType::array:
      return 12;  // at least type + count
  }
  return 0;
}

inline GgufValue gguf_read_value(GgufCursor& c, GgufType t, const std::string& key, int depth) {
  GgufValue v;
  v.type = t;
  switch (t) {
    case GgufType::u8:
      v.u = c.read<std::uint8_t>(key);
      break;
    case GgufType::i8:
      v.i = c.read<std::int8_t>(key);
      break;
    case GgufType::u16:
      v.u = c.read<std::uint16_t>(key);
      break;
    case GgufType::i16:
      v.i = c.read<std::int16_t>(key);
      break;
    case GgufType::u32:
      v.u = c.read<std::uint32_t>(key);
      break;
    case GgufType::i32:
      v.i = c.read<std::int32_t>(key);
      break;
    case GgufType::u64:
      v.u = c.read<std::uint64_t>(key);
      break;
    case GgufType::i64:
      v.i = c.read<std::int64_t>(key);
      break;
    case GgufType::f32:
      v.f = c.read<float>(key);
      break;
    case GgufType::f64:
      v.f = c.read<double>(key);
      break;
    case GgufType::boolean: {
      const auto b = c.read<std::uint8_t>(key);
      if (b > 1) c.bad("key '", key, "': bool value ", int(b), " is not 0 or 1");
      v.b = b != 0;
      break;
    }
    case GgufType::string:
      v.s = c.str(key);
      break;
    case GgufType::array: {
      if (depth >= 4) c.bad("key '", key, "': arrays nested deeper than 4");
      const auto et = c.read<std::uint32_t>(key);
      if (et > 12) c.bad("key '", key, "': unknown array element type ", et);
      v.elem = static_cast<GgufType>(et);
      const auto n = c.read<std::uint64_t>(key);
      const std::size_t min = gguf_scalar_size(v.elem);
      if (n > c.left() / min)
        c.bad("key '", key, "': array count ", n, " cannot fit in the ", c.left(), " bytes left");
      v.arr.reserve(static_cast<std::size_t>(n));
      for (std::uint64_t k = 0; k < n; ++k)
        v.arr.push_back(gguf_read_value(c, v.elem, key, depth + 1));
      break;
    }
    default:
      c.bad("key '", key, "': unknown value type ", static_cast<std::uint32_t>(t));
  }
  return v;
}

}  // namespace detail

// Validates and parses a whole GGUF file held in `file`; tensor data pointers point into it.
inline GgufContents parse_gguf(std::span<const std::byte> file, const std::string& path) {
  detail::GgufCursor c(file, path);
  GgufContents g;
  if (file.size() < 4 || std::memcmp(file.data(), "GGUF", 4) != 0)
    fail("gguf", path, ": not a GGUF file (bad magic)");
  c.read<std::uint32_t>("magic");
  g.version = c.read<std::uint32_t>("version");
  if (g.version != 2 && g.version != 3)
    c.bad("unsupported GGUF version ", g.version,
          " (expected 2 or 3; big-endian files are not supported)");
  const auto n_tensors = c.read<std::uint64_t>("tensor count");
  const auto n_kv = c.read<std::uint64_t>("metadata count");
  if (n_kv > c.left() / 12) c.bad("metadata count ", n_kv, " cannot fit in the file");
  if (n_tensors > c.left() / 24) c.bad("tensor count ", n_tensors, " cannot fit in the file");
  std::map<std::string, bool> seen;
  for (std::uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.str("metadata key");
    if (seen.count(key)) c.bad("duplicate metadata key '", key, "'");
    seen[key] = true;
    const auto t = c.read<std::uint32_t>("metadata type");
    if (t > 12) c.bad("key '", key, "': unknown value type ", t);
    auto v = detail::gguf_read_value(c, static_cast<GgufType>(t), key, 0);
    if (key == "general.alignment") {
      if (!v.is_integer() || v.is_signed() || v.u == 0 || (v.u & (v.u - 1)) || v.u > (1u << 20))
        c.bad("general.alignment must be a power of two up to 2^20");
      g.alignment = v.u;
    }
    g.kv.emplace_back(std::move(key), std::move(v));
  }
  std::map<std::string, bool> names;
  for (std::uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    t.name = c.str("tensor name");
    if (names.count(t.name)) c.bad("duplicate tensor '", t.name, "'");
    names[t.name] = true;
    const auto nd = c.read<std::uint32_t>("tensor dims");
    if (nd == 0 || nd > 4) c.bad("tensor '", t.name, "': n_dims ", nd, " not in 1..4");
    std::uint64_t numel = 1;
    for (std::uint32_t d = 0; d < nd; ++d) {
      t.ne.push_back(c.read<std::uint64_t>("tensor shape"));
      if (__builtin_mul_overflow(numel, t.ne.back(), &numel) || numel > (std::uint64_t(1) << 60))
        c.bad("tensor '", t.name, "': element count overflows");
    }
    const auto ty = c.read<std::uint32_t>("tensor type");
    t.type = static_cast<GgmlType>(ty);
    const auto tr = ggml_type_traits(t.type);
    if (!tr)
      c.bad("tensor '", t.name, "': ggml type ", ty,
            " is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K)");
    if (t.ne[0] % tr->block)
      c.bad("tensor '", t.name, "': ne[0] = ", t.ne[0], " is not a multiple of the ", tr->name,
            " block size ", tr->block);
    t.nbytes = numel / tr->block *
               tr->bytes;  // numel <= 2^60, bytes/block <= 210 / block >= 1: no overflow
    if (tr->block == 1 && __builtin_mul_overflow(numel, tr->bytes, &t.nbytes))
      c.bad("tensor '", t.name, "': byte size overflows");
    t.offset = c.read<std::uint64_t>("tensor offset");
    if (t.offset % g.alignment)
      c.bad("tensor '", t.name, "': offset ", t.offset, " is not a multiple of the alignment ",
            g.alignment);
    g.tensors.push_back(std::move(t));
  }
  const std::uint64_t end_of_infos = c.pos();
  g.data_start = (end_of_infos + g.alignment - 1) / g.alignment * g.alignment;
  const std::uint64_t data_size = g.data_start <= file.size() ? file.size() - g.data_start : 0;
  if (!g.tensors.empty() && g.data_start > file.size())
    fail("gguf", path, ": data area starts at ", g.data_start, ", past the end of the file (",
         file.size(), " bytes)");
  std::vector<const GgufTensor*> order;
  for (auto& t : g.tensors) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail("gguf", path, ": tensor '", t.name, "': data [", t.offset, ",+", t.nbytes,
           ") exceeds the data area of ", data_size, " bytes");
    t.data = file.data() + g.data_start + t.offset;
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (std::size_t k = 1; k < order.size(); ++k)
    if (order[k - 1]->nbytes && order[k]->nbytes &&
        order[k]->offset < order[k - 1]->offset + order[k - 1]->nbytes)
      fail("gguf", path, ": tensors '", order[k - 1]->name, "' and '", order[k]->name, "' overlap");
  return g;
}

// A memory-mapped GGUF file with typed metadata getters.
class GgufFile {
 public:
  explicit GgufFile(const std::string& path) : map_(path) { c_ = parse_gguf(map_.bytes(), path); }
  const std::string& path() const { return map_.path(); }
  const GgufContents& contents() const { return c_; }
  const std::vector<GgufTensor>& tensors() const { return c_.tensors; }

  const GgufValue* find(std::string_view key) const {
    for (const auto& [k, v] : c_.kv)
      if (k == key) return &v;
    return nullptr;
  }
  const GgufValue& at(std::string_view key) const {
    const auto* v = find(key);
    if (!v) fail("gguf", path(), ": metadata key '", key, "' is missing");
    return *v;
  }
  std::uint64_t get_uint(std::string_view key) const {
    const auto& v = at(key);
    if (!v.is_integer() || (v.is_signed() && v.i < 0))
      fail("gguf", path(), ": metadata '", key, "': expected a non-negative integer");
    return v.is_signed() ? static_cast<std::uint64_t>(v.i) : v.u;
  }
  std::optional<std::uint64_t> get_uint_opt(std::string_view key) const {
    return find(key) ? std::optional(get_uint(key)) : std::nullopt;
  }
  double get_float(std::string_view key) const {
    const auto& v = at(key);
    if (v.type == GgufType::f32 || v.type == GgufType::f64) return v.f;
    if (v.is_integer()) return v.is_signed() ? static_cast<double>(v.i) : static_cast<double>(v.u);
    fail("gguf", path(), ": metadata '", key, "': expected a number");
  }
  const std::string& get_string(std::string_view key) const {
    const auto& v = at(key);
    if (v.type != GgufType::string)
      fail("gguf", path(), ": metadata '", key, "': expected a string");
    return v.s;
  }
  const std::vector<GgufValue>& get_array(std::string_view key, GgufType elem) const {
    const auto& v = at(key);
    if (v.type != GgufType::array || v.elem != elem)
      fail("gguf", path(), ": metadata '", key, "': expected an array of type ",
           static_cast<std::uint32_t>(elem));
    return v.arr;
  }
  const GgufTensor& tensor(std::string_view name) const {
    for (const auto& t : c_.tensors)
      if (t.name == name) return t;
    fail("gguf", path(), ": tensor '", name, "' not found");
  }

 private:
  MappedFile map_;
  GgufContents c_;
};

// Writes GGUF v3 files (tests, fixtures, `tmoe quantize`).
class GgufWriter {
 public:
  explicit GgufWriter(std::uint64_t alignment = 32) : alignment_(alignment) {
    check(alignment && !(alignment & (alignment - 1)), "gguf_writer",
          "alignment must be a power of two");
    if (alignment != 32)
      set("general.alignment", GgufValue::of_u32(static_cast<std::uint32_t>(alignment)));
  }
  void set(std::string key, GgufValue v) {
    for (auto& [k, old] : kv_)
      if (k == key) {
        old = std::move(v);
        return;
      }
    kv_.emplace_back(std::move(key), std::move(v));
  }
  void set_string_array(std::string key, const std::vector<std::string>& v) {
    std::vector<GgufValue> a;
    a.reserve(v.size());
    for (const auto& s : v) a.push_back(GgufValue::of_string(s));
    set(std::move(key), GgufValue::of_array(GgufType::string, std::move(a)));
  }
  // ne in ggml order (ne[0] fastest); bytes must be the exact size.
  void add_tensor(std::string name, GgmlType type, std::vector<std::uint64_t> ne,
                  std::span<const std::byte> bytes) {
    const auto n = declare(name, type, ne);
    check(n == bytes.size(), "gguf_writer", "tensor '", name, "': expected ", n, " bytes, got ",
          bytes.size());
    auto data = std::make_shared<std::vector<std::byte>>(bytes.begin(), bytes.end());
    tensors_.push_back({std::move(name), type, std::move(ne), n, [data] { return *data; }});
  }
  // A streamed tensor: `make` produces its bytes while write() runs, one tensor in memory at a
  // time (export of models larger than memory). The size is checked when it is produced.
  void add_tensor(std::string name, GgmlType type, std::vector<std::uint64_t> ne,
                  std::function<std::vector<std::byte>()> make) {
    const auto n = declare(name, type, ne);
    tensors_.push_back({std::move(name), type, std::move(ne), n, std::move(make)});
  }
  std::size_t tensor_count() const { return tensors_.size(); }

  // Header, metadata and tensor infos, padded to the alignment (the data area follows).
  std::vector<std::byte> header() const {
    std::vector<std::byte> out;
    auto raw = [&](const void* p, std::size_t n) {
      const auto* b = static_cast<const std::byte*>(p);
      out.insert(out.end(), b, b + n);
    };
    auto u32 = [&](std::uint32_t v) { raw(&v, 4); };
    auto u64 = [&](std::uint64_t v) { raw(&v, 8); };
    auto str = [&](const std::string& s) {
      u64(s.size());
      raw(s.data(), s.size());
    };
    raw("GGUF", 4);
    u32(3);
    u64(tensors_.size());
    u64(kv_.size());
    for (const auto& [k, v] : kv_) {
      str(k);
      u32(static_cast<std::uint32_t>(v.type));
      value(out, v);
    }
    const auto offs = offsets();
    for (std::size_t k = 0; k < tensors_.size(); ++k) {
      const auto& t = tensors_[k];
      str(t.name);
      u32(static_cast<std::uint32_t>(t.ne.size()));
      for (auto d : t.ne) u64(d);
      u32(static_cast<std::uint32_t>(t.type));
      u64(offs[k]);
    }
    out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_);
    return out;
  }

  std::vector<std::byte> serialize() const {
    std::vector<std::byte> out = header();
    const std::size_t base = out.size();
    const auto offs = offsets();
    for (std::size_t k = 0; k < tensors_.size(); ++k) {
      const auto bytes = produce(k);
      out.resize(base + offs[k]);
      out.insert(out.end(), bytes.begin(), bytes.end());
    }
    return out;
  }
  // Writes the file, streaming tensor data; a failure removes the partial file.
  void write(const std::string& path) const {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    check(f != nullptr, "gguf_writer", path, ": cannot open for writing");
    bool ok = true;
    try {
      const auto head = header();
      ok = std::fwrite(head.data(), 1, head.size(), f) == head.size();
      std::uint64_t pos = 0;
      const auto offs = offsets();
      const std::vector<std::byte> zeros(alignment_);
      for (std::size_t k = 0; k < tensors_.size() && ok; ++k) {
        const std::size_t pad = static_cast<std::size_t>(offs[k] - pos);
        ok = pad == 0 || std::fwrite(zeros.data(), 1, pad, f) == pad;
        const auto bytes = produce(k);
        ok = ok && std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
        pos = offs[k] + bytes.size();
      }
    } catch (...) {
      std::fclose(f);
      std::remove(path.c_str());
      throw;
    }
    ok = std::fclose(f) == 0 && ok;
    if (!ok) std::remove(path.c_str());
    check(ok, "gguf_writer", path, ": write failed");
  }

 private:
  static void value(std::vector<std::byte>& out, const GgufValue& v) {
    auto raw = [&](const void* p, std::size_t n) {
      const auto* b = static_cast<const std::byte*>(p);
      out.insert(out.end(), b, b + n);
    };
    auto put = [&](auto x) { raw(&x, sizeof x); };
    switch (v.type) {
      case GgufType::u8:
        put(static_cast<std::uint8_t>(v.u));
        break;
      case GgufType::i8:
        put(static_cast<std::int8_t>(v.i));
        break;
      case GgufType::u16:
        put(static_cast<std::uint16_t>(v.u));
        break;
      case GgufType::i16:
        put(static_cast<std::int16_t>(v.i));
        break;
      case GgufType::u32:
        put(static_cast<std::uint32_t>(v.u));
        break;
      case GgufType::i32:
        put(static_cast<std::int32_t>(v.i));
        break;
      case GgufType::u64:
        put(static_cast<std::uint64_t>(v.u));
        break;
      case GgufType::i64:
        put(static_cast<std::int64_t>(v.i));
        break;
      case GgufType::f32:
        put(static_cast<float>(v.f));
        break;
      case GgufType::f64:
        put(static_cast<double>(v.f));
        break;
      case GgufType::boolean:
        put(static_cast<std::uint8_t>(v.b));
        break;
      case GgufType::string:
        put(static_cast<std::uint64_t>(v.s.size()));
        raw(v.s.data(), v.s.size());
        break;
      case GgufType::array:
        put(static_cast<std::uint32_t>(v.elem));
        put(static_cast<std::uint64_t>(v.arr.size()));
        for (const auto& e : v.arr) {
          TMOE_ASSERT(e.type == v.elem);
          value(out, e);
        }
        break;
    }
  }
  std::uint64_t declare(const std::string& name, GgmlType type,
                        const std::vector<std::uint64_t>& ne) const {
    const auto tr = ggml_type_traits(type);
    check(tr.has_value(), "gguf_writer", "tensor '", name, "': unsupported type");
    check(!ne.empty() && ne.size() <= 4 && ne[0] % tr->block == 0, "gguf_writer", "tensor '", name,
          "': bad shape for ", tr->name);
    for (const auto& t : tensors_)
      check(t.name != name, "gguf_writer", "tensor '", name, "' added twice");
    std::uint64_t n = 1;
    for (auto d : ne) n *= d;
    return n / tr->block * tr->bytes;
  }
  std::vector<std::uint64_t> offsets() const {
    std::vector<std::uint64_t> offs;
    std::uint64_t off = 0;
    for (const auto& t : tensors_) {
      offs.push_back(off);
      off = (off + t.nbytes + alignment_ - 1) / alignment_ * alignment_;
    }
    return offs;
  }
  std::vector<std::byte> produce(std::size_t k) const {
    auto bytes = tensors_[k].make();
    check(bytes.size() == tensors_[k].nbytes, "gguf_writer", "tensor '", tensors_[k].name,
          "': expected ", tensors_[k].nbytes, " bytes, got ", bytes.size());
    return bytes;
  }
  struct T {
    std::string name;
    GgmlType type;
    std::vector<std::uint64_t> ne;
    std::uint64_t nbytes = 0;
    std::function<std::vector<std::byte>()> make;
  };
  std::uint64_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<T> tensors_;
};

// ---- llama.cpp tensor names ---------------------------------------------------------------------

// The llama.cpp (GGUF) name of a Hugging Face tensor, for the llama, qwen2, mixtral and deepseek2
// architectures. Routed experts are stacked in GGUF: `expert` is then set and the GGUF tensor
// (e.g. blk.3.ffn_gate_exps.weight, ne = {in, out, n_expert}) holds expert `*expert` as slice.
struct GgufName {
  std::string name;
  std::optional<std::size_t> expert;
};

inline std::optional<GgufName> gguf_tensor_name(std::string_view hf) {
  if (hf == "model.embed_tokens.weight") return GgufName{"token_embd.weight", {}};
  if (hf == "model.norm.weight") return GgufName{"output_norm.weight", {}};
  if (hf == "lm_head.weight") return GgufName{"output.weight", {}};
  constexpr std::string_view pre = "model.layers.";
  if (!hf.starts_with(pre)) return std::nullopt;
  hf.remove_prefix(pre.size());
  std::size_t layer = 0, k = 0;
  while (k < hf.size() && hf[k] >= '0' && hf[k] <= '9')
    layer = layer * 10 + static_cast<std::size_t>(hf[k++] - '0');
  if (k == 0 || k >= hf.size() || hf[k] != '.') return std::nullopt;
  hf.remove_prefix(k + 1);
  const std::string blk = "blk." + std::to_string(layer) + ".";
  // suffix: .weight / .bias / other
  std::string_view suffix;
  for (std::string_view s : {".weight", ".bias", "_scale_inv"})
    if (hf.ends_with(s)) suffix = s;
  if (hf == "mlp.gate.e_score_correction_bias") return GgufName{blk + "exp_probs_b.bias", {}};
  if (suffix.empty()) return std::nullopt;
  std::string_view stem = hf.substr(0, hf.size() - suffix.size());
  static const std::pair<std::string_view, std::string_view> kMap[] = {
      {"input_layernorm", "attn_norm"},
      {"post_attention_layernorm", "ffn_norm"},
      {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"},
      {"self_attn.q_a_proj", "attn_q_a"},
      {"self_attn.q_a_layernorm", "attn_q_a_norm"},
      {"self_attn.q_b_proj", "attn_q_b"},
      {"self_attn.kv_a_proj_with_mqa", "attn_kv_a_mqa"},
      {"self_attn.kv_a_layernorm", "attn_kv_a_norm"},
      {"self_attn.kv_b_proj", "attn_kv_b"},
      {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
      {"mlp.gate", "ffn_gate_inp"},
      {"block_sparse_moe.gate", "ffn_gate_inp"},
      {"mlp.shared_experts.gate_proj", "ffn_gate_shexp"},
      {"mlp.shared_experts.up_proj", "ffn_up_shexp"},
      {"mlp.shared_experts.down_proj", "ffn_down_shexp"},
  };
  for (const auto& [from, to] : kMap)
    if (stem == from) return GgufName{blk + std::string(to) + std::string(suffix), {}};
  // routed experts: mlp.experts.E.{gate,up,down}_proj (DeepSeek),
  // block_sparse_moe.experts.E.w{1,3,2} (Mixtral)
  for (std::string_view ep : {"mlp.experts.", "block_sparse_moe.experts."}) {
    if (!stem.starts_with(ep)) continue;
    std::string_view rest = stem.substr(ep.size());
    std::size_t e = 0, j = 0;
    while (j < rest.size() && rest[j] >= '0' && rest[j] <= '9')
      e = e * 10 + static_cast<std::size_t>(rest[j++] - '0');
    if (j == 0 || j >= rest.size() || rest[j] != '.') return std::nullopt;
    rest.remove_prefix(j + 1);
    std::string_view to;
    if (rest == "gate_proj" || rest == "w1")
      to = "ffn_gate_exps";
    else if (rest == "up_proj" || rest == "w3")
      to = "ffn_up_exps";
    else if (rest == "down_proj" || rest == "w2")
      to = "ffn_down_exps";
    else
      return std::nullopt;
    return GgufName{blk + std::string(to) + std::string(suffix), e};
  }
  return std::nullopt;
}

// ---- tokenizer from GGUF metadata
// -----------------------------------------------------------------

struct GgufTokenizer {
  Tokenizer tokenizer;
  std::optional<TokenId> bos, eos;
};

// Builds the byte-level BPE tokenizer from tokenizer.ggml.* (model "gpt2"): tokens, merges,
// token_type (3 = control and 4 = user-defined become added tokens, control ones special), the
// pre-tokenizer named by tokenizer.ggml.pre (deepseek-v3, qwen2, llama-bpe; anything else: GPT-2).
inline GgufTokenizer gguf_tokenizer(const GgufFile& g) {
  const std::string& model = g.get_string("tokenizer.ggml.model");
  check(model == "gpt2", "gguf", g.path(), ": tokenizer.ggml.model '", model,
        "' is not supported (only byte-level BPE, 'gpt2')");
  TokenizerSpec spec;
  spec.source = g.path();
  const auto& toks = g.get_array("tokenizer.ggml.tokens", GgufType::string);
  const std::vector<GgufValue>* types = nullptr;
  if (g.find("tokenizer.ggml.token_type")) {
    types = &g.get_array("tokenizer.ggml.token_type", GgufType::i32);
    check(types->size() == toks.size(), "gguf", g.path(), ": tokenizer.ggml.token_type has ",
          types->size(), " entries, tokens has ", toks.size());
  }
  for (std::size_t i = 0; i < toks.size(); ++i) {
    const auto id = static_cast<TokenId>(i);
    const std::int64_t ty = types ? (*types)[i].i : 1;
    if (ty == 3 || ty == 4)
      spec.added.push_back({id, toks[i].s, ty == 3});
    else
      spec.vocab.emplace_back(toks[i].s, id);
  }
  if (g.find("tokenizer.ggml.merges")) {
    const auto& merges = g.get_array("tokenizer.ggml.merges", GgufType::string);
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const auto& s = merges[r].s;
      const auto sp = s.find(' ', 1);
      check(sp != std::string::npos && sp + 1 < s.size(), "gguf", g.path(),
            ": tokenizer.ggml.merges[", r, "] '", s, "' is not two tokens separated by a space");
      spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    }
  }
  const std::string pre =
      g.find("tokenizer.ggml.pre") ? g.get_string("tokenizer.ggml.pre") : "default";
  if (pre == "deepseek-v3") {
    for (auto p :
         {patterns::kDeepSeekV3Digits, patterns::kDeepSeekV3Cjk, patterns::kDeepSeekV3Words})
      spec.splits.push_back({std::string(p), false});
  } else if (pre == "qwen2") {
    spec.splits.push_back({std::string(patterns::kQwen2), false});
  } else if (pre == "llama-bpe" || pre == "llama3") {
    spec.splits.push_back({std::string(patterns::kLlama3), false});
  } else {
    spec.byte_level_regex = true;
  }
  GgufTokenizer out{Tokenizer(spec), {}, {}};
  const auto n = static_cast<std::uint64_t>(toks.size());
  if (auto b = g.get_uint_opt("tokenizer.ggml.bos_token_id")) {
    check(*b < n, "gguf", g.path(), ": tokenizer.ggml.bos_token_id ", *b, " out of range [0,", n,
          ")");
    out.bos = static_cast<TokenId>(*b);
  }
  if (auto e = g.get_uint_opt("tokenizer.ggml.eos_token_id")) {
    check(*e < n, "gguf", g.path(), ": tokenizer.ggml.eos_token_id ", *e, " out of range [0,", n,
          ")");
    out.eos = static_cast<TokenId>(*e);
  }
  return out;
}

}  // namespace tmoe::io
