// tmoe/quant/formats.hpp: quantized weight formats: block structs, format tags, matrix views and
// the per-format traits table (block size, bytes per block, scalar row dequantization).
//
// Block formats are byte-identical to GGUF / ggml, so a GGUF tensor's bytes are used in place:
//   Q8_0 (32 / 34 B):  f16 d, int8 qs[32];                     w = d * q
//   Q4_0 (32 / 18 B):  f16 d, u8 qs[16];  element j < 16 is the low nibble of qs[j], element
//                      j >= 16 the high nibble of qs[j - 16];   w = d * (q - 8)
//   Q4_K (256 / 144 B): f16 d, f16 dmin, u8 scales[12] (8 x 6-bit scale sc and 6-bit min m, packed
//                      as below), u8 qs[128]: 64-element chunk c uses qs[32c .. 32c+31], its
//                      elements 0..31 the low nibbles, 32..63 the high ones; sub-block s =
//                      element/32: w = d * sc[s] * q - dmin * m[s] packing: s < 4: sc = scales[s] &
//                      63, m = scales[s+4] & 63; s >= 4: sc = (scales[s+4] & 15) | (scales[s-4] >>
//                      6) << 4,
//                              m  = (scales[s+4] >> 4) | (scales[s]   >> 6) << 4
//   Q6_K (256 / 210 B): u8 ql[128], u8 qh[64], int8 scales[16], f16 d. Half h (128 elements) uses
//                      ql[64h..], qh[32h..]; for l < 32 its elements l, l+32, l+64, l+96 are
//                      (ql[l] & 15, ql[l+32] & 15, ql[l] >> 4, ql[l+32] >> 4) | ((qh[l] >> 2g) & 3)
//                      << 4 for g = 0..3; w = d * scales[element / 16] * (q - 32)
//   NF4  (64 / 36 B):  float absmax, u8 qs[32]; element j < 32 is the low nibble of qs[j], j >= 32
//                      the high nibble of qs[j - 32]; w = absmax * kNf4Codebook[q]. The code book
//                      is bitsandbytes' (the 16 quantiles of N(0,1) normalized to [-1, 1] with an
//                      exact zero). bitsandbytes itself packs element 2i in the HIGH nibble of byte
//                      i and element 2i+1 in the low one, and keeps absmax in a separate float
//                      array (its "blocksize" 64); a bitsandbytes tensor is therefore repacked by
//                      nf4_from_bitsandbytes() (quantize.hpp), not used in place. The split order
//                      used here lets the SIMD kernels decode 8 consecutive elements per load.
//   Int8Row:           int8 (rows, cols), float scale per row (symmetric): w = scale[r] * q
//   Fp8Block:          f8_e4m3 (rows, cols) with float weight_scale_inv (ceil(rows/128),
//                      ceil(cols/128)) exactly as DeepSeek-R1 stores it: w = float(q) *
//                      scale_inv[r / 128][c / 128] (a multiplier despite the name; edge blocks
//                      partial, indexed by floor division).
//
// Activations of the integer formats are quantized per 32 to BlockQ8Act (float d, two 16-element
// sums, int8 qs[32]); the sums let Q4_0 / Q4_K / Q6_K subtract their offsets once per block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "tmoe/core/dtype.hpp"
#include "tmoe/core/error.hpp"

namespace tmoe::quant {

struct BlockQ8_0 {
  f16 d;
  std::int8_t qs[32];
};
struct BlockQ4_0 {
  f16 d;
  std::uint8_t qs[16];
};
struct BlockQ4_K {
  f16 d;
  f16 dmin;
  std::uint8_t scales[12];
  std::uint8_t qs[128];
};
struct BlockQ6_K {
  std::uint8_t ql[128];
  std::uint8_t qh[64];
  std::int8_t scales[16];
  f16 d;
};
struct BlockNF4 {
  float absmax;
  std::uint8_t qs[32];
};
// Activation block: x ~= d * qs, qs = round_half_even(x / d), d = max|x| / 127; sum[h] = sum of
// qs[16h .. 16h+15].
struct BlockQ8Act {
  float d;
  std::int16_t sum[2];
  std::int8_t qs[32];
};

static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block must match GGUF (34 bytes)");
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block must match GGUF (18 bytes)");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block must match GGUF (144 bytes)");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block must match GGUF (210 bytes)");
static_assert(sizeof(BlockNF4) == 36, "NF4 block is 4 + 32 bytes");
static_assert(sizeof(BlockQ8Act) == 40, "activation block is 4 + 4 + 32 bytes");

// bitsandbytes' NF4 code book (ascending; index 7 is exactly 0).
inline constexpr float kNf4Codebook[16] = {-1.0f,
                                           -0.6961928009986877f,
                                           -0.5250730514526367f,
                                           -0.39491748809814453f,
                                           -0.28444138169288635f,
                                           -0.18477343022823334f,
                                           -0.09105003625154495f,
                                           0.0f,
                                           0.07958029955625534f,
                                           0.16093020141124725f,
                                           0.24611230194568634f,
                                           0.33791524171829224f,
                                           0.44070982933044434f,
                                           0.5626170039176941f,
                                           0.7229568362236023f,
                                           1.0f};

// Format tags. Block: the stored unit; kBlockSize: elements per block along a row.
enum class QuantType : std::uint8_t { q8_0, q4_0, q4_k, q6_k, nf4, int8_row, fp8_block };

struct Q8_0 {
  using Block = BlockQ8_0;
  static constexpr QuantType kType = QuantType::q8_0;
  static constexpr std::size_t kBlockSize = 32;
  static constexpr std::string_view kName = "Q8_0";
};
struct Q4_0 {
  using Block = BlockQ4_0;
  static constexpr QuantType kType = QuantType::q4_0;
  static constexpr std::size_t kBlockSize = 32;
  static constexpr std::string_view kName = "Q4_0";
};
struct Q4_K {
  using Block = BlockQ4_K;
  static constexpr QuantType kType = QuantType::q4_k;
  static constexpr std::size_t kBlockSize = 256;
  static constexpr std::string_view kName = "Q4_K";
};
struct Q6_K {
  using Block = BlockQ6_K;
  static constexpr QuantType kType = QuantType::q6_k;
  static constexpr std::size_t kBlockSize = 256;
  static constexpr std::string_view kName = "Q6_K";
};
struct NF4 {
  using Block = BlockNF4;
  static constexpr QuantType kType = QuantType::nf4;
  static constexpr std::size_t kBlockSize = 64;
  static constexpr std::string_view kName = "NF4";
};
struct Int8Row {
  using Block = std::int8_t;
  static constexpr QuantType kType = QuantType::int8_row;
  static constexpr std::size_t kBlockSize = 1;
  static constexpr std::string_view kName = "I8_ROW";
};
struct Fp8Block {
  using Block = f8_e4m3;
  static constexpr QuantType kType = QuantType::fp8_block;
  static constexpr std::size_t kBlockSize = 1;
  static constexpr std::size_t kScaleBlock = 128;  // square scale tile
  static constexpr std::string_view kName = "FP8_BLOCK";
};

template <class F>
concept QuantFormat = std::is_same_v<F, Q8_0> || std::is_same_v<F, Q4_0> ||
    std::is_same_v<F, Q4_K> || std::is_same_v<F, Q6_K> || std::is_same_v<F, NF4> ||
    std::is_same_v<F, Int8Row> || std::is_same_v<F, Fp8Block>;

// True when the CPU kernels take Q8 activations (integer dot products); false: float activations.
template <class F>
inline constexpr bool kUsesQ8Act = !std::is_same_v<F, NF4> && !std::is_same_v<F, Fp8Block>;

// The run-time traits table (file loaders map a GGUF / safetensors type to a QuantType).
struct QuantTypeInfo {
  std::string_view name;
  std::size_t block_size;   // elements per block along a row (1: per-element storage)
  std::size_t block_bytes;  // bytes per block, scales excluded for Int8Row / Fp8Block
  bool q8_activations;      // the CPU kernels take Q8 activation blocks (else float)
};

template <class F>
constexpr QuantTypeInfo quant_type_info() {
  return {F::kName, F::kBlockSize, sizeof(typename F::Block), kUsesQ8Act<F>};
}

constexpr QuantTypeInfo quant_type_info(QuantType t) {
  switch (t) {
    case QuantType::q8_0:
      return quant_type_info<Q8_0>();
    case QuantType::q4_0:
      return quant_type_info<Q4_0>();
    case QuantType::q4_k:
      return quant_type_info<Q4_K>();
    case QuantType::q6_k:
      return quant_type_info<Q6_K>();
    case QuantType::nf4:
      return quant_type_info<NF4>();
    case QuantType::int8_row:
      return quant_type_info<Int8Row>();
    case QuantType::fp8_block:
      return quant_type_info<Fp8Block>();
  }
  return {"?", 0, 0, false};
}

// A non-owning view of a quantized (rows, cols) matrix, rows in [out, in] order like MatrixView.
//   blocks:     row r starts at blocks + r * row_stride (row_stride in Blocks; for Int8Row and
//               Fp8Block a Block is one element).
//   scales:     Int8Row: (rows) floats; Fp8Block: (ceil(rows/128), scale_stride) floats,
//               scale_stride >= ceil(cols/128); other formats: unused (nullptr).
//   packed:     optional (Q4_0, Q8_0, Q4_K, Q6_K: kRepackX8<F>): the same weights again, 8 rows
//               interleaved (RepackedX8<F> in X8Order, below) for the decode GEMV; covers rows
//               [0, 8 * (rows / 8)), the tail rows are read from `blocks`. nullptr: the kernels
//               read `blocks` only. Whoever sets it owns the copy (quant::QuantMatrix::repack,
//               models::WeightLoader).
//   nan_free:   Fp8Block only: the weights are known to hold no NaN code (0x7f / 0xff), checked
//               once (quant::fp8_find_nan: QuantMatrix::repack, quantize). The CPU GEMV then
//               leaves out its per-load NaN test (~10% of its work, docs/quantization.md);
//               unchecked views keep it, so NaN weights give NaN outputs as in the reference.
template <class F>
struct QuantMatrixView {
  using Block = typename F::Block;
  const Block* blocks = nullptr;
  std::size_t rows = 0, cols = 0;
  std::size_t row_stride = 0;
  const float* scales = nullptr;
  std::size_t scale_stride = 0;
  const void* packed = nullptr;
  bool nan_free = false;

  const Block* row(std::size_t r) const { return blocks + r * row_stride; }
  std::size_t blocks_per_row() const { return cols / F::kBlockSize; }
  // Bytes a GEMV reads: quantized weights plus scales.
  std::size_t weight_bytes() const {
    std::size_t b = rows * blocks_per_row() * sizeof(Block);
    if constexpr (std::is_same_v<F, Int8Row>) b += rows * sizeof(float);
    if constexpr (std::is_same_v<F, Fp8Block>)
      b += ((rows + 127) / 128) * ((cols + 127) / 128) * sizeof(float);
    return b;
  }
  // Throws unless the view is well formed (op names the caller).
  void validate(std::string_view op) const {
    check(cols % F::kBlockSize == 0, op, F::kName, " weight has ", cols,
          " columns, expected a multiple of the block size ", F::kBlockSize);
    check(row_stride >= blocks_per_row(), op, F::kName, " row stride ", row_stride,
          " is smaller than the ", blocks_per_row(), " blocks of a row");
    check(blocks != nullptr || rows * cols == 0, op, F::kName, " weight has no data");
    if constexpr (std::is_same_v<F, Int8Row>)
      check(scales != nullptr || rows == 0, op, "I8_ROW weight has no per-row scales");
    if constexpr (std::is_same_v<F, Fp8Block>) {
      check(scales != nullptr || rows == 0, op, "FP8_BLOCK weight has no weight_scale_inv");
      check(scale_stride >= (cols + 127) / 128, op, "weight_scale_inv row stride ", scale_stride,
            " is smaller than ceil(", cols, " / 128) = ", (cols + 127) / 128);
    }
  }
};

// Whether w holds an FP8 NaN code (0x7f or 0xff); if so, (row, col) of the first one. One pass
// over the weights, 8 bytes at a time.
inline bool fp8_find_nan(const QuantMatrixView<Fp8Block>& w, std::size_t& row, std::size_t& col) {
  constexpr std::uint64_t kLow7 = 0x7f7f7f7f7f7f7f7full, kHigh = 0x8080808080808080ull;
  for (std::size_t r = 0; r < w.rows; ++r) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(w.row(r));
    std::size_t c = 0;
    for (; c + 8 <= w.cols; c += 8) {
      std::uint64_t v;
      std::memcpy(&v, p + c, 8);
      // Per byte: low 7 bits all set <=> (b & 0x7f) + 1 carries into bit 7.
      if (((v & kLow7) + 0x0101010101010101ull) & kHigh) break;
    }
    for (; c < w.cols; ++c)
      if ((p[c] & 0x7f) == 0x7f) {
        row = r;
        col = c;
        return true;
      }
  }
  return false;
}

// Q4_K's 6-bit scale and min of sub-block s (0..7).
TMOE_INLINE void q4k_scale_min(const std::uint8_t* sc, int s, int& scale, int& min) {
  if (s < 4) {
    scale = sc[s] & 63;
    min = sc[s + 4] & 63;
  } else {
    scale = (sc[s + 4] & 15) | ((sc[s - 4] >> 6) << 4);
    min = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
  }
}

// ---- 8-row interleaved copies for the decode GEMV (load-time repacking) ------------------------
// Group g holds rows 8g .. 8g + 7; its block b (the same 32 columns of the 8 rows) is one
// BlockX8. Groups come in units of U = kX8Unit<F> consecutive groups (Q4_0, Q8_0: 4; Q4_K,
// Q6_K: 2) whose blocks are interleaved block by block (X8Order below), so the decode GEMV's pass
// over a unit's 32 rows reads one contiguous stream instead of U streams (docs/performance.md, "One
// stream per decode pass"); the groups % U groups after the last whole unit keep their blocks
// contiguous.
//   d[r]: row r's f16 scale (one F16C conversion gives the 8 scales);
//   qs: chunks of 32 bytes, chunk k holds bytes 4k .. 4k + 3 of row r's qs at bytes 4r .. 4r + 3,
//       so one 256-bit load holds 4 bytes of each of the 8 rows and an integer dot product with a
//       broadcast 4-byte activation group gives the 8 rows' partial sums in the 8 int32 lanes.
// The bytes are those of the 8 GGUF blocks, reordered: the copy is as large as the rows it covers.
struct BlockQ4_0x8 {
  f16 d[8];
  std::uint8_t qs[8 * 16];
};
struct BlockQ8_0x8 {
  f16 d[8];
  std::int8_t qs[8 * 32];
};
static_assert(sizeof(BlockQ4_0x8) == 8 * sizeof(BlockQ4_0), "Q4_0 x8 block: 8 blocks' bytes");
static_assert(sizeof(BlockQ8_0x8) == 8 * sizeof(BlockQ8_0), "Q8_0 x8 block: 8 blocks' bytes");

// Q4_K (8 x 144 bytes): the 8 rows' d and dmin; the 6-bit scale and min of sub-block s of row r
// as sc[8s + r] = scale | (min >> 4) << 6 and the min's low 4 bits in mlo[8 (s / 2) + r] (low
// nibble for even s, high for odd s); qs as above, chunk k (0..31) holding row r's
// qs[4k .. 4k + 3], so chunks 8c .. 8c + 7 are the 64-element chunk c of the 8 rows.
struct BlockQ4_Kx8 {
  f16 d[8];
  f16 dmin[8];
  std::uint8_t sc[64];
  std::uint8_t mlo[32];
  std::uint8_t qs[8 * 128];
};
static_assert(sizeof(BlockQ4_Kx8) == 8 * sizeof(BlockQ4_K), "Q4_K x8 block: 8 blocks' bytes");

// Q6_K (8 x 210 bytes): the 8 rows' d; scale s of row r at sc[8s + r]; ql and qh in chunks of
// 32 bytes as qs above (ql chunk k: row r's ql[4k .. 4k + 3] at 4r; qh chunk k the same of qh),
// so ql chunks 16h + m and 16h + 8 + m with qh chunk 8h + m hold the 6-bit codes of elements
// 128h + 32g + 4m .. + 3 (g = 0..3) of the 8 rows, as in the stored block.
struct BlockQ6_Kx8 {
  f16 d[8];
  std::int8_t sc[128];
  std::uint8_t ql[8 * 128];
  std::uint8_t qh[8 * 64];
};
static_assert(sizeof(BlockQ6_Kx8) == 8 * sizeof(BlockQ6_K), "Q6_K x8 block: 8 blocks' bytes");

template <class F>
struct RepackedX8;
template <>
struct RepackedX8<Q4_K> {
  using Block = BlockQ4_Kx8;
};
template <>
struct RepackedX8<Q6_K> {
  using Block = BlockQ6_Kx8;
};
template <>
struct RepackedX8<Q4_0> {
  using Block = BlockQ4_0x8;
};
template <>
struct RepackedX8<Q8_0> {
  using Block = BlockQ8_0x8;
};
// The K-quant formats with a copy (256-element super-blocks, their own kernels).
template <class F>
inline constexpr bool kX8KQuant = std::is_same_v<F, Q4_K> || std::is_same_v<F, Q6_K>;
template <class F>
inline constexpr bool kRepackX8 =
    std::is_same_v<F, Q4_0> || std::is_same_v<F, Q8_0> || kX8KQuant<F>;

// Groups per interleaved unit of the copy: 4 for Q4_0 / Q8_0 (a decode pass takes a unit); 2 for
// Q4_K / Q6_K (their 16-row kernels take a pair: one stream per pass).
template <class F>
inline constexpr std::size_t kX8Unit = kX8KQuant<F> ? 2 : 4;

// Where the copy keeps each block: `groups` 8-row groups of `nb` blocks in units of `unit`
// groups. Group g's block b is at first(g) + b * block_stride(g); groups g and g + 1 of one unit
// (or both after the last whole unit) are group_stride(g) blocks apart:
//   g in a whole unit:  first = (g - g % unit) * nb + g % unit, block stride unit, group stride 1
//   g after them:       first = g * nb,                         block stride 1,    group stride nb
// (With units of one group, unit == 1, every group is stored as after the last whole unit.) A
// unit's first group g starts at block g * nb as in the plain group order, so row slices and
// thread ranges can cut the copy at units.
struct X8Order {
  std::size_t nb, groups, unit;
  std::size_t whole() const { return groups / unit * unit; }
  bool in_unit(std::size_t g) const { return g < whole(); }
  std::size_t first(std::size_t g) const {
    return in_unit(g) ? (g - g % unit) * nb + g % unit : g * nb;
  }
  std::size_t block_stride(std::size_t g) const { return in_unit(g) ? unit : 1; }
  std::size_t group_stride(std::size_t g) const { return in_unit(g) && unit > 1 ? 1 : nb; }
  std::size_t index(std::size_t g, std::size_t b) const { return first(g) + b * block_stride(g); }
};
template <class F>
X8Order x8_order(const QuantMatrixView<F>& w) {
  return {w.blocks_per_row(), w.rows / 8, kX8Unit<F>};
}

// Whether rows [begin, begin + count) of a matrix of `rows` rows with an interleaved copy in
// units of `unit` groups can view the same copy as their own: the slice's units must be the
// matrix's (begin at a unit's first row) and the slice's groups after its last whole unit must
// be the matrix's groups after its last whole unit (or none).
inline bool x8_slice_keeps_copy(std::size_t unit, std::size_t rows, std::size_t begin,
                                std::size_t count) {
  if (begin % (8 * unit) != 0) return false;
  const X8Order whole{1, rows / 8, unit}, part{1, count / 8, unit};
  return part.groups == part.whole() || begin / 8 + part.whole() == whole.whole();
}

// Bytes of the interleaved copy of w (0 for formats without one).
template <class F>
std::size_t repacked_x8_bytes(const QuantMatrixView<F>& w) {
  if constexpr (kRepackX8<F>)
    return (w.rows / 8) * w.blocks_per_row() * sizeof(typename RepackedX8<F>::Block);
  else
    return 0;
}

// Writes the interleaved copy of w's first 8 * (rows / 8) rows to out (repacked_x8_bytes(w)).
template <class F>
requires kRepackX8<F>
void repack_x8(const QuantMatrixView<F>& w, typename RepackedX8<F>::Block* out) {
  const std::size_t nb = w.blocks_per_row();
  const X8Order order = x8_order(w);
  for (std::size_t g = 0; g < w.rows / 8; ++g)
    for (std::size_t b = 0; b < nb; ++b) {
      auto& o = out[order.index(g, b)];
      for (std::size_t r = 0; r < 8; ++r) {
        const auto& blk = w.row(8 * g + r)[b];
        o.d[r] = blk.d;
        if constexpr (std::is_same_v<F, Q6_K>) {
          for (std::size_t k = 0; k < 32; ++k)
            std::memcpy(o.ql + 32 * k + 4 * r, blk.ql + 4 * k, 4);
          for (std::size_t k = 0; k < 16; ++k)
            std::memcpy(o.qh + 32 * k + 4 * r, blk.qh + 4 * k, 4);
          for (int s = 0; s < 16; ++s) o.sc[8 * s + r] = blk.scales[s];
        } else {
          constexpr std::size_t kRowBytes = sizeof(typename F::Block{}.qs);
          for (std::size_t k = 0; k < kRowBytes / 4; ++k)
            std::memcpy(o.qs + 32 * k + 4 * r, blk.qs + 4 * k, 4);
        }
        if constexpr (std::is_same_v<F, Q4_K>) {
          o.dmin[r] = blk.dmin;
          for (int sb = 0; sb < 8; ++sb) {
            int sc, m;
            q4k_scale_min(blk.scales, sb, sc, m);
            o.sc[8 * sb + r] = static_cast<std::uint8_t>(sc | (m >> 4) << 6);
            std::uint8_t& lo = o.mlo[8 * (sb / 2) + r];
            lo = static_cast<std::uint8_t>(sb % 2 ? (lo & 15) | (m & 15) << 4 : m & 15);
          }
        }
      }
    }
}

// Row r (0..7) of an interleaved block as the stored block it came from (the exact inverse of
// repack_x8): lets kernels that read stored blocks (the prefill GEMM's dequantization) read the
// copy instead, so that after loading only the copy's pages are touched.
template <class F>
requires kRepackX8<F>
typename F::Block unpack_x8(const typename RepackedX8<F>::Block& x, std::size_t r) {
  using Block = typename F::Block;
  Block b;
  b.d = x.d[r];
  if constexpr (std::is_same_v<F, Q6_K>) {
    for (std::size_t k = 0; k < 32; ++k) std::memcpy(b.ql + 4 * k, x.ql + 32 * k + 4 * r, 4);
    for (std::size_t k = 0; k < 16; ++k) std::memcpy(b.qh + 4 * k, x.qh + 32 * k + 4 * r, 4);
    for (int s = 0; s < 16; ++s) b.scales[s] = x.sc[8 * s + r];
  } else {
    constexpr std::size_t kRowBytes = sizeof(Block{}.qs);
    for (std::size_t k = 0; k < kRowBytes / 4; ++k)
      std::memcpy(b.qs + 4 * k, x.qs + 32 * k + 4 * r, 4);
  }
  if constexpr (std::is_same_v<F, Q4_K>) {
    b.dmin = x.dmin[r];
    int sc[8], m[8];
    for (int s = 0; s < 8; ++s) {
      const int v = x.sc[8 * s + r], lo = x.mlo[8 * (s / 2) + r];
      sc[s] = v & 63;
      m[s] = (s % 2 ? lo >> 4 : lo & 15) | (v >> 6) << 4;
    }
    // q4k_scale_min's layout: bytes 0-3 scale s | (scale s+4 >> 4) << 6, bytes 4-7 min s |
    // (min s+4 >> 4) << 6, bytes 8-11 (scale s+4 & 15) | (min s+4 & 15) << 4.
    for (int s = 0; s < 4; ++s) {
      b.scales[s] = static_cast<std::uint8_t>(sc[s] | (sc[s + 4] >> 4) << 6);
      b.scales[s + 4] = static_cast<std::uint8_t>(m[s] | (m[s + 4] >> 4) << 6);
      b.scales[s + 8] = static_cast<std::uint8_t>((sc[s + 4] & 15) | (m[s + 4] & 15) << 4);
    }
  }
  return b;
}

// Per-format traits: the scalar definition of each format (ground truth for every kernel).
template <class F>
struct QuantTraits;

template <>
struct QuantTraits<Q8_0> {
  static constexpr std::size_t kBlockSize = 32, kBlockBytes = sizeof(BlockQ8_0);
  static void dequantize_block(const BlockQ8_0& b, float* y) {
    const float d = b.d.to_float();
    for (int j = 0; j < 32; ++j) y[j] = d * b.qs[j];
  }
};
template <>
struct QuantTraits<Q4_0> {
  static constexpr std::size_t kBlockSize = 32, kBlockBytes = sizeof(BlockQ4_0);
  static void dequantize_block(const BlockQ4_0& b, float* y) {
    const float d = b.d.to_float();
    for (int j = 0; j < 16; ++j) {
      y[j] = d * ((b.qs[j] & 15) - 8);
      y[j + 16] = d * ((b.qs[j] >> 4) - 8);
    }
  }
};
template <>
struct QuantTraits<Q4_K> {
  static constexpr std::size_t kBlockSize = 256, kBlockBytes = sizeof(BlockQ4_K);
  static void dequantize_block(const BlockQ4_K& b, float* y) {
    const float d = b.d.to_float(), dmin = b.dmin.to_float();
    for (int c = 0; c < 4; ++c) {
      int s0, m0, s1, m1;
      q4k_scale_min(b.scales, 2 * c, s0, m0);
      q4k_scale_min(b.scales, 2 * c + 1, s1, m1);
      const float d0 = d * s0, n0 = dmin * m0, d1 = d * s1, n1 = dmin * m1;
      for (int l = 0; l < 32; ++l) {
        y[64 * c + l] = d0 * (b.qs[32 * c + l] & 15) - n0;
        y[64 * c + 32 + l] = d1 * (b.qs[32 * c + l] >> 4) - n1;
      }
    }
  }
};
template <>
struct QuantTraits<Q6_K> {
  static constexpr std::size_t kBlockSize = 256, kBlockBytes = sizeof(BlockQ6_K);
  // The 6-bit code (0..63) of element e.
  static int code(const BlockQ6_K& b, int e) {
    const int h = e / 128, g = (e % 128) / 32, l = e % 32;
    const std::uint8_t lo = b.ql[64 * h + l + 32 * (g & 1)];
    const int low = g < 2 ? (lo & 15) : (lo >> 4);
    return low | (((b.qh[32 * h + l] >> (2 * g)) & 3) << 4);
  }
  static void dequantize_block(const BlockQ6_K& b, float* y) {
    const float d = b.d.to_float();
    for (int e = 0; e < 256; ++e) y[e] = d * b.scales[e / 16] * (code(b, e) - 32);
  }
};
template <>
struct QuantTraits<NF4> {
  static constexpr std::size_t kBlockSize = 64, kBlockBytes = sizeof(BlockNF4);
  static void dequantize_block(const BlockNF4& b, float* y) {
    for (int j = 0; j < 32; ++j) {
      y[j] = b.absmax * kNf4Codebook[b.qs[j] & 15];
      y[j + 32] = b.absmax * kNf4Codebook[b.qs[j] >> 4];
    }
  }
};

// Dequantizes row r of w into y[0 .. cols) (the embedding lookup of every format).
template <class F>
void dequantize_row(const QuantMatrixView<F>& w, std::size_t r, float* y) {
  const auto* row = w.row(r);
  if constexpr (std::is_same_v<F, Int8Row>) {
    const float s = w.scales[r];
    for (std::size_t c = 0; c < w.cols; ++c) y[c] = s * row[c];
  } else if constexpr (std::is_same_v<F, Fp8Block>) {
    const float* s = w.scales + (r / 128) * w.scale_stride;
    for (std::size_t c = 0; c < w.cols; ++c) y[c] = row[c].to_float() * s[c / 128];
  } else {
    for (std::size_t b = 0; b < w.blocks_per_row(); ++b)
      QuantTraits<F>::dequantize_block(row[b], y + b * F::kBlockSize);
  }
}

}  // namespace tmoe::quant
