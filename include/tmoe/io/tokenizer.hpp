// tmoe/io/tokenizer.hpp: byte-level BPE tokenizer (GPT-2 family: DeepSeek-V3/R1, Qwen2/3, Llama 3)
// loaded from a Hugging Face tokenizer.json, or from GGUF metadata (tmoe/io/gguf.hpp).
//
// Encoding, as Hugging Face `tokenizers` does it:
//   1. added tokens (special or not) are cut out of the text first, leftmost then longest match;
//   2. every other segment goes through the pre-tokenizer: a sequence of Split rules (PCRE2
//      regexes in UTF + UCP mode, JIT-compiled), each applied to every piece of the previous rule;
//      an optional ByteLevel regex (the GPT-2 pattern) when `use_regex` is set;
//   3. each piece is BPE-merged over its raw bytes: start from one symbol per byte, repeatedly
//      merge the adjacent pair of lowest merge rank (leftmost on ties) until none applies.
// Internally every vocabulary entry is held as its raw bytes: the byte-level alphabet of the file
// (bytes 0x21-0x7e, 0xa1-0xac, 0xae-0xff map to themselves, the other 68 bytes to U+0100..U+0143
// in order) is undone at load time, so decoding is a concatenation of bytes.
// Decoding concatenates token bytes; decode() replaces invalid UTF-8 with U+FFFD, StreamDecoder
// never emits part of a UTF-8 character. Text to encode must be valid UTF-8 (else tmoe::Error).
// Normalizers: none, or NFC (alone or in a Sequence), implemented in nfc:: below.
// Not supported (tmoe::Error at load): other normalizers, non-BPE models, Split behaviours other
// than Isolated/Removed; added-token lstrip/rstrip/single_word flags are ignored.
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <memory>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tmoe/config.hpp"
#include "tmoe/core/error.hpp"
#include "tmoe/io/mmap.hpp"
#include "tmoe/io/unicode_nfc_tables.hpp"

namespace tmoe::io {

using TokenId = std::int32_t;

namespace utf8 {
// Length of the valid UTF-8 sequence starting at s[i] (1..4), or 0 if invalid or truncated.
inline std::size_t valid_len(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned c = b(i);
  const std::size_t n = s.size() - i;
  if (c < 0x80) return 1;
  if (c < 0xc2) return 0;
  auto cont = [&](std::size_t k) { return k < n && (b(i + k) & 0xc0) == 0x80; };
  if (c < 0xe0) return cont(1) ? 2 : 0;
  if (c < 0xf0) {
    if (!cont(1) || !cont(2)) return 0;
    const unsigned c1 = b(i + 1);
    if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 >= 0xa0)) return 0;  // overlong, surrogate
    return 3;
  }
  if (c < 0xf5) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    const unsigned c1 = b(i + 1);
    if ((c == 0xf0 && c1 < 0x90) || (c == 0xf4 && c1 >= 0x90)) return 0;
    return 4;
  }
  return 0;
}
// Byte offset of the first invalid byte, or npos.
inline std::size_t first_invalid(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const std::size_t n = valid_len(s, i);
    if (!n) return i;
    i += n;
  }
  return std::string_view::npos;
}
inline void append(std::string& out, std::uint32_t cp) {
  if (cp < 0x80)
    out += static_cast<char>(cp);
  else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}
inline std::uint32_t decode_at(std::string_view s, std::size_t i, std::size_t n) {
  const auto b = [&](std::size_t k) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(s[i + k]));
  };
  if (n == 1) return b(0);
  if (n == 2) return ((b(0) & 0x1f) << 6) | (b(1) & 0x3f);
  if (n == 3) return ((b(0) & 0x0f) << 12) | ((b(1) & 0x3f) << 6) | (b(2) & 0x3f);
  return ((b(0) & 0x07) << 18) | ((b(1) & 0x3f) << 12) | ((b(2) & 0x3f) << 6) | (b(3) & 0x3f);
}
// s with every maximal invalid sequence replaced by U+FFFD (as Rust's from_utf8_lossy).
inline std::string lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = valid_len(s, i);
    if (n) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\xef\xbf\xbd";
      // skip the longest prefix of a valid sequence (the "maximal subpart"), at least one byte
      std::size_t k = 1;
      const unsigned c = static_cast<unsigned char>(s[i]);
      const std::size_t want = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 1;
      while (k < want && i + k < s.size() &&
             (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80 &&
             !(k == 1 && ((c == 0xe0 && static_cast<unsigned char>(s[i + 1]) < 0xa0) ||
                          (c == 0xed && static_cast<unsigned char>(s[i + 1]) >= 0xa0) ||
                          (c == 0xf0 && static_cast<unsigned char>(s[i + 1]) < 0x90) ||
                          (c == 0xf4 && static_cast<unsigned char>(s[i + 1]) >= 0x90) || c > 0xf4)))
        ++k;
      i += k;
    }
  }
  return out;
}
}  // namespace utf8

// Unicode Normalization Form C (canonical decomposition, canonical ordering, canonical
// composition; UAX #15), over the tables in unicode_nfc_tables.hpp; Hangul syllables are
// (de)composed algorithmically. Input must be valid UTF-8. ASCII-only text is returned as is.
namespace nfc {
inline std::uint8_t ccc(std::uint32_t cp) {
  if (cp < 0x300) return 0;
  const auto* t = nfc_tables::kCcc;
  const auto n = std::size(nfc_tables::kCcc);
  const auto* it =
      std::upper_bound(t, t + n, cp, [](std::uint32_t c, const auto& r) { return c < r.first; });
  if (it == t) return 0;
  --it;
  return cp <= it->last ? it->ccc : 0;
}
inline constexpr std::uint32_t kSBase = 0xac00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11a7;
inline constexpr std::uint32_t kLCount = 19, kVCount = 21, kTCount = 28,
                               kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;
inline void decompose(std::uint32_t cp, std::vector<std::uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const std::uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xc0) {
    const auto* t = nfc_tables::kDecomp;
    const auto n = std::size(nfc_tables::kDecomp);
    const auto* it =
        std::lower_bound(t, t + n, cp, [](const auto& d, std::uint32_t c) { return d.cp < c; });
    if (it != t + n && it->cp == cp) {
      out.insert(out.end(), nfc_tables::kDecompPool + it->offset,
                 nfc_tables::kDecompPool + it->offset + it->len);
      return;
    }
  }
  out.push_back(cp);
}
inline std::optional<std::uint32_t> compose(std::uint32_t a, std::uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const std::uint64_t key = (static_cast<std::uint64_t>(a) << 21) | b;
  const auto* t = nfc_tables::kComp;
  const auto n = std::size(nfc_tables::kComp);
  const auto* it =
      std::lower_bound(t, t + n, key, [](const auto& c, std::uint64_t k) { return c.key < k; });
  if (it != t + n && it->key == key) return it->cp;
  return std::nullopt;
}
inline std::string normalize(std::string_view s) {
  bool ascii = true;
  for (char c : s) ascii &= static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(s);
  std::vector<std::uint32_t> d;
  d.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8::valid_len(s, i);
    TMOE_ASSERT(n != 0);
    decompose(utf8::decode_at(s, i, n), d);
    i += n;
  }
  // canonical ordering: stable sort of every run of non-starters by combining class
  for (std::size_t i = 0; i < d.size();) {
    if (ccc(d[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < d.size() && ccc(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + static_cast<std::ptrdiff_t>(i),
                     d.begin() + static_cast<std::ptrdiff_t>(j),
                     [](std::uint32_t a, std::uint32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  // canonical composition
  std::vector<std::uint32_t> out;
  out.reserve(d.size());
  std::ptrdiff_t starter = -1;
  int last_cc = -1;  // class of the last character kept after the starter; -1: none
  for (std::uint32_t c : d) {
    const int cc = ccc(c);
    if (starter >= 0 && (last_cc == -1 || (cc != 0 && last_cc < cc))) {
      if (auto m = compose(out[static_cast<std::size_t>(starter)], c)) {
        out[static_cast<std::size_t>(starter)] = *m;
        continue;
      }
    }
    if (cc == 0) {
      starter = static_cast<std::ptrdiff_t>(out.size());
      last_cc = -1;
    } else {
      last_cc = cc;
    }
    out.push_back(c);
  }
  std::string r;
  r.reserve(s.size());
  for (std::uint32_t c : out) utf8::append(r, c);
  return r;
}
}  // namespace nfc

// The GPT-2 byte-level alphabet: byte -> code point, and back.
struct ByteLevelMap {
  std::array<std::uint32_t, 256> to_cp{};
  std::unordered_map<std::uint32_t, std::uint8_t> to_byte;
  ByteLevelMap() {
    std::uint32_t next = 256;
    for (std::uint32_t b = 0; b < 256; ++b) {
      const bool keep = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
      to_cp[b] = keep ? b : next++;
      to_byte[to_cp[b]] = static_cast<std::uint8_t>(b);
    }
  }
  static const ByteLevelMap& get() {
    static const ByteLevelMap m;
    return m;
  }
  // A byte-level token string -> raw bytes. Characters outside the alphabet keep their UTF-8.
  std::string decode(std::string_view s) const {
    std::string out;
    for (std::size_t i = 0; i < s.size();) {
      std::size_t n = utf8::valid_len(s, i);
      if (!n) {
        out += s[i++];
        continue;
      }
      const auto cp = utf8::decode_at(s, i, n);
      auto it = to_byte.find(cp);
      if (it != to_byte.end())
        out += static_cast<char>(it->second);
      else
        out.append(s.substr(i, n));
      i += n;
    }
    return out;
  }
  std::string encode(std::string_view bytes) const {
    std::string out;
    for (unsigned char c : bytes) utf8::append(out, to_cp[c]);
    return out;
  }
};

// A compiled PCRE2 regex (UTF + UCP, JIT when available). Matching is thread-safe.
class Regex {
 public:
  Regex(const std::string& pattern, std::string_view where) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof buf);
      fail("tokenizer", where, ": regex '", pattern, "' does not compile at offset ", off, ": ",
           reinterpret_cast<const char*>(buf));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() {
    if (code_) pcre2_code_free(code_);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  bool jit() const { return jit_; }

  // First match in s[start, end) (s already known valid UTF-8); false when none.
  bool find(std::string_view s, std::size_t start, pcre2_match_data* md, std::size_t& b,
            std::size_t& e) const {
    const int rc = jit_ ? pcre2_jit_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(),
                                          start, 0, md, nullptr)
                        : pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(),
                                      start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) {
      if (rc == PCRE2_ERROR_NOMATCH) return false;
      fail("tokenizer", "regex match failed with PCRE2 error ", rc);
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    b = ov[0];
    e = ov[1];
    return true;
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// Split patterns of known models (also used for GGUF's tokenizer.ggml.pre).
namespace patterns {
inline constexpr std::string_view kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kDeepSeekV3Digits = R"(\p{N}{1,3})";
inline constexpr std::string_view kDeepSeekV3Cjk = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+";
inline constexpr std::string_view kDeepSeekV3Words =
    "[!\"#$%&'()*+,\\-./"
    ":;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
    "?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
}  // namespace patterns

struct AddedToken {
  TokenId id = 0;
  std::string content;
  bool special = false;
};

// Everything a Tokenizer is built from; filled by the tokenizer.json and GGUF loaders.
struct TokenizerSpec {
  std::string source;                                       // file, for errors
  std::vector<std::pair<std::string, TokenId>> vocab;       // byte-level strings
  std::vector<std::pair<std::string, std::string>> merges;  // byte-level strings, rank = index
  std::vector<AddedToken> added;
  struct Split {
    std::string pattern;
    bool removed = false;  // behaviour Removed (else Isolated)
  };
  std::vector<Split> splits;
  bool byte_level_regex = false;  // ByteLevel pre-tokenizer with use_regex
  bool add_prefix_space = false;  // ByteLevel add_prefix_space
  bool ignore_merges = false;
  bool nfc = false;  // NFC normalizer
};

class Tokenizer {
 public:
  Tokenizer() = default;
  explicit Tokenizer(const TokenizerSpec& spec) { build(spec); }

  // Loads tokenizer.json from a file or a model folder.
  static Tokenizer from_file(const std::string& path);
  // Parses the text of a tokenizer.json; `source` names it in errors.
  static Tokenizer from_json(std::string_view text, const std::string& source);

  std::size_t vocab_size() const { return bytes_.size(); }
  const std::string& source() const { return source_; }

  // The id of a token given by its text (added-token content, or raw bytes of a vocab token).
  std::optional<TokenId> token_id(std::string_view text) const {
    for (const auto& a : added_)
      if (a.content == text) return a.id;
    auto it = by_bytes_.find(std::string(text));
    if (it != by_bytes_.end()) return it->second;
    return std::nullopt;
  }
  // Like token_id, but a missing token is an error naming it and the tokenizer file.
  TokenId require_token(std::string_view text) const {
    auto id = token_id(text);
    if (!id) fail("tokenizer", source_, ": token '", text, "' is not in the vocabulary");
    return *id;
  }
  // The raw bytes of a token (added tokens: their content).
  const std::string& token_bytes(TokenId id) const {
    check(id >= 0 && static_cast<std::size_t>(id) < bytes_.size(), "tokenizer", source_,
          ": token id ", id, " out of range [0,", bytes_.size(), ")");
    return bytes_[id];
  }
  bool is_special(TokenId id) const {
    return id >= 0 && static_cast<std::size_t>(id) < special_.size() && special_[id];
  }

  // Token ids of `text` (valid UTF-8), no BOS/EOS added. Added tokens in the text are matched.
  std::vector<TokenId> encode(std::string_view text) const {
    std::vector<TokenId> out;
    encode_into(text, out);
    return out;
  }
  void encode_into(std::string_view text, std::vector<TokenId>& out) const {
    if (const auto bad = utf8::first_invalid(text); bad != std::string_view::npos)
      fail("tokenizer", source_, ": text is not valid UTF-8 at byte ", bad);
    Scratch s;
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t at = text.size();
      const AddedToken* hit = nullptr;
      if (!added_.empty()) {
        for (std::size_t i = pos; i < text.size(); ++i) {
          const auto& cand = added_by_first_[static_cast<unsigned char>(text[i])];
          for (std::uint32_t k : cand) {  // longest first
            const AddedToken& a = added_[k];
            if (text.compare(i, a.content.size(), a.content) == 0) {
              hit = &a;
              break;
            }
          }
          if (hit) {
            at = i;
            break;
          }
        }
      }
      if (at > pos) encode_segment(text.substr(pos, at - pos), s, out);
      if (!hit) break;
      out.push_back(hit->id);
      pos = at + hit->content.size();
    }
  }

  // Raw bytes of the tokens, concatenated (special tokens included unless skip_special).
  std::string decode_bytes(std::span<const TokenId> ids, bool skip_special = false) const {
    std::string out;
    for (TokenId id : ids)
      if (!(skip_special && is_special(id))) out += token_bytes(id);
    return out;
  }
  // Text of the tokens; invalid UTF-8 becomes U+FFFD.
  std::string decode(std::span<const TokenId> ids, bool skip_special = false) const {
    return utf8::lossy(decode_bytes(ids, skip_special));
  }

 private:
  struct Symbol {
    TokenId id;
    std::int32_t prev, next;
  };
  struct Cand {
    std::int32_t rank, left;
    TokenId a, b;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  struct Scratch {
    Scratch() : md(pcre2_match_data_create(1, nullptr)) {}
    ~Scratch() { pcre2_match_data_free(md); }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    pcre2_match_data* md;
    std::vector<std::pair<std::size_t, std::size_t>> pieces, next;
    std::vector<Symbol> sym;
    std::vector<Cand> heap;
    std::string prefixed;
  };
  struct Merge {
    std::int32_t rank;
    TokenId id;
  };
  static std::uint64_t key(TokenId a, TokenId b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
           static_cast<std::uint32_t>(b);
  }

  void encode_segment(std::string_view seg, Scratch& s, std::vector<TokenId>& out) const {
    std::string normalized;
    if (nfc_) {
      normalized = nfc::normalize(seg);
      seg = normalized;
    }
    if (add_prefix_space && !seg.empty() && seg[0] != ' ') {
      s.prefixed.assign(1, ' ');
      s.prefixed.append(seg);
      seg = s.prefixed;
    }
    s.pieces.assign(1, {0, seg.size()});
    for (const auto& rule : splits_) {
      s.next.clear();
      for (auto [pb, pe] : s.pieces) {
        const std::string_view piece = seg.substr(pb, pe - pb);
        std::size_t last = 0, start = 0, mb = 0, me = 0;
        while (start <= piece.size() && rule.re->find(piece, start, s.md, mb, me)) {
          if (me == mb) {  // empty match: step one character
            start =
                mb + std::max<std::size_t>(1, mb < piece.size() ? utf8::valid_len(piece, mb) : 1);
            continue;
          }
          if (mb > last) s.next.push_back({pb + last, pb + mb});
          if (!rule.removed) s.next.push_back({pb + mb, pb + me});
          last = start = me;
        }
        if (last < piece.size()) s.next.push_back({pb + last, pe});
      }
      std::swap(s.pieces, s.next);
    }
    for (auto [pb, pe] : s.pieces) bpe(seg.substr(pb, pe - pb), s, out);
  }

  // BPE over one piece's bytes; lowest rank first, leftmost on ties (as Hugging Face's heap).
  void bpe(std::string_view piece, Scratch& s, std::vector<TokenId>& out) const {
    if (piece.empty()) return;
    if (ignore_merges_ || piece.size() == 1) {
      if (auto it = by_bytes_.find(std::string(piece)); it != by_bytes_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    const auto n = static_cast<std::int32_t>(piece.size());
    s.sym.resize(n);
    for (std::int32_t i = 0; i < n; ++i)
      s.sym[i] = {byte_id_[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
    s.heap.clear();
    auto push = [&](std::int32_t left) {
      const std::int32_t right = s.sym[left].next;
      if (right < 0) return;
      auto it = merges_.find(key(s.sym[left].id, s.sym[right].id));
      if (it == merges_.end()) return;
      s.heap.push_back({it->second.rank, left, s.sym[left].id, s.sym[right].id});
      std::push_heap(s.heap.begin(), s.heap.end(), std::greater<>());
    };
    for (std::int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!s.heap.empty()) {
      std::pop_heap(s.heap.begin(), s.heap.end(), std::greater<>());
      const Cand c = s.heap.back();
      s.heap.pop_back();
      Symbol& l = s.sym[c.left];
      if (l.id != c.a || l.next < 0 || s.sym[l.next].id != c.b) continue;  // stale
      const std::int32_t r = l.next;
      l.id = merges_.find(key(c.a, c.b))->second.id;
      l.next = s.sym[r].next;
      if (l.next >= 0) s.sym[l.next].prev = c.left;
      s.sym[r].id = -1;
      if (l.prev >= 0) push(l.prev);
      push(c.left);
    }
    for (std::int32_t i = 0; i >= 0; i = s.sym[i].next) out.push_back(s.sym[i].id);
  }

  void build(const TokenizerSpec& spec) {
    source_ = spec.source;
    const auto& bl = ByteLevelMap::get();
    TokenId max_id = -1;
    for (const auto& [t, id] : spec.vocab) {
      check(id >= 0, "tokenizer", source_, ": token '", t, "' has negative id ", id);
      max_id = std::max(max_id, id);
    }
    for (const auto& a : spec.added) {
      check(a.id >= 0, "tokenizer", source_, ": added token '", a.content, "' has negative id ",
            a.id);
      check(!a.content.empty(), "tokenizer", source_, ": added token ", a.id, " has empty content");
      max_id = std::max(max_id, a.id);
    }
    check(max_id < (1 << 24), "tokenizer", source_, ": token id ", max_id,
          " is too large (limit 2^24)");
    bytes_.assign(static_cast<std::size_t>(max_id + 1), std::string());
    special_.assign(bytes_.size(), false);
    std::vector<bool> seen(bytes_.size(), false);
    by_bytes_.reserve(spec.vocab.size() * 2);
    for (const auto& [t, id] : spec.vocab) {
      check(!seen[id], "tokenizer", source_, ": id ", id, " is used by two tokens (one is '", t,
            "')");
      seen[id] = true;
      bytes_[id] = bl.decode(t);
      by_bytes_.emplace(bytes_[id], id);
    }
    byte_id_.fill(-1);
    for (int b = 0; b < 256; ++b) {
      auto it = by_bytes_.find(std::string(1, static_cast<char>(b)));
      check(it != by_bytes_.end(), "tokenizer", source_,
            ": byte-level vocabulary lacks the token for byte 0x", "0123456789abcdef"[b >> 4],
            "0123456789abcdef"[b & 15]);
      byte_id_[b] = it->second;
    }
    merges_.reserve(spec.merges.size() * 2);
    for (std::size_t r = 0; r < spec.merges.size(); ++r) {
      const auto& [a, b] = spec.merges[r];
      const std::string ab = bl.decode(a), bb = bl.decode(b);
      auto ia = by_bytes_.find(ab), ib = by_bytes_.find(bb), iab = by_bytes_.find(ab + bb);
      check(ia != by_bytes_.end() && ib != by_bytes_.end() && iab != by_bytes_.end(), "tokenizer",
            source_, ": merge ", r, " ('", a, "' '", b,
            "') names a token missing from the vocabulary");
      merges_.emplace(key(ia->second, ib->second),
                      Merge{static_cast<std::int32_t>(r), iab->second});
    }
    added_ = spec.added;
    for (const auto& a : added_) {
      bytes_[a.id] = a.content;
      special_[a.id] = a.special;
    }
    for (auto& v : added_by_first_) v.clear();
    for (std::size_t k = 0; k < added_.size(); ++k)
      added_by_first_[static_cast<unsigned char>(added_[k].content[0])].push_back(
          static_cast<std::uint32_t>(k));
    for (auto& v : added_by_first_)
      std::stable_sort(v.begin(), v.end(), [&](std::uint32_t x, std::uint32_t y) {
        return added_[x].content.size() > added_[y].content.size();
      });
    splits_.clear();
    for (const auto& sp : spec.splits)
      splits_.push_back({std::make_shared<Regex>(sp.pattern, source_), sp.removed});
    if (spec.byte_level_regex)
      splits_.push_back({std::make_shared<Regex>(std::string(patterns::kGpt2), source_), false});
    add_prefix_space = spec.add_prefix_space;
    ignore_merges_ = spec.ignore_merges;
    nfc_ = spec.nfc;
  }

  struct Rule {
    std::shared_ptr<const Regex> re;
    bool removed;
  };
  std::string source_;
  std::vector<std::string> bytes_;  // id -> raw bytes
  std::vector<bool> special_;
  std::unordered_map<std::string, TokenId> by_bytes_;
  std::array<TokenId, 256> byte_id_{};
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::vector<AddedToken> added_;
  std::array<std::vector<std::uint32_t>, 256> added_by_first_;  // indices into added_
  std::vector<Rule> splits_;
  bool add_prefix_space = false;
  bool ignore_merges_ = false;
  bool nfc_ = false;
};

// Incremental detokenizer: push ids one at a time, get back text that always ends at a UTF-8
// character boundary; bytes of an unfinished character wait for the next token. Bytes that can
// never start or continue a valid character come out as U+FFFD.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false)
      : tok_(&tok), skip_(skip_special) {}
  std::string push(TokenId id) {
    if (!(skip_ && tok_->is_special(id))) pending_ += tok_->token_bytes(id);
    std::string out;
    std::size_t i = 0;
    while (i < pending_.size()) {
      const std::size_t n = utf8::valid_len(pending_, i);
      if (n) {
        out.append(pending_, i, n);
        i += n;
        continue;
      }
      if (could_complete(i)) break;  // wait for more bytes
      out += "\xef\xbf\xbd";
      ++i;
    }
    pending_.erase(0, i);
    return out;
  }
  // Whatever is left (an unfinished character) as U+FFFD.
  std::string flush() {
    std::string out = pending_.empty() ? std::string() : utf8::lossy(pending_);
    pending_.clear();
    return out;
  }

 private:
  // True when pending_[i..] is a proper prefix of some valid UTF-8 sequence.
  bool could_complete(std::size_t i) const {
    const unsigned c = static_cast<unsigned char>(pending_[i]);
    const std::size_t want = c >= 0xf5 ? 0 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
    const std::size_t have = pending_.size() - i;
    if (!want || have >= want) return false;
    for (std::size_t k = 1; k < have; ++k) {
      const unsigned b = static_cast<unsigned char>(pending_[i + k]);
      if ((b & 0xc0) != 0x80) return false;
      if (k == 1 && ((c == 0xe0 && b < 0xa0) || (c == 0xed && b >= 0xa0) ||
                     (c == 0xf0 && b < 0x90) || (c == 0xf4 && b >= 0x90)))
        return false;
    }
    return true;
  }
  const Tokenizer* tok_;
  bool skip_;
  std::string pending_;
};

inline TokenizerSpec tokenizer_spec_from_json(std::string_view text, const std::string& source) {
  constexpr std::string_view op = "tokenizer";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(op, source, ": not valid JSON: ", e.what());
  }
  TokenizerSpec spec;
  spec.source = source;
  try {
    check(j.is_object(), op, source, ": expected a JSON object");
    check(j.contains("model") && j["model"].is_object(), op, source, ": missing 'model' object");
    const auto& m = j["model"];
    const std::string type = m.value("type", std::string("BPE"));
    check(type == "BPE", op, source, ": model.type '", type, "' is not supported (expected BPE)");
    check(m.contains("vocab") && m["vocab"].is_object(), op, source,
          ": model.vocab must be an object");
    for (auto& [k, v] : m["vocab"].items()) {
      check(v.is_number_integer(), op, source, ": model.vocab['", k,
            "'] must be an integer id, got ", v.dump());
      spec.vocab.emplace_back(k, v.get<TokenId>());
    }
    check(m.contains("merges") && m["merges"].is_array(), op, source,
          ": model.merges must be a list");
    std::size_t r = 0;
    for (const auto& mg : m["merges"]) {
      if (mg.is_string()) {
        const auto& s = mg.get_ref<const std::string&>();
        const auto sp = s.find(' ', 1);
        check(sp != std::string::npos && sp + 1 < s.size(), op, source, ": model.merges[", r, "] '",
              s, "' is not two tokens separated by a space");
        spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else {
        check(mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string(), op, source,
              ": model.merges[", r, "] must be \"a b\" or [a, b], got ", mg.dump());
        spec.merges.emplace_back(mg[0].get<std::string>(), mg[1].get<std::string>());
      }
      ++r;
    }
    spec.ignore_merges = m.value("ignore_merges", false);
    check(!m.contains("byte_fallback") || m["byte_fallback"].is_null() ||
              !m["byte_fallback"].get<bool>(),
          op, source, ": model.byte_fallback is not supported (byte-level BPE only)");
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const auto& a : j["added_tokens"]) {
        check(a.is_object() && a.contains("id") && a["id"].is_number_integer() &&
                  a.contains("content") && a["content"].is_string(),
              op, source,
              ": added_tokens entries need an integer 'id' and a string 'content', got ", a.dump());
        spec.added.push_back(
            {a["id"].get<TokenId>(), a["content"].get<std::string>(), a.value("special", false)});
      }
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      const auto& n = j["normalizer"];
      const std::string nt = n.value("type", std::string());
      const bool ok = nt == "NFC" || (nt == "Sequence" && n.contains("normalizers") &&
                                      n["normalizers"].is_array() &&
                                      std::all_of(n["normalizers"].begin(), n["normalizers"].end(),
                                                  [](const nlohmann::json& x) {
                                                    return x.value("type", std::string()) == "NFC";
                                                  }));
      check(ok, op, source, ": normalizer ", n.dump().substr(0, 200), " is not supported");
      spec.nfc = nt == "NFC" || (nt == "Sequence" && !n["normalizers"].empty());
    }
    auto add_pre = [&](const nlohmann::json& p) {
      const std::string pt = p.value("type", std::string());
      if (pt == "Split") {
        check(p.contains("pattern") && p["pattern"].is_object(), op, source,
              ": Split needs a pattern object");
        const auto& pat = p["pattern"];
        std::string re;
        if (pat.contains("Regex"))
          re = pat["Regex"].get<std::string>();
        else {
          check(pat.contains("String"), op, source, ": Split pattern must be Regex or String");
          const std::string lit = pat["String"].get<std::string>();
          re = "\\Q" + lit + "\\E";
        }
        const std::string beh = p.value("behavior", std::string("Isolated"));
        check(beh == "Isolated" || beh == "Removed", op, source, ": Split behavior '", beh,
              "' is not supported (Isolated, Removed)");
        check(!p.value("invert", false), op, source, ": Split with invert is not supported");
        spec.splits.push_back({re, beh == "Removed"});
      } else if (pt == "ByteLevel") {
        spec.byte_level_regex = p.value("use_regex", true);
        spec.add_prefix_space = p.value("add_prefix_space", false);
      } else {
        fail(op, source, ": pre_tokenizer type '", pt,
             "' is not supported (Sequence, Split, ByteLevel)");
      }
    };
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
      const auto& p = j["pre_tokenizer"];
      if (p.value("type", std::string()) == "Sequence") {
        check(p.contains("pretokenizers") && p["pretokenizers"].is_array(), op, source,
              ": Sequence needs 'pretokenizers'");
        for (const auto& q : p["pretokenizers"]) add_pre(q);
      } else {
        add_pre(p);
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail(op, source, ": malformed tokenizer.json: ", e.what());
  }
  return spec;
}

// The spec of tokenizer.json in a file or a model folder (GGUF export writes it out).
inline TokenizerSpec tokenizer_spec_from_file(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    file = (std::filesystem::path(path) / "tokenizer.json").string();
  return tokenizer_spec_from_json(read_text_file(file), file);
}

inline Tokenizer Tokenizer::from_json(std::string_view text, const std::string& source) {
  return Tokenizer(tokenizer_spec_from_json(text, source));
}

inline Tokenizer Tokenizer::from_file(const std::string& path) {
  return Tokenizer(tokenizer_spec_from_file(path));
}

}  // namespace tmoe::io
