// tmoe/io/safetensors.hpp: zero-copy reading of .safetensors checkpoints (single files and sharded
// folders with model.safetensors.index.json), and a writer.
//
// File layout: u64 little-endian N, then N bytes of UTF-8 JSON
//   {"__metadata__": {str: str}, "<name>": {"dtype": "BF16", "shape": [..], "data_offsets": [b,
//   e]}}
// then the data area; [b, e) is relative to the start of the data area (byte 8 + N). Tensors are
// row-major, little-endian, exactly as PyTorch holds them (weights [out, in]).
//
// Invariants checked by parse_safetensors() before any tensor byte is touched: N <= 100 MB and
// N <= file size - 8; the JSON parses; every entry is an object with a known dtype, a shape of
// non-negative integers and two offsets b <= e inside the data area; e - b == product(shape) x
// dtype size (overflow-checked); no two tensors overlap. Every failure is one tmoe::Error naming
// the file, the tensor and the problem. Views returned by SafetensorsModel point into the mapping
// and live as long as the model object.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tmoe/core/dtype.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/core/extents.hpp"
#include "tmoe/core/tensor.hpp"
#include "tmoe/io/mmap.hpp"

namespace tmoe::io {

inline constexpr std::size_t kSafetensorsMaxHeader = 100u << 20;  // 100 MB, as the HF library

// The dtype named by a safetensors dtype string, or nullopt.
inline std::optional<DType> dtype_from_safetensors(std::string_view s) {
  static constexpr DType kAll[] = {DType::f32,     DType::f16, DType::bf16, DType::f8_e4m3,
                                   DType::f8_e5m2, DType::f64, DType::i8,   DType::u8,
                                   DType::i16,     DType::i32, DType::i64,  DType::boolean};
  for (DType t : kAll)
    if (dtype_name(t) == s) return t;
  return std::nullopt;
}

inline std::string shape_string(std::span<const std::size_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// One tensor's entry. `data` points into the mapped file (nullptr before the file is mapped).
struct TensorInfo {
  std::string name;
  DType dtype = DType::f32;
  std::vector<std::size_t> shape;
  std::size_t begin = 0, end = 0;  // offsets in the data area
  const std::byte* data = nullptr;
  std::size_t nbytes() const { return end - begin; }
  std::size_t numel() const {
    std::size_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;              // in file offset order
  std::map<std::string, std::string> metadata;  // "__metadata__"
  std::size_t data_start = 0;                   // 8 + N
};

// "[7168,?]" for Extents<7168, kDynamic>.
template <class Ext>
std::string static_shape_string() {
  std::string s = "[";
  for (std::size_t r = 0; r < Ext::kRank; ++r)
    s += (r ? "," : "") +
         (Ext::is_static(r) ? std::to_string(Ext::static_extent(r)) : std::string("?"));
  return s + "]";
}

namespace detail {
inline bool mul_overflow(std::size_t a, std::size_t b, std::size_t* out) {
  return __builtin_mul_overflow(a, b, out);
}
}  // namespace detail

// Validates a whole safetensors file held in `file` (see the invariants above) and returns its
// entries with `data` pointing into `file`. `path` only names the file in errors.
inline SafetensorsHeader parse_safetensors(std::span<const std::byte> file,
                                           const std::string& path) {
  constexpr std::string_view op = "safetensors";
  check(file.size() >= 8, op, path,
        ": file too short for the header length: expected >= 8 bytes, got ", file.size());
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(file[i]);
  check(n <= kSafetensorsMaxHeader, op, path, ": header length ", n, " exceeds the limit of ",
        kSafetensorsMaxHeader, " bytes");
  check(n <= file.size() - 8, op, path, ": header length ", n, " exceeds the file (",
        file.size() - 8, " bytes after the length)");
  SafetensorsHeader h;
  h.data_start = 8 + static_cast<std::size_t>(n);
  const std::size_t data_size = file.size() - h.data_start;
  const char* text = reinterpret_cast<const char*>(file.data() + 8);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text, text + n);
  } catch (const nlohmann::json::exception& e) {
    fail(op, path, ": header is not valid JSON: ", e.what());
  }
  check(j.is_object(), op, path, ": header must be a JSON object, got ", j.type_name());
  for (auto& [key, v] : j.items()) {
    if (key == "__metadata__") {
      check(v.is_object() || v.is_null(), op, path, ": __metadata__ must be an object, got ",
            v.type_name());
      if (v.is_object())
        for (auto& [mk, mv] : v.items()) {
          check(mv.is_string(), op, path, ": __metadata__['", mk, "'] must be a string, got ",
                mv.type_name());
          h.metadata[mk] = mv.get<std::string>();
        }
      continue;
    }
    TensorInfo t;
    t.name = key;
    check(v.is_object(), op, path, ": tensor '", key, "': entry must be an object, got ",
          v.type_name());
    for (const char* field : {"dtype", "shape", "data_offsets"})
      check(v.contains(field), op, path, ": tensor '", key, "': missing field '", field, "'");
    const auto& jd = v["dtype"];
    check(jd.is_string(), op, path, ": tensor '", key, "': dtype must be a string, got ",
          jd.type_name());
    const auto dt = dtype_from_safetensors(jd.get_ref<const std::string&>());
    check(dt.has_value(), op, path, ": tensor '", key, "': unknown dtype '",
          jd.get_ref<const std::string&>(), "'");
    t.dtype = *dt;
    const auto& js = v["shape"];
    check(js.is_array(), op, path, ": tensor '", key, "': shape must be a list, got ",
          js.type_name());
    std::size_t numel = 1;
    for (const auto& d : js) {
      check(d.is_number_unsigned(), op, path, ": tensor '", key,
            "': shape entries must be non-negative integers, got ", d.dump());
      const auto dim = d.get<std::uint64_t>();
      t.shape.push_back(static_cast<std::size_t>(dim));
      check(!detail::mul_overflow(numel, static_cast<std::size_t>(dim), &numel), op, path,
            ": tensor '", key, "': shape ", js.dump(), " overflows");
    }
    std::size_t bytes = 0;
    check(!detail::mul_overflow(numel, dtype_size(t.dtype), &bytes), op, path, ": tensor '", key,
          "': byte size of shape ", js.dump(), " overflows");
    const auto& jo = v["data_offsets"];
    check(
        jo.is_array() && jo.size() == 2 && jo[0].is_number_unsigned() && jo[1].is_number_unsigned(),
        op, path, ": tensor '", key, "': data_offsets must be two non-negative integers, got ",
        jo.dump());
    const auto b = jo[0].get<std::uint64_t>(), e = jo[1].get<std::uint64_t>();
    check(b <= e, op, path, ": tensor '", key, "': data_offsets begin ", b, " > end ", e);
    check(e <= data_size, op, path, ": tensor '", key, "': data_offsets [", b, ",", e,
          ") out of range: the data area holds ", data_size, " bytes");
    check(e - b == bytes, op, path, ": tensor '", key, "': expected ", bytes, " bytes for ",
          dtype_name(t.dtype), " ", shape_string(t.shape), ", got data_offsets [", b, ",", e,
          ") = ", e - b, " bytes");
    t.begin = static_cast<std::size_t>(b);
    t.end = static_cast<std::size_t>(e);
    t.data = file.data() + h.data_start + t.begin;
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (std::size_t i = 1; i < h.tensors.size(); ++i) {
    const auto& p = h.tensors[i - 1];
    const auto& c = h.tensors[i];
    check(c.begin >= p.end || p.begin == p.end || c.begin == c.end, op, path, ": tensors '", p.name,
          "' [", p.begin, ",", p.end, ") and '", c.name, "' [", c.begin, ",", c.end, ") overlap");
  }
  return h;
}

// An FP8 (e4m3) weight with its block-wise inverse scales (DeepSeek-V3/R1: `<name>_scale_inv`,
// float32 [ceil(rows/block), ceil(cols/block)]; the real weight is w * scale_inv per block).
struct Fp8Weight {
  TensorView<const f8_e4m3, DExtents<2>> weight;   // (rows, cols)
  TensorView<const float, DExtents<2>> scale_inv;  // (ceil(rows/block), ceil(cols/block))
  std::size_t block = 128;
};

// A checkpoint: one .safetensors file, or a folder (sharded with an index, or one or more files).
class SafetensorsModel {
 public:
  SafetensorsModel() = default;
  explicit SafetensorsModel(const std::string& path) { open(path); }

  // Opens a .safetensors file, a model.safetensors.index.json, or a folder holding either.
  void open(const std::string& path) {
    namespace fs = std::filesystem;
    constexpr std::string_view op = "safetensors";
    files_.clear();
    index_.clear();
    std::error_code ec;
    if (fs::is_directory(path, ec)) {
      const fs::path dir(path);
      if (fs::exists(dir / "model.safetensors.index.json", ec)) {
        open_index((dir / "model.safetensors.index.json").string());
        return;
      }
      std::vector<std::string> found;
      for (const auto& ent : fs::directory_iterator(dir, ec))
        if (ent.path().extension() == ".safetensors") found.push_back(ent.path().string());
      check(!found.empty(), op, path, ": no .safetensors file and no model.safetensors.index.json");
      std::sort(found.begin(), found.end());
      for (const auto& f : found) add_file(f);
      return;
    }
    if (path.size() >= 5 && path.ends_with(".json")) {
      open_index(path);
      return;
    }
    add_file(path);
  }

  // Every tensor name, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    n.reserve(index_.size());
    for (const auto& [k, v] : index_) n.push_back(k);
    return n;
  }
  std::size_t size() const { return index_.size(); }
  bool contains(std::string_view name) const { return index_.find(name) != index_.end(); }
  const TensorInfo* find(std::string_view name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr
                              : &files_[it->second.first]->header.tensors[it->second.second];
  }
  // The file a tensor is stored in.
  const std::string& file_of(std::string_view name) const {
    return files_[locate(name).first]->map.path();
  }
  const TensorInfo& info(std::string_view name) const {
    return files_[locate(name).first]->header.tensors[locate(name).second];
  }
  const std::map<std::string, std::string>& metadata(std::size_t file = 0) const {
    return files_.at(file)->header.metadata;
  }

  // A zero-copy view of tensor `name` as T with shape Ext; checks dtype, rank and static extents.
  template <class T, class Ext = DExtents<2>>
  TensorView<const T, Ext> view(std::string_view name) const {
    const auto loc = locate(name);
    const TensorInfo& t = files_[loc.first]->header.tensors[loc.second];
    const std::string& path = files_[loc.first]->map.path();
    check(t.dtype == dtype_of_v<T>, "safetensors", path, ": tensor '", name, "': expected dtype ",
          dtype_name(dtype_of_v<T>), ", got ", dtype_name(t.dtype));
    check(t.shape.size() == Ext::kRank, "safetensors", path, ": tensor '", name,
          "': expected rank ", Ext::kRank, ", got rank ", t.shape.size(), " ",
          shape_string(t.shape));
    std::array<std::size_t, Ext::kRank> all{};
    std::copy(t.shape.begin(), t.shape.end(), all.begin());
    check(Ext::matches(all), "safetensors", path, ": tensor '", name, "': expected shape ",
          static_shape_string<Ext>(), ", got ", shape_string(t.shape));
    check(reinterpret_cast<std::uintptr_t>(t.data) % alignof(T) == 0, "safetensors", path,
          ": tensor '", name, "': data at file offset ",
          files_[loc.first]->header.data_start + t.begin, " is not aligned to ", alignof(T),
          " bytes for ", dtype_name(t.dtype));
    return TensorView<const T, Ext>(reinterpret_cast<const T*>(t.data), Ext::from_all(all));
  }

  // An FP8 weight and its `<name>_scale_inv`, with the scale shape checked against the block size.
  Fp8Weight fp8_weight(std::string_view name, std::size_t block = 128) const {
    const auto weight = view<f8_e4m3, DExtents<2>>(name);
    const std::string sname = std::string(name) + "_scale_inv";
    check(contains(sname), "safetensors", file_of(name), ": tensor '", name,
          "' is F8_E4M3 but its scale tensor '", sname, "' is missing");
    const auto scale = view<float, DExtents<2>>(sname);
    const std::size_t er = (weight.rows() + block - 1) / block,
                      ec = (weight.cols() + block - 1) / block;
    check(scale.rows() == er && scale.cols() == ec, "safetensors", file_of(sname), ": tensor '",
          sname, "': expected shape [", er, ",", ec, "] for ", block, "x", block, " blocks of [",
          weight.rows(), ",", weight.cols(), "], got [", scale.rows(), ",", scale.cols(), "]");
    return Fp8Weight{weight, scale, block};
  }

  std::size_t file_count() const { return files_.size(); }

 private:
  struct File {
    MappedFile map;
    SafetensorsHeader header;
  };
  struct Less {
    using is_transparent = void;
    bool operator()(std::string_view a, std::string_view b) const { return a < b; }
  };

  std::pair<std::size_t, std::size_t> locate(std::string_view name) const {
    auto it = index_.find(name);
    if (it == index_.end()) {
      std::string where = files_.empty() ? std::string("(no file open)") : files_[0]->map.path();
      if (files_.size() > 1) where += " and " + std::to_string(files_.size() - 1) + " more shards";
      fail("safetensors", where, ": tensor '", name, "' not found");
    }
    return it->second;
  }

  std::size_t add_file(const std::string& path) {
    auto f = std::make_unique<File>();
    f->map = MappedFile(path);
    f->header = parse_safetensors(f->map.bytes(), path);
    const std::size_t fi = files_.size();
    for (std::size_t i = 0; i < f->header.tensors.size(); ++i) {
      const auto& name = f->header.tensors[i].name;
      auto [it, inserted] = index_.emplace(name, std::pair{fi, i});
      check(inserted, "safetensors", path, ": tensor '", name, "' is also stored in ",
            inserted ? path : files_[it->second.first]->map.path());
    }
    files_.push_back(std::move(f));
    return fi;
  }

  void open_index(const std::string& index_path) {
    namespace fs = std::filesystem;
    constexpr std::string_view op = "safetensors";
    const std::string text = read_text_file(index_path);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail(op, index_path, ": not valid JSON: ", e.what());
    }
    check(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), op, index_path,
          ": expected an object with a 'weight_map' object");
    const fs::path dir = fs::path(index_path).parent_path();
    std::map<std::string, std::vector<std::string>> by_file;
    for (auto& [name, file] : j["weight_map"].items()) {
      check(file.is_string(), op, index_path, ": weight_map['", name,
            "'] must be a file name, got ", file.type_name());
      const auto& fname = file.get_ref<const std::string&>();
      check(!fname.empty() && fname.find('/') == std::string::npos &&
                fname.find('\\') == std::string::npos && fname != "." && fname != "..",
            op, index_path, ": weight_map['", name, "']: '", fname, "' is not a plain file name");
      by_file[fname].push_back(name);
    }
    for (const auto& [fname, names] : by_file) {
      const std::string p = (dir / fname).string();
      add_file(p);
      for (const auto& n : names)
        check(contains(n), op, p, ": tensor '", n, "' listed in ", index_path, " is missing");
    }
  }

  std::vector<std::unique_ptr<File>> files_;
  std::map<std::string, std::pair<std::size_t, std::size_t>, Less> index_;
};

// Writes tensors to a .safetensors file: header padded with spaces to a multiple of 8, tensors
// laid out contiguously ordered by (dtype size descending, name), so every tensor is aligned to its
// element size, as the Hugging Face library writes them.
class SafetensorsWriter {
 public:
  void add(std::string name, DType dtype, std::vector<std::size_t> shape,
           std::span<const std::byte> bytes) {
    std::size_t n = dtype_size(dtype);
    for (auto d : shape) n *= d;
    check(n == bytes.size(), "safetensors_writer", "tensor '", name, "': expected ", n,
          " bytes for ", dtype_name(dtype), " ", shape_string(shape), ", got ", bytes.size());
    check(name != "__metadata__" && !names_.count(name), "safetensors_writer", "tensor '", name,
          "': duplicate or reserved name");
    names_.insert({name, entries_.size()});
    entries_.push_back({std::move(name), dtype, std::move(shape),
                        std::vector<std::byte>(bytes.begin(), bytes.end())});
  }
  template <class T, class Ext>
  void add(std::string name, TensorView<const T, Ext> v) {
    check(v.is_contiguous(), "safetensors_writer", "tensor '", name, "': view must be contiguous");
    const auto all = v.extents().all();
    add(std::move(name), dtype_of_v<T>, std::vector<std::size_t>(all.begin(), all.end()),
        std::as_bytes(std::span<const T>(v.data(), v.size())));
  }
  template <class T>
  void add(std::string name, std::vector<std::size_t> shape, std::span<const T> values) {
    add(std::move(name), dtype_of_v<std::remove_cv_t<T>>, std::move(shape), std::as_bytes(values));
  }
  void set_metadata(std::string key, std::string value) {
    metadata_[std::move(key)] = std::move(value);
  }

  // The file's bytes.
  std::vector<std::byte> serialize() const {
    std::vector<const Entry*> order;
    for (const auto& e : entries_) order.push_back(&e);
    std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
      const auto sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
      return sa != sb ? sa > sb : a->name < b->name;
    });
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    if (!metadata_.empty()) h["__metadata__"] = metadata_;
    std::size_t off = 0;
    for (const Entry* e : order) {
      h[e->name] = {{"dtype", std::string(dtype_name(e->dtype))},
                    {"shape", e->shape},
                    {"data_offsets", {off, off + e->bytes.size()}}};
      off += e->bytes.size();
    }
    std::string hs = h.dump();
    while (hs.size() % 8) hs += ' ';
    std::vector<std::byte> out(8 + hs.size() + off);
    std::uint64_t n = hs.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<std::byte>((n >> (8 * i)) & 0xff);
    std::memcpy(out.data() + 8, hs.data(), hs.size());
    std::size_t pos = 8 + hs.size();
    for (const Entry* e : order) {
      if (!e->bytes.empty()) std::memcpy(out.data() + pos, e->bytes.data(), e->bytes.size());
      pos += e->bytes.size();
    }
    return out;
  }

  void write(const std::string& path) const { write_file(path, serialize()); }

  static void write_file(const std::string& path, std::span<const std::byte> bytes) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    check(f != nullptr, "safetensors_writer", path, ": cannot open for writing");
    const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    const bool closed = std::fclose(f) == 0;
    check(ok && closed, "safetensors_writer", path, ": write failed");
  }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::size_t> shape;
    std::vector<std::byte> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::size_t> names_;
  std::map<std::string, std::string> metadata_;
};

// A tensor write_safetensors_streamed will write: its name, dtype and shape.
struct TensorDecl {
  std::string name;
  DType dtype = DType::f32;
  std::vector<std::size_t> shape;
  std::size_t nbytes() const {
    std::size_t n = dtype_size(dtype);
    for (auto d : shape) n *= d;
    return n;
  }
};

// Writes a safetensors file one tensor at a time, for files larger than memory: the header from
// `decls` (in their order, offsets consecutive), then for each tensor i, fill(i, bytes) writes its
// nbytes() bytes into a buffer that is appended to the file. Memory use is the largest tensor.
template <class Fill>
void write_safetensors_streamed(const std::string& path, const std::vector<TensorDecl>& decls,
                                Fill&& fill) {
  const char* op = "safetensors_writer";
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  std::size_t off = 0, largest = 0;
  for (const auto& d : decls) {
    check(d.name != "__metadata__" && !h.contains(d.name), op, "tensor '", d.name,
          "': duplicate or reserved name");
    h[d.name] = {{"dtype", std::string(dtype_name(d.dtype))},
                 {"shape", d.shape},
                 {"data_offsets", {off, off + d.nbytes()}}};
    off += d.nbytes();
    largest = std::max(largest, d.nbytes());
  }
  std::string hs = h.dump();
  while (hs.size() % 8) hs += ' ';
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  check(f != nullptr, op, path, ": cannot open for writing");
  std::byte len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::byte>((hs.size() >> (8 * i)) & 0xff);
  bool ok = std::fwrite(len, 1, 8, f.get()) == 8 &&
            std::fwrite(hs.data(), 1, hs.size(), f.get()) == hs.size();
  std::vector<std::byte> buf(largest);
  for (std::size_t i = 0; i < decls.size() && ok; ++i) {
    const std::size_t n = decls[i].nbytes();
    fill(i, std::span<std::byte>(buf.data(), n));
    ok = std::fwrite(buf.data(), 1, n, f.get()) == n;
  }
  ok = std::fclose(f.release()) == 0 && ok;
  check(ok, op, path, ": write failed");
}

}  // namespace tmoe::io
