// Tests of loraq::io: dtypes, .npy, safetensors and AtomicFile. Hostile files are written by hand,
// byte by byte, and every rejection must be a loraq::Error that names the file.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "loraq/element.hpp"
#include "loraq/error.hpp"
#include "loraq/io.hpp"

namespace fs = std::filesystem;
using namespace loraq::io;

namespace {

using loraq::testing::error_of;

// The message must name the file and say what went wrong (needle).
#define EXPECT_IO_ERROR(statement, file, needle)                                          \
  do {                                                                                    \
    const std::string message_ = error_of([&] { statement; });                            \
    EXPECT_NE(message_.find(fs::path(file).string()), std::string::npos) << message_;     \
    EXPECT_NE(message_.find(needle), std::string::npos) << "[" << needle << "] " << message_; \
  } while (0)

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() / ("loraq_test_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path file(const std::string& name) const { return dir_ / name; }
  fs::path put(const std::string& name, const std::string& bytes) const {
    std::ofstream(file(name), std::ios::binary) << bytes;
    return file(name);
  }
  static std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename().string());
    return names;
  }
  fs::path dir_;
};

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed * 7 + (i >> 8)) & 0xFF);
  return v;
}

std::string le(std::uint64_t v, int bytes) {
  std::string s;
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return s;
}

// ---------------------------------------------------------------- dtypes

TEST(DType, NamesParseBackAndSizesMatchTheFormat) {
  for (int i = 0; i < kDTypeCount; ++i) {
    const auto d = static_cast<DType>(i);
    EXPECT_EQ(parse_dtype(dtype_name(d)), d) << dtype_name(d);
  }
  EXPECT_EQ(dtype_size(DType::boolean), 1u);
  EXPECT_EQ(dtype_size(DType::f8_e4m3fnuz), 1u);
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
  EXPECT_EQ(dtype_size(DType::u32), 4u);
  EXPECT_EQ(dtype_size(DType::c64), 8u);
  EXPECT_EQ(dtype_size(DType::u64), 8u);
  EXPECT_EQ(dtype_bits(DType::f4), 4u);
  EXPECT_EQ(dtype_bits(DType::f6_e3m2), 6u);
  EXPECT_THROW(dtype_size(DType::f4), loraq::Error);
  EXPECT_TRUE(is_float_dtype(DType::bf16) && is_float_dtype(DType::f64));
  EXPECT_FALSE(is_float_dtype(DType::f8_e4m3) || is_float_dtype(DType::i32));
  const std::string message = error_of([] { parse_dtype("F128"); });
  EXPECT_NE(message.find("F128"), std::string::npos) << message;
}

TEST(DType, ElementCountAndByteSizeAreChecked) {
  EXPECT_EQ(element_count(std::vector<std::int64_t>{}, "x"), 1u);
  EXPECT_EQ(element_count(std::vector<std::int64_t>{2, 3, 4}, "x"), 24u);
  EXPECT_EQ(element_count(std::vector<std::int64_t>{std::int64_t{1} << 62, 0}, "x"), 0u);
  EXPECT_EQ(element_count(std::vector<std::int64_t>{std::int64_t{1} << 31, std::int64_t{1} << 31}, "x"),
            std::uint64_t{1} << 62);
  EXPECT_THROW(element_count(std::vector<std::int64_t>{std::int64_t{1} << 31, std::int64_t{1} << 31, 2}, "x"),
               loraq::Error);
  const std::string negative = error_of([] { element_count(std::vector<std::int64_t>{3, -1}, "tensor 'w'"); });
  EXPECT_NE(negative.find("tensor 'w'"), std::string::npos) << negative;
  EXPECT_EQ(byte_size(DType::f4, 6, "x"), 3u);
  EXPECT_EQ(byte_size(DType::f6_e2m3, 8, "x"), 6u);
  EXPECT_EQ(byte_size(DType::c64, 3, "x"), 24u);
  EXPECT_THROW(byte_size(DType::f4, 5, "x"), loraq::Error);
  EXPECT_THROW(byte_size(DType::f6_e3m2, 2, "x"), loraq::Error);
  EXPECT_THROW(byte_size(DType::u64, std::uint64_t{1} << 62, "x"), loraq::Error);  // 2^65 bytes
  EXPECT_EQ(byte_size(DType::u16, std::uint64_t{1} << 62, "x"), std::uint64_t{1} << 63);
}

// Every 16-bit code decodes through the element codec and encodes back to itself (NaNs stay NaN).
TEST(DType, Float16AndBfloat16CodesRoundTrip) {
  for (const DType d : {DType::f16, DType::bf16}) {
    std::vector<std::byte> codes(2 * 65536);
    for (std::uint32_t c = 0; c < 65536; ++c) std::memcpy(codes.data() + 2 * c, &c, 2);
    std::vector<float> values(65536);
    to_float32(d, codes, values);
    std::vector<std::byte> back(codes.size());
    from_float32(d, values, back);
    for (std::uint32_t c = 0; c < 65536; ++c) {
      std::uint16_t again;
      std::memcpy(&again, back.data() + 2 * c, 2);
      if (std::isnan(values[c]))
        EXPECT_TRUE(std::isnan(values[again])) << dtype_name(d) << " code " << c;
      else
        ASSERT_EQ(again, c) << dtype_name(d) << " value " << values[c];
    }
  }
}

TEST(DType, NarrowingRoundsToNearestEvenAndSaturates) {
  const auto bf16 = [](float x) {
    std::uint16_t code;
    from_float32(DType::bf16, std::span(&x, 1), std::as_writable_bytes(std::span(&code, 1)));
    return code;
  };
  const auto f16 = [](float x) {
    std::uint16_t code;
    from_float32(DType::f16, std::span(&x, 1), std::as_writable_bytes(std::span(&code, 1)));
    return code;
  };
  EXPECT_EQ(bf16(1.0f + 0x1p-8f), 0x3F80);          // tie: to the even 1.0
  EXPECT_EQ(bf16(1.0f + 3 * 0x1p-8f), 0x3F82);      // tie: to the even 1 + 2^-6
  EXPECT_EQ(bf16(3.4e38f), 0x7F7F);                 // beyond bf16's max: saturates
  EXPECT_EQ(f16(1.0f + 0x1p-11f), 0x3C00);          // tie to even
  EXPECT_EQ(f16(1e6f), 0x7BFF);                     // saturates to 65504
  EXPECT_EQ(f16(-1e6f), 0xFBFF);
  EXPECT_EQ(f16(std::numeric_limits<float>::infinity()), 0x7C00);  // Inf is kept
  EXPECT_EQ(f16(0x1p-24f), 0x0001);                 // smallest subnormal
  const double doubles[] = {0.1, 1e300, -1e300, std::numeric_limits<double>::infinity()};
  float out[4];
  to_float32(DType::f64, std::as_bytes(std::span(doubles)), out);
  EXPECT_EQ(out[0], 0.1f);
  EXPECT_EQ(out[1], std::numeric_limits<float>::max());
  EXPECT_EQ(out[2], -std::numeric_limits<float>::max());
  EXPECT_TRUE(std::isinf(out[3]));
  EXPECT_THROW(to_float32(DType::i32, std::as_bytes(std::span(out)), out), loraq::Error);
  EXPECT_THROW(to_float32(DType::f32, std::as_bytes(std::span(out)).first(12), out), loraq::Error);
}

// ---------------------------------------------------------------- npy

class Npy : public TempDir {};

TEST_F(Npy, RoundTripsEveryDtypeAndShape) {
  const std::vector<std::vector<std::int64_t>> shapes = {{}, {0}, {5}, {2, 3}, {2, 0, 4}, {1, 2, 3, 4}, {70000}};
  unsigned seed = 0;
  for (const DType d : {DType::f32, DType::f16, DType::bf16}) {
    for (const auto& shape : shapes) {
      NpyArray a{d, shape, pattern(element_count(shape, "") * dtype_size(d), ++seed)};
      const fs::path p = file("a.npy");
      write_npy(p, a);
      const NpyArray b = read_npy(p);
      EXPECT_EQ(b.dtype, d);
      EXPECT_EQ(b.shape, shape);
      EXPECT_EQ(b.data, a.data);
      EXPECT_EQ((fs::file_size(p) - a.data.size()) % 64, 0u);  // numpy's 64-byte aligned header
      EXPECT_EQ(listing(), std::vector<std::string>{"a.npy"});  // no temporary file left
    }
  }
}

TEST_F(Npy, WritesTheBytesNumpyWrites) {
  // np.save("x.npy", np.zeros((2, 3), np.float32)) with numpy 2.4.
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  const std::string expected = std::string("\x93NUMPY\x01\x00v\x00", 10) + dict + std::string(117 - dict.size(), ' ') +
                               "\n" + std::string(24, '\0');
  write_npy(file("x.npy"), NpyArray{DType::f32, {2, 3}, std::vector<std::byte>(24)});
  EXPECT_EQ(slurp(file("x.npy")), expected);
  write_npy(file("b.npy"), NpyArray{DType::bf16, {5}, std::vector<std::byte>(10)});
  EXPECT_NE(slurp(file("b.npy")).find("{'descr': '<V2', 'fortran_order': False, 'shape': (5,), }"), std::string::npos);
}

std::string npy_file(const std::string& dict, std::size_t data_bytes, int major = 1) {
  return std::string("\x93NUMPY", 6) + static_cast<char>(major) + '\0' + le(dict.size(), major == 1 ? 2 : 4) + dict +
         std::string(data_bytes, '\x01');
}

TEST_F(Npy, ReadsVersions2And3AndOtherSpellings) {
  const auto a = read_npy(put("v2.npy", npy_file("{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }\n", 6, 2)));
  EXPECT_EQ(a.dtype, DType::f16);
  EXPECT_EQ(a.shape, (std::vector<std::int64_t>{3}));
  const auto b = read_npy(put("v3.npy", npy_file("{\"shape\": (2,2), \"descr\": \"|V2\", \"fortran_order\": False}", 8, 3)));
  EXPECT_EQ(b.dtype, DType::bf16);
  EXPECT_EQ(b.shape, (std::vector<std::int64_t>{2, 2}));
  const auto c = read_npy(put("old.npy", npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 1L), }", 8)));
  EXPECT_EQ(c.shape, (std::vector<std::int64_t>{2, 1}));
}

TEST_F(Npy, HostileFilesAreErrorsNamingTheFile) {
  const std::string good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  fs::path p;
  p = put("truncated.npy", npy_file(good, 20));
  EXPECT_IO_ERROR(read_npy(p), p, "expected 24 data bytes");
  p = put("trailing.npy", npy_file(good, 25));
  EXPECT_IO_ERROR(read_npy(p), p, "holds 25");
  p = put("not_numpy.npy", std::string("\x93NUMPX\x01\x00", 8) + le(4, 2) + "{}  ");
  EXPECT_IO_ERROR(read_npy(p), p, "expected the magic string");
  p = put("short.npy", "\x93NUM");
  EXPECT_IO_ERROR(read_npy(p), p, "too short");
  p = put("huge.npy", std::string("\x93NUMPY\x02\x00", 8) + le(0xFFFFFFF0u, 4) + good);
  EXPECT_IO_ERROR(read_npy(p), p, "limit");
  p = put("past_end.npy", std::string("\x93NUMPY\x01\x00", 8) + le(5000, 2) + good);
  EXPECT_IO_ERROR(read_npy(p), p, "truncated npy header");
  p = put("version.npy", npy_file(good, 24, 4));
  EXPECT_IO_ERROR(read_npy(p), p, "version 4.0");
  const std::vector<std::pair<std::string, std::string>> headers = {
      {"[1, 2, 3]", "dict literal"},
      {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", "fortran_order"},
      {"{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", "big-endian"},
      {"{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", "unsupported descr '<i4'"},
      {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 3), }", "quoted type string"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", "non-negative"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (6), }", "not a tuple"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }", "tuple of integers"},
      {"{'descr': '<f4', 'fortran_order': False, }", "lacks one of the keys"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", "unexpected key 'x'"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}", "duplicate key"},
      {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3), }", "True or False"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", "64 bits"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", "2^62"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } x", "after the dict"},
      {"{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3), }", "expected ',' or '}'"},
      {"{'descr' '<f4', 'fortran_order': False, 'shape': (2, 3), }", "expected ':'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2 3), }", "between shape dimensions"},
  };
  for (std::size_t i = 0; i < headers.size(); ++i) {
    p = put("h" + std::to_string(i) + ".npy", npy_file(headers[i].first, 24));
    EXPECT_IO_ERROR(read_npy(p), p, headers[i].second);
  }
  EXPECT_IO_ERROR(read_npy(file("missing.npy")), file("missing.npy"), "cannot open");
}

TEST_F(Npy, WriteChecksItsInput) {
  const fs::path p = file("w.npy");
  EXPECT_IO_ERROR(write_npy(p, NpyArray{DType::f32, {2, 3}, std::vector<std::byte>(23)}), p, "needs 24 data bytes");
  EXPECT_IO_ERROR(write_npy(p, NpyArray{DType::i32, {2}, std::vector<std::byte>(8)}), p, "expected F32, F16 or BF16");
  EXPECT_IO_ERROR(write_npy(p, NpyArray{DType::f32, std::vector<std::int64_t>(65, 1), std::vector<std::byte>(4)}), p,
                  "at most 64");
  // The largest header numpy can need (64 dimensions of 19 digits, all but one 0) still fits 1.0.
  std::vector<std::int64_t> wide(64, std::numeric_limits<std::int64_t>::max());
  wide[5] = 0;
  write_npy(p, NpyArray{DType::f32, wide, {}});
  EXPECT_EQ(slurp(p)[6], '\x01');
  EXPECT_EQ(read_npy(p).shape, wide);
  fs::remove(p);
  EXPECT_TRUE(listing().empty());
}

// ---------------------------------------------------------------- safetensors

class Safetensors : public TempDir {};

std::size_t bytes_of(const TensorSpec& s) { return byte_size(s.dtype, element_count(s.shape, s.name), s.name); }

void write_all(SafetensorsWriter& w, unsigned seed) {
  for (const TensorSpec& s : std::vector<TensorSpec>(w.specs())) w.write(s.name, pattern(bytes_of(s), seed++));
}

TEST_F(Safetensors, RoundTripsEveryDtypeWithMetadata) {
  std::vector<TensorSpec> specs;
  for (int i = 0; i < kDTypeCount; ++i) {
    const auto d = static_cast<DType>(i);
    const std::vector<std::int64_t> shape =
        d == DType::f4 ? std::vector<std::int64_t>{3, 2} : d == DType::f6_e2m3 || d == DType::f6_e3m2
                                                              ? std::vector<std::int64_t>{2, 4}
                                                              : std::vector<std::int64_t>{2, 3};
    specs.push_back({"t." + std::string(dtype_name(d)), d, shape});
  }
  specs.push_back({"scalar", DType::f32, {}});
  specs.push_back({"empty", DType::bf16, {4, 0}});
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "é \"quoted\"\n"}};
  const fs::path p = file("all.safetensors");
  SafetensorsWriter w(p, specs, metadata);
  // Layout order: dtype descending (the reference's enum order), then name.
  for (std::size_t i = 1; i < w.specs().size(); ++i) {
    const TensorSpec& a = w.specs()[i - 1];
    const TensorSpec& b = w.specs()[i];
    EXPECT_TRUE(a.dtype > b.dtype || (a.dtype == b.dtype && a.name < b.name)) << a.name << " " << b.name;
  }
  std::map<std::string, std::vector<std::byte>> written;
  unsigned seed = 1;
  for (const TensorSpec& s : std::vector<TensorSpec>(w.specs())) {
    written[s.name] = pattern(bytes_of(s), seed++);
    w.write(s.name, written[s.name]);
  }
  w.finish();
  EXPECT_EQ(listing(), std::vector<std::string>{"all.safetensors"});

  const SafetensorsFile f(p);
  EXPECT_EQ(f.metadata(), metadata);
  ASSERT_EQ(f.tensors().size(), specs.size());
  std::uint64_t expected_offset = 0;  // contiguous in layout order
  for (const TensorSpec& s : w.specs()) {
    const TensorInfo& t = f.info(s.name);
    EXPECT_EQ(t.dtype, s.dtype);
    EXPECT_EQ(t.shape, s.shape);
    EXPECT_EQ(t.offset, expected_offset) << s.name;
    expected_offset += t.size;
    const auto bytes = f.bytes(t);
    EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), written[s.name].begin(), written[s.name].end())) << s.name;
  }
  for (std::size_t i = 1; i < f.tensors().size(); ++i) EXPECT_LT(f.tensors()[i - 1].name, f.tensors()[i].name);
  EXPECT_EQ(f.info("scalar").size, 4u);
  EXPECT_EQ(f.info("empty").size, 0u);
  EXPECT_EQ(f.info("t.F4").size, 3u);
  EXPECT_EQ(f.info("t.F6_E2M3").size, 6u);
  EXPECT_IO_ERROR(f.info("nope"), p, "no tensor named 'nope'");
}

TEST_F(Safetensors, WritesTheBytesTheReferenceWrites) {
  // safetensors 0.8.0: save({"b": int8[3], "a": f32[2], "Z": f64[1], "c": u16[0,2], "s": f16 scalar}).
  const std::string header =
      R"({"Z":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
      R"("s":{"dtype":"F16","shape":[],"data_offsets":[16,18]},"c":{"dtype":"U16","shape":[0,2],"data_offsets":[18,18]},)"
      R"("b":{"dtype":"I8","shape":[3],"data_offsets":[18,21]}}       )";
  const fs::path p = file("ref.safetensors");
  SafetensorsWriter w(p, {{"b", DType::i8, {3}}, {"a", DType::f32, {2}}, {"Z", DType::f64, {1}},
                          {"c", DType::u16, {0, 2}}, {"s", DType::f16, {}}});
  write_all(w, 3);
  w.finish();
  const std::string bytes = slurp(p);
  EXPECT_EQ(bytes.substr(0, 8), le(280, 8));
  EXPECT_EQ(bytes.substr(8, 280), header);
  EXPECT_EQ(bytes.size(), 8u + 280u + 21u);
  // With one metadata key the reference writes it first; an empty file is "{}" padded to 8 bytes.
  SafetensorsWriter m(file("m.safetensors"), {}, {{"k", "v"}});
  m.finish();
  EXPECT_EQ(slurp(file("m.safetensors")), le(32, 8) + R"({"__metadata__":{"k":"v"}})" + std::string(6, ' '));
  SafetensorsWriter e(file("e.safetensors"), {});
  e.finish();
  EXPECT_EQ(slurp(file("e.safetensors")), le(8, 8) + "{}      ");
  const SafetensorsFile empty(file("e.safetensors"));
  EXPECT_TRUE(empty.tensors().empty() && empty.metadata().empty());
}

TEST_F(Safetensors, WriterEnforcesOrderSizesAndNames) {
  const fs::path p = file("w.safetensors");
  {
    SafetensorsWriter w(p, {{"b", DType::f32, {2}}, {"a", DType::f32, {2}}, {"z", DType::i8, {0}}});
    EXPECT_IO_ERROR(w.write("b", pattern(8, 0)), p, "expected tensor 'a' next");
    EXPECT_IO_ERROR(w.write("a", pattern(7, 0)), p, "got 7 bytes, expected 8");
    w.write("a", pattern(8, 0));
    EXPECT_IO_ERROR(w.finish(), p, "'b' is next");
    w.write("b", pattern(8, 0));
    EXPECT_EQ(listing(), std::vector<std::string>{"w.safetensors.tmp-" + std::to_string(::getpid())});
  }  // destroyed without finish(): neither the file nor the temporary remains
  EXPECT_TRUE(listing().empty());
  EXPECT_IO_ERROR(SafetensorsWriter(p, {{"a", DType::f32, {1}}, {"a", DType::i8, {1}}}), p, "two tensors");
  EXPECT_IO_ERROR(SafetensorsWriter(p, {{"__metadata__", DType::f32, {1}}}), p, "__metadata__");
  EXPECT_IO_ERROR(SafetensorsWriter(p, {{"a", DType::f32, {-1}}}), p, "non-negative");
  EXPECT_IO_ERROR(SafetensorsWriter(p, {{"a", DType::f4, {3}}}), p, "whole number of bytes");
  EXPECT_IO_ERROR(SafetensorsWriter(p, {{std::string("\xff"), DType::f32, {1}}}), p, "UTF-8");
  EXPECT_TRUE(listing().empty());
  // An unfinished writer never touches an existing file of the same name.
  put("w.safetensors", "old");
  { SafetensorsWriter w(p, {{"a", DType::u8, {1}}}); }
  EXPECT_EQ(slurp(p), "old");
  SafetensorsWriter w(p, {{"a", DType::u8, {1}}});
  w.write("a", pattern(1, 0));
  w.finish();
  EXPECT_EQ(SafetensorsFile(p).tensors().size(), 1u);
  EXPECT_IO_ERROR(w.write("a", pattern(1, 0)), p, "after finish");
}

std::string st_file(const std::string& header, std::size_t data_bytes) {
  return le(header.size(), 8) + header + std::string(data_bytes, '\x02');
}

TEST_F(Safetensors, HostileFilesAreErrorsNamingTheFile) {
  fs::path p = put("short.safetensors", "abc");
  EXPECT_IO_ERROR(SafetensorsFile{p}, p, "too short");
  p = put("past_end.safetensors", le(100, 8) + "{}");
  EXPECT_IO_ERROR(SafetensorsFile{p}, p, "larger than the 2 bytes");
  p = put("cap.safetensors", le(100'000'001, 8) + "{}");
  EXPECT_IO_ERROR(SafetensorsFile{p}, p, "exceeds the 100000000-byte limit");
  const std::string f32 = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  const std::vector<std::pair<std::string, std::string>> headers = {
      {R"({"a":{)" + f32, "not valid JSON"},
      {R"([{"a":1}])", "start with '{'"},
      {R"( {})", "start with '{'"},
      {R"({"a":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}})", "unknown dtype \"F31\""},
      {R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", "expected a string"},
      {R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", "shape is a JSON string"},
      {R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", "non-negative integers"},
      {R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "non-negative size"},
      {R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", "64 bits"},
      {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", "2^62"},
      {R"({"a":{"dtype":"U64","shape":[4294967296,1073741824],"data_offsets":[0,8]}})", "overflow"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}})", "past the data section"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "end before they begin"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", "expected [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-1,8]}})", "expected [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "span 8 bytes, expected 12"},
      {R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", "whole number of bytes"},
      {R"({"a":{)" + f32 + R"(},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", "overlap"},
      {R"({"a":{)" + f32 + R"(,"extra":1}})", "unexpected key \"extra\""},
      {R"({"a":{"dtype":"F32","shape":[2]}})", "missing \"data_offsets\""},
      {R"({"a":[1]})", "expected an object"},
      {R"({"__metadata__":{"k":1}})", "\"k\" holds a JSON number"},
      {R"({"__metadata__":["k"]})", "__metadata__ is a JSON array"},
      {R"({"a":{)" + f32 + R"(},"a":{)" + f32 + "}}", "repeats the key \"a\""},
      {R"({"__metadata__":{"k":{"x":[[1]]}}})", "nests deeper"},
      {"{\"a\xff\":1}", "not valid JSON"},
  };
  for (std::size_t i = 0; i < headers.size(); ++i) {
    // Appended piecewise: GCC 12's -Wrestrict misfires on "h" + std::to_string(i) here.
    std::string name = "h";
    name += std::to_string(i);
    name += ".safetensors";
    p = put(name, st_file(headers[i].first, 16));
    EXPECT_IO_ERROR(SafetensorsFile{p}, p, headers[i].second);
  }
  // Zero-size tensors occupy no bytes, and a gap before trailing data is not an overlap.
  p = put("ok.safetensors", st_file(R"({"a":{)" + f32 + R"(},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})", 16));
  EXPECT_EQ(SafetensorsFile(p).tensors().size(), 2u);
  EXPECT_IO_ERROR(SafetensorsFile{file("missing.safetensors")}, file("missing.safetensors"), "cannot open");
}

TEST_F(Safetensors, ReadsAndRewritesARealCheckpoint) {
  const fs::path source = fs::path(__FILE__).parent_path() / "../../../shared/data/stories260k.safetensors";
  if (!fs::exists(source)) GTEST_SKIP() << "no " << source;
  const SafetensorsFile f(source);
  ASSERT_EQ(f.tensors().size(), 35u);
  EXPECT_EQ(f.info("layers.0.w1.weight").shape, (std::vector<std::int64_t>{172, 64}));
  std::vector<TensorSpec> specs;
  for (const TensorInfo& t : f.tensors()) {
    EXPECT_EQ(t.dtype, DType::f32);
    specs.push_back({t.name, t.dtype, t.shape});
  }
  const fs::path p = file("copy.safetensors");
  SafetensorsWriter w(p, specs, f.metadata());
  for (const TensorSpec& s : std::vector<TensorSpec>(w.specs())) w.write(s.name, f.bytes(f.info(s.name)));
  w.finish();
  const SafetensorsFile copy(p);
  EXPECT_EQ(copy.metadata(), f.metadata());
  EXPECT_EQ(fs::file_size(p), fs::file_size(source));
  for (const TensorInfo& t : f.tensors()) {
    const auto a = f.bytes(t);
    const auto b = copy.bytes(copy.info(t.name));
    EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end())) << t.name;
  }
  std::vector<float> values(static_cast<std::size_t>(f.info("layers.0.wq.weight").size / 4));
  to_float32(DType::f32, f.bytes(f.info("layers.0.wq.weight")), values);
  EXPECT_TRUE(std::all_of(values.begin(), values.end(), [](float v) { return std::isfinite(v) && std::fabs(v) < 10; }));
}

// ---------------------------------------------------------------- AtomicFile

class Atomic : public TempDir {};

TEST_F(Atomic, CommitRenamesAndDestructionRemovesTheTemporary) {
  const fs::path p = file("out.bin");
  {
    AtomicFile f(p);
    EXPECT_EQ(f.temp_path, fs::path(p.string() + ".tmp-" + std::to_string(::getpid())));
    f.write(pattern(10, 1));
    EXPECT_FALSE(fs::exists(p));
    EXPECT_TRUE(fs::exists(f.temp_path));
    f.commit();
    EXPECT_IO_ERROR(f.commit(), p, "committed twice");
    EXPECT_IO_ERROR(f.write(pattern(1, 1)), p, "after the file was committed");
  }
  EXPECT_EQ(fs::file_size(p), 10u);
  EXPECT_EQ(fs::status(p).permissions() & fs::perms::owner_write, fs::perms::owner_write);
  {
    AtomicFile f(p);
    f.write(pattern(3, 2));
  }
  EXPECT_EQ(fs::file_size(p), 10u);  // untouched
  EXPECT_EQ(listing(), std::vector<std::string>{"out.bin"});
}

TEST_F(Atomic, ErrorsNameThePathAndTheCause) {
  const fs::path p = file("x.bin");
  put("x.bin.tmp-" + std::to_string(::getpid()), "stale");
  EXPECT_IO_ERROR(AtomicFile{p}, p, "already exists");
  EXPECT_EQ(slurp(file("x.bin.tmp-" + std::to_string(::getpid()))), "stale");  // not ours: not removed
  const fs::path nowhere = file("no/such/dir/y.bin");
  EXPECT_IO_ERROR(AtomicFile{nowhere}, nowhere, "No such file or directory");
}

// A file size limit makes write() stop part-way and then fail with EFBIG, as a full disk would with
// ENOSPC: the partial write is continued, the failure reported with the path and the cause.
TEST_F(Atomic, AFailingWriteIsAnErrorAndLeavesNothing) {
  const fs::path p = file("big.bin");
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string message;
  {
    AtomicFile f(p);
    message = error_of([&] { f.write(pattern(10000, 0)); });
    EXPECT_IO_ERROR(f.commit(), p, "after a failed write");  // a half-written file is never committed
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(message.find(p.string()), std::string::npos) << message;
  EXPECT_NE(message.find("File too large"), std::string::npos) << message;
  EXPECT_TRUE(listing().empty());
}

}  // namespace

namespace {

// from_float32's bit-arithmetic fp16/bf16 encoders agree with the element codec (round to nearest
// even, saturation, NaN) on 17 million fp32 bit patterns spread over the whole 32-bit space.
TEST(FastHalfConversions, AgreeWithTheElementCodec) {
  std::vector<float> x;
  for (std::uint64_t b = 0; b < (1ull << 32); b += 251) x.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(b)));
  for (float v : {0.0f, -0.0f, 65504.0f, 65520.0f, -65520.0f, 3.3895313892515355e38f, 3.4e38f, 1e-8f, 6e-8f})
    x.push_back(v);
  for (auto [dtype, element] : {std::pair{loraq::io::DType::f16, loraq::Element::fp16},
                                std::pair{loraq::io::DType::bf16, loraq::Element::bf16}}) {
    std::vector<std::byte> out(x.size() * 2);
    loraq::io::from_float32(dtype, x, out);
    for (std::size_t i = 0; i < x.size(); ++i) {
      std::uint16_t got;
      std::memcpy(&got, out.data() + 2 * i, 2);
      ASSERT_EQ(got, loraq::encode(element, x[i], loraq::Rounding::nearest_even))
          << loraq::io::dtype_name(dtype) << " of " << x[i] << " (bits " << std::bit_cast<std::uint32_t>(x[i]) << ")";
    }
  }
}

}  // namespace
