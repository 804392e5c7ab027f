// Tests for tmoe/io/safetensors.hpp: round trip through the writer, typed views, sharded folders,
// FP8 weight pairing, and one clear error for each kind of damaged file.
#include <doctest/doctest.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "io_test_util.hpp"
#include "tmoe/io/safetensors.hpp"

using namespace tmoe;
using tmoe::test::check_error;
using tmoe::test::TempDir;

namespace {

std::vector<std::byte> make_file(std::string_view header, std::size_t data_bytes) {
  std::vector<std::byte> out(8 + header.size() + data_bytes, std::byte{0});
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::byte>((n >> (8 * i)) & 0xff);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

io::SafetensorsWriter sample_writer() {
  io::SafetensorsWriter w;
  std::vector<float> a(3 * 5);
  std::iota(a.begin(), a.end(), 0.f);
  w.add<float>("a", {3, 5}, a);
  std::vector<bf16> b(7);
  for (int i = 0; i < 7; ++i) b[i] = bf16::from_float(0.5f * i);
  w.add<bf16>("b", {7}, b);
  std::vector<std::int64_t> ids{1, -2, 3, 4};
  w.add<std::int64_t>("ids", {2, 2}, ids);
  std::vector<f8_e4m3> q(130 * 3);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = f8_e4m3::from_float(float(i % 17) - 8.f);
  w.add<f8_e4m3>("w.weight", {130, 3}, q);
  std::vector<float> s{2.f, 0.25f};
  w.add<float>("w.weight_scale_inv", {2, 1}, s);
  w.add<f16>("empty", {0, 4}, std::span<const f16>());
  w.set_metadata("format", "pt");
  return w;
}

}  // namespace

TEST_CASE("safetensors: writer round trip and typed views") {
  TempDir dir;
  const auto path = dir.file("m.safetensors");
  sample_writer().write(path);
  io::SafetensorsModel m(path);
  CHECK(m.size() == 6);
  CHECK(m.metadata().at("format") == "pt");
  auto a = m.view<float, DExtents<2>>("a");  // (3,5)
  REQUIRE(a.rows() == 3);
  REQUIRE(a.cols() == 5);
  CHECK(a(2, 4) == 14.f);
  auto a_static = m.view<float, Extents<3, kDynamic>>("a");
  CHECK(a_static(1, 0) == 5.f);
  auto b = m.view<bf16, DExtents<1>>("b");
  CHECK(b(6).to_float() == 3.f);
  auto ids = m.view<std::int64_t, DExtents<2>>("ids");
  CHECK(ids(0, 1) == -2);
  CHECK(m.view<f16, DExtents<2>>("empty").size() == 0);
  auto w = m.fp8_weight("w.weight");
  CHECK(w.weight.rows() == 130);
  CHECK(w.weight(129, 2).to_float() == float((129 * 3 + 2) % 17) - 8.f);
  CHECK(w.scale_inv(1, 0) == 0.25f);

  check_error([&] { (void)m.view<bf16, DExtents<2>>("a"); },
              {path, "'a'", "expected dtype BF16, got F32"});
  check_error([&] { (void)m.view<float, DExtents<3>>("a"); },
              {path, "'a'", "expected rank 3, got rank 2"});
  check_error([&] { (void)m.view<float, Extents<4, kDynamic>>("a"); },
              {path, "'a'", "expected shape [4,?], got [3,5]"});
  check_error([&] { (void)m.view<float, DExtents<2>>("nope"); }, {path, "'nope'", "not found"});
  check_error([&] { (void)m.fp8_weight("a"); }, {"'a'", "expected dtype F8_E4M3"});
}

TEST_CASE("safetensors: the streamed writer writes what it declares, one tensor at a time") {
  TempDir dir;
  const auto path = dir.file("s.safetensors");
  const std::vector<io::TensorDecl> decls = {
      {"a", DType::f32, {3, 5}}, {"b", DType::bf16, {7}}, {"e", DType::f16, {0, 4}}};
  std::vector<std::size_t> sizes;
  io::write_safetensors_streamed(path, decls, [&](std::size_t i, std::span<std::byte> out) {
    sizes.push_back(out.size());
    if (i == 0)
      for (std::size_t k = 0; k < 15; ++k) {
        const float v = float(k);
        std::memcpy(out.data() + 4 * k, &v, 4);
      }
    if (i == 1)
      for (std::size_t k = 0; k < 7; ++k) {
        const auto v = bf16::from_float(float(k) / 2).bits;
        std::memcpy(out.data() + 2 * k, &v, 2);
      }
  });
  CHECK(sizes == std::vector<std::size_t>{60, 14, 0});
  io::SafetensorsModel m(path);
  CHECK(m.size() == 3);
  CHECK(m.view<float, DExtents<2>>("a")(2, 4) == 14.f);
  CHECK(m.view<bf16, DExtents<1>>("b")(5).to_float() == 2.5f);
  CHECK(m.view<f16, DExtents<2>>("e").size() == 0);
  check_error(
      [&] {
        io::write_safetensors_streamed(path, {{"x", DType::f32, {1}}, {"x", DType::f32, {1}}},
                                       [](std::size_t, std::span<std::byte>) {});
      },
      {"'x'", "duplicate"});
  check_error(
      [&] {
        io::write_safetensors_streamed(dir.file("no/such/dir/f.safetensors"),
                                       {{"x", DType::f32, {1}}},
                                       [](std::size_t, std::span<std::byte>) {});
      },
      {"cannot open for writing"});
}

TEST_CASE("safetensors: sharded folder with index, and folder without index") {
  TempDir dir;
  io::SafetensorsWriter w1, w2;
  std::vector<float> x{1, 2, 3}, y{4, 5};
  w1.add<float>("x", {3}, x);
  w2.add<float>("y", {2}, y);
  w1.write(dir.file("model-00001-of-00002.safetensors"));
  w2.write(dir.file("model-00002-of-00002.safetensors"));
  test::write_text(
      dir.file("model.safetensors.index.json"),
      R"({"metadata": {"total_size": 20}, "weight_map": {"x": "model-00001-of-00002.safetensors",
                      "y": "model-00002-of-00002.safetensors"}})");
  io::SafetensorsModel m(dir.path().string());
  CHECK(m.file_count() == 2);
  CHECK(m.view<float, DExtents<1>>("y")(1) == 5.f);
  CHECK(m.file_of("y").ends_with("model-00002-of-00002.safetensors"));

  SUBCASE("index names a tensor that its shard lacks") {
    test::write_text(
        dir.file("model.safetensors.index.json"),
        R"({"weight_map": {"x": "model-00001-of-00002.safetensors", "z": "model-00001-of-00002.safetensors"}})");
    check_error([&] { io::SafetensorsModel bad(dir.path().string()); },
                {"model-00001-of-00002.safetensors", "'z'", "missing"});
  }
  SUBCASE("index escapes the folder") {
    test::write_text(dir.file("model.safetensors.index.json"),
                     R"({"weight_map": {"x": "../evil.safetensors"}})");
    check_error([&] { io::SafetensorsModel bad(dir.path().string()); },
                {"index.json", "not a plain file name"});
  }
  SUBCASE("index is not JSON") {
    test::write_text(dir.file("model.safetensors.index.json"), R"({"weight_map": )");
    check_error([&] { io::SafetensorsModel bad(dir.path().string()); },
                {"index.json", "not valid JSON"});
  }
  SUBCASE("no index: every .safetensors file; duplicate names are refused") {
    std::filesystem::remove(dir.file("model.safetensors.index.json"));
    io::SafetensorsModel m2(dir.path().string());
    CHECK(m2.size() == 2);
    w1.write(dir.file("model-00003-of-00003.safetensors"));
    check_error([&] { io::SafetensorsModel bad(dir.path().string()); }, {"'x'", "also stored in"});
  }
}

TEST_CASE("safetensors: damaged files each give one clear error") {
  TempDir dir;
  const auto path = dir.file("bad.safetensors");
  auto expect = [&](const std::vector<std::byte>& bytes,
                    std::initializer_list<std::string_view> parts) {
    test::write_bytes(path, bytes);
    check_error([&] { io::SafetensorsModel m(path); }, parts);
  };
  const std::string good = R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";

  SUBCASE("truncated anywhere") {
    const auto full = sample_writer().serialize();
    io::parse_safetensors(full, "full");  // the intact file parses
    for (std::size_t cut = 0; cut < full.size(); cut += (cut < 64 ? 1 : 37)) {
      CAPTURE(cut);
      std::vector<std::byte> part(full.begin(), full.begin() + cut);
      check_error([&] { io::parse_safetensors(part, "cut.safetensors"); }, {"cut.safetensors"});
    }
  }
  SUBCASE("header length") {
    expect(std::vector<std::byte>(5), {path, "too short"});
    auto huge = make_file(good, 16);
    huge[5] = std::byte{1};  // 2^40
    expect(huge, {path, "exceeds the limit"});
    auto past = make_file(good, 16);
    past[0] = static_cast<std::byte>(good.size() + 17);
    expect(past, {path, "exceeds the file"});
  }
  SUBCASE("malformed JSON and wrong types") {
    expect(make_file(R"({"t":{"dtype":"F32",)", 0), {path, "not valid JSON"});
    expect(make_file("[1,2]", 0), {path, "must be a JSON object"});
    expect(make_file(R"({"t":5})", 0), {path, "'t'", "must be an object"});
    expect(make_file(R"({"t":{"dtype":"F32","shape":[1]}})", 4),
           {path, "'t'", "missing field 'data_offsets'"});
    expect(make_file(R"({"t":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}})", 4),
           {path, "'t'", "unknown dtype 'Q9'"});
    expect(make_file(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
           {path, "'t'", "non-negative"});
    expect(make_file(R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4),
           {path, "'t'", "non-negative"});
    expect(make_file(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4),
           {path, "'t'", "two non-negative"});
    expect(make_file(R"({"__metadata__":{"a":1}})", 0), {path, "__metadata__['a']"});
    expect(make_file("{\"t\xff\":1}", 0), {path, "not valid JSON"});  // invalid UTF-8
  }
  SUBCASE("offsets and sizes") {
    expect(make_file(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})", 15),
           {path, "'t'", "out of range"});
    expect(make_file(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[8,4]}})", 16),
           {path, "'t'", "begin 8 > end 4"});
    expect(make_file(R"({"t":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}})", 16),
           {path, "'t'", "expected 8 bytes"});
    expect(
        make_file(R"({"t":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,16]}})",
                  16),
        {path, "'t'", "overflows"});
    expect(
        make_file(
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            12),
        {path, "'a'", "'b'", "overlap"});
    expect(make_file(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}})",
                     4),
           {path, "'t'"});
  }
  SUBCASE("misaligned typed view") {
    std::string h = R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})";
    while ((8 + h.size()) % 8) h += ' ';
    test::write_bytes(path, make_file(h, 8));
    io::SafetensorsModel m(path);
    check_error([&] { (void)m.view<float, DExtents<1>>("t"); }, {path, "'t'", "not aligned"});
  }
  SUBCASE("missing file") {
    check_error([&] { io::SafetensorsModel m(dir.file("none.safetensors")); },
                {"none.safetensors", "cannot open"});
  }
}

TEST_CASE("safetensors: FP8 scale shape is checked") {
  TempDir dir;
  io::SafetensorsWriter w;
  std::vector<f8_e4m3> q(300 * 2);
  std::vector<float> s(2);
  w.add<f8_e4m3>("w", {300, 2}, q);
  w.add<float>("w_scale_inv", {2, 1}, s);
  w.add<f8_e4m3>("v", {3, 2}, std::span<const f8_e4m3>(q.data(), 6));
  w.write(dir.file("f.safetensors"));
  io::SafetensorsModel m(dir.file("f.safetensors"));
  check_error([&] { (void)m.fp8_weight("w"); },
              {"'w_scale_inv'", "expected shape [3,1]", "got [2,1]"});
  check_error([&] { (void)m.fp8_weight("v"); }, {"'v_scale_inv'", "missing"});
}
