// .npy arrays (NEP 1 / numpy.lib.format): float32, float16 and bfloat16, little-endian, C order.
//
// The header is a Python dict literal. We never evaluate it: a small parser accepts exactly the
// three keys numpy writes, with a quoted string, True/False and a tuple of integers as values, and
// everything else is an Error naming the file. write_npy produces the bytes np.save produces for the
// same array (same header text, growth padding and 64-byte alignment).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <string>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "loraq/error.hpp"
#include "loraq/io.hpp"

namespace loraq::io {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLength = 6;
// numpy itself refuses headers above 10,000 bytes unless told otherwise; a float array's header is
// under 1 KiB even at 32 dimensions. 1 MiB leaves room and still bounds what a hostile file costs.
constexpr std::uint64_t kMaxHeaderBytes = 1u << 20;
constexpr std::size_t kArrayAlign = 64;          // numpy.lib.format.ARRAY_ALIGN
constexpr std::size_t kGrowthAxisMaxDigits = 21;  // numpy.lib.format.GROWTH_AXIS_MAX_DIGITS
constexpr std::size_t kMaxDims = 64;               // numpy 2's NPY_MAXDIMS

[[noreturn]] void fail(std::string_view what, std::string_view message) {
  throw Error(fmt::format("{}: {}", what, message));
}

// The descr numpy writes for each dtype. ml_dtypes' bfloat16 has no type code of its own, so numpy
// saves it as a 2-byte void ('<V2'); reading '<V2' or '|V2' back as bfloat16 is this format's
// convention, since the file carries nothing more.
std::string_view descr_of(DType d) {
  switch (d) {
    case DType::f32: return "<f4";
    case DType::f16: return "<f2";
    case DType::bf16: return "<V2";
    case DType::boolean: case DType::f4: case DType::f6_e2m3: case DType::f6_e3m2: case DType::u8:
    case DType::i8: case DType::f8_e5m2: case DType::f8_e4m3: case DType::f8_e8m0:
    case DType::f8_e4m3fnuz: case DType::f8_e5m2fnuz: case DType::i16: case DType::u16:
    case DType::i32: case DType::u32: case DType::c64: case DType::f64: case DType::i64: case DType::u64:
      break;
  }
  return {};
}

std::string shape_repr(const std::vector<std::int64_t>& shape) {  // Python's repr of the tuple
  if (shape.size() == 1) return fmt::format("({},)", shape[0]);
  return fmt::format("({})", fmt::join(shape, ", "));
}

class ReadOnlyFile {
 public:
  explicit ReadOnlyFile(const std::filesystem::path& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail(path.string(), fmt::format("cannot open for reading: {}", std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) fail(path.string(), fmt::format("cannot stat: {}", std::strerror(errno)));
    if (!S_ISREG(st.st_mode)) fail(path.string(), "not a regular file");
    size_ = static_cast<std::uint64_t>(st.st_size);
  }
  ~ReadOnlyFile() { (void)::close(fd_); }
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;

  std::uint64_t size() const { return size_; }

  // Reads exactly n bytes at offset; the caller has checked that the file is long enough, so a short
  // read means the file shrank while we read it.
  void read(std::uint64_t offset, void* out, std::size_t n) const {
    auto* p = static_cast<char*>(out);
    while (n > 0) {
      const ssize_t got = ::pread(fd_, p, n < (std::size_t{1} << 30) ? n : (std::size_t{1} << 30),
                                  static_cast<off_t>(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        fail(path_.string(), fmt::format("read error at byte {}: {}", offset, std::strerror(errno)));
      }
      if (got == 0) fail(path_.string(), fmt::format("file ended at byte {} while reading (truncated while open?)", offset));
      p += got;
      offset += static_cast<std::uint64_t>(got);
      n -= static_cast<std::size_t>(got);
    }
  }

 private:
  const std::filesystem::path& path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

struct Header {
  std::optional<std::string> descr;
  std::optional<bool> fortran_order;
  std::optional<std::vector<std::int64_t>> shape;
};

// Recursive descent over the one dict shape numpy writes: {'key': value, ...} with an optional
// trailing comma, then only whitespace to the end of the header.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, std::string_view what) : text_(text), what_(what) {}

  Header parse() {
    Header header;
    skip_space();
    if (!consume('{'))
      fail_here("expected a dict literal starting with '{' (numpy's {'descr': ..., 'fortran_order': ..., "
                "'shape': ...})");
    for (;;) {
      skip_space();
      if (consume('}')) break;
      if (peek() != '\'' && peek() != '"') fail_here("expected a quoted key or '}'");
      const std::string key = parse_string();
      skip_space();
      if (!consume(':')) fail_here(fmt::format("expected ':' after key '{}'", key));
      skip_space();
      if (key == "descr") {
        if (header.descr) fail_here("duplicate key 'descr'");
        if (peek() != '\'' && peek() != '"')
          fail_here("'descr' must be a quoted type string such as '<f4' (structured dtypes are not supported)");
        header.descr = parse_string();
      } else if (key == "fortran_order") {
        if (header.fortran_order) fail_here("duplicate key 'fortran_order'");
        header.fortran_order = parse_bool();
      } else if (key == "shape") {
        if (header.shape) fail_here("duplicate key 'shape'");
        header.shape = parse_shape();
      } else {
        fail_here(fmt::format("unexpected key '{}' (expected exactly 'descr', 'fortran_order' and 'shape')", key));
      }
      skip_space();
      if (consume(',')) continue;
      if (consume('}')) break;
      fail_here("expected ',' or '}' after a value");
    }
    skip_space();
    if (pos_ != text_.size()) fail_here("unexpected bytes after the dict (expected only padding spaces)");
    if (!header.descr || !header.fortran_order || !header.shape)
      fail(what_, "npy header lacks one of the keys 'descr', 'fortran_order', 'shape'");
    return header;
  }

 private:
  [[noreturn]] void fail_here(std::string_view message) const {
    fail(what_, fmt::format("invalid npy header at byte {} of the header: {}", pos_, message));
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  bool consume(char c) {
    if (pos_ >= text_.size() || text_[pos_] != c) return false;
    ++pos_;
    return true;
  }
  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }
  std::string parse_string() {
    const char quote = text_[pos_++];
    const std::size_t start = pos_;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      // numpy's keys and type strings need no escapes; refusing them keeps this parser trivially exact.
      if (text_[pos_] == '\\' || text_[pos_] == '\n') fail_here("escape or newline inside a string");
      ++pos_;
    }
    if (pos_ >= text_.size()) fail_here("unterminated string");
    return std::string(text_.substr(start, pos_++ - start));
  }
  bool parse_bool() {
    if (text_.substr(pos_, 4) == "True") return pos_ += 4, true;
    if (text_.substr(pos_, 5) == "False") return pos_ += 5, false;
    fail_here("'fortran_order' must be True or False");
  }
  std::int64_t parse_int() {
    const bool negative = consume('-');
    if (peek() < '0' || peek() > '9') fail_here("expected an integer in the shape tuple");
    std::uint64_t value = 0;
    while (peek() >= '0' && peek() <= '9') {
      const auto digit = static_cast<std::uint64_t>(peek() - '0');
      if (value > (std::uint64_t{std::numeric_limits<std::int64_t>::max()} - digit) / 10)
        fail_here("shape dimension does not fit in 64 bits");
      value = value * 10 + digit;
      ++pos_;
    }
    if (peek() == 'L' || peek() == 'l') ++pos_;  // Python 2 long literal, as old numpy wrote
    const auto v = static_cast<std::int64_t>(value);
    return negative ? -v : v;
  }
  std::vector<std::int64_t> parse_shape() {
    if (!consume('(')) fail_here("'shape' must be a tuple of integers such as (2, 3)");
    std::vector<std::int64_t> shape;
    bool trailing_comma = false;
    for (;;) {
      skip_space();
      if (consume(')')) break;
      if (!shape.empty() && !trailing_comma) fail_here("expected ',' between shape dimensions");
      if (shape.size() >= kMaxDims) fail_here(fmt::format("more than {} dimensions", kMaxDims));
      shape.push_back(parse_int());
      skip_space();
      trailing_comma = consume(',');
    }
    // In Python "(3)" is the integer 3, not a tuple: numpy always writes "(3,)".
    if (shape.size() == 1 && !trailing_comma) fail_here("'shape' (n) is not a tuple; expected (n,)");
    return shape;
  }

  std::string_view text_;
  std::string_view what_;
  std::size_t pos_ = 0;
};

DType dtype_of_descr(const std::string& descr, std::string_view what) {
  if (descr == "<f4") return DType::f32;
  if (descr == "<f2") return DType::f16;
  if (descr == "<V2" || descr == "|V2") return DType::bf16;
  if (!descr.empty() && descr[0] == '>')
    fail(what, fmt::format("descr '{}' is big-endian; expected little-endian '<f4', '<f2' or '<V2' (bfloat16)",
                           descr));
  fail(what, fmt::format("unsupported descr '{}'; expected '<f4' (float32), '<f2' (float16) or '<V2'/'|V2' "
                         "(bfloat16 as ml_dtypes saves it)", descr));
}

std::uint32_t read_le(const std::byte* p, int bytes) {
  std::uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint32_t>(p[i]);
  return v;
}

constexpr std::size_t kShortPrefix = kMagicLength + 2 + 2;  // magic, version, uint16 header length
constexpr std::size_t kLongPrefix = kMagicLength + 2 + 4;   // versions 2.0 and 3.0: uint32 length

// Checks the magic string, the version and the header length; returns where the header ends (where
// the data begins). Needs the first min(file_size, 12) bytes of the file in `prefix`.
std::uint64_t header_end(std::span<const std::byte> prefix, std::uint64_t file_size, std::string_view what) {
  if (file_size < kShortPrefix)
    fail(what, fmt::format("{} bytes is too short for an npy file (expected at least {})", file_size, kShortPrefix));
  if (prefix.size() < kShortPrefix || prefix.size() > file_size)
    fail(what, fmt::format("given {} bytes of the npy prefix of a {}-byte file", prefix.size(), file_size));
  if (std::memcmp(prefix.data(), kMagic, kMagicLength) != 0)
    fail(what, "not an npy file: expected the magic string \\x93NUMPY at the start");
  const auto major = std::to_integer<int>(prefix[6]);
  const auto minor = std::to_integer<int>(prefix[7]);
  if ((major != 1 && major != 2 && major != 3) || minor != 0)
    fail(what, fmt::format("unsupported npy format version {}.{} (expected 1.0, 2.0 or 3.0)", major, minor));
  // Version 1.0 stores the header length in 2 bytes; 2.0 and 3.0 (UTF-8 header) in 4.
  const std::size_t data_start_min = major == 1 ? kShortPrefix : kLongPrefix;
  if (file_size < data_start_min)
    fail(what, fmt::format("{} bytes is too short for an npy {}.0 file (expected at least {})", file_size, major,
                           data_start_min));
  if (prefix.size() < data_start_min)
    fail(what, fmt::format("given {} bytes of the {}-byte npy prefix", prefix.size(), data_start_min));
  const std::uint64_t header_length = read_le(prefix.data() + 8, static_cast<int>(data_start_min - 8));
  if (header_length > kMaxHeaderBytes)
    fail(what, fmt::format("npy header claims {} bytes, more than the {}-byte limit", header_length,
                           kMaxHeaderBytes));
  const std::uint64_t data_start = data_start_min + header_length;
  if (data_start > file_size)
    fail(what, fmt::format("truncated npy header: it claims {} bytes but the file ends {} bytes after its prefix",
                           header_length, file_size - data_start_min));
  return data_start;
}

struct Layout {
  DType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t data_start;
  std::uint64_t data_bytes;
};

// Every check of an npy file but reading its data: `head` holds the file from its start to at least
// the end of the header, `file_size` is the size of the whole file.
Layout parse_layout(std::span<const std::byte> head, std::uint64_t file_size, std::string_view what) {
  const std::uint64_t data_start = header_end(head.first(std::min<std::size_t>(head.size(), kLongPrefix)),
                                              file_size, what);
  if (head.size() < data_start)
    fail(what, fmt::format("given {} bytes of an npy header that ends at byte {}", head.size(), data_start));
  const std::size_t text_start = std::to_integer<int>(head[6]) == 1 ? kShortPrefix : kLongPrefix;
  const std::string_view text(reinterpret_cast<const char*>(head.data()) + text_start,
                              static_cast<std::size_t>(data_start) - text_start);
  const Header header = HeaderParser(text, what).parse();
  Layout layout;
  layout.dtype = dtype_of_descr(*header.descr, what);
  if (*header.fortran_order)
    fail(what, "fortran_order is True: only C-order arrays are supported (save np.ascontiguousarray(a))");
  layout.shape = *header.shape;
  layout.data_start = data_start;
  const std::string shape_what = fmt::format("{}: shape {}", what, shape_repr(layout.shape));
  layout.data_bytes = byte_size(layout.dtype, element_count(layout.shape, shape_what), shape_what);
  const std::uint64_t actual = file_size - data_start;
  if (actual != layout.data_bytes)
    fail(what, fmt::format("{}: expected {} data bytes for descr '{}' shape {} after the {}-byte header, the file "
                           "holds {}",
                           actual < layout.data_bytes ? "truncated npy data" : "trailing bytes after the npy data",
                           layout.data_bytes, *header.descr, shape_repr(layout.shape), data_start, actual));
  return layout;
}

}  // namespace

NpyArray parse_npy(std::span<const std::byte> file_bytes, std::string_view what) {
  Layout layout = parse_layout(file_bytes, file_bytes.size(), what);
  const auto data = file_bytes.subspan(static_cast<std::size_t>(layout.data_start));
  return NpyArray{layout.dtype, std::move(layout.shape), std::vector<std::byte>(data.begin(), data.end())};
}

NpyArray read_npy(const std::filesystem::path& path) {
  const ReadOnlyFile file(path);
  const std::string what = path.string();
  // Two reads: the prefix says how long the header is; the header is parsed by the same code as
  // parse_npy's, and the data is read straight into the array (no second copy of a large file).
  std::vector<std::byte> head(static_cast<std::size_t>(std::min<std::uint64_t>(file.size(), kLongPrefix)));
  file.read(0, head.data(), head.size());
  head.resize(static_cast<std::size_t>(header_end(head, file.size(), what)));
  if (head.size() > kLongPrefix) file.read(kLongPrefix, head.data() + kLongPrefix, head.size() - kLongPrefix);
  Layout layout = parse_layout(head, file.size(), what);
  NpyArray array{layout.dtype, std::move(layout.shape), {}};
  array.data.resize(static_cast<std::size_t>(layout.data_bytes));
  file.read(layout.data_start, array.data.data(), array.data.size());
  return array;
}

void write_npy(const std::filesystem::path& path, const NpyArray& array) {
  const std::string_view descr = descr_of(array.dtype);
  if (descr.empty())
    fail(path.string(), fmt::format("write_npy: dtype {} cannot be saved (expected F32, F16 or BF16)",
                           dtype_name(array.dtype)));
  if (array.shape.size() > kMaxDims)
    fail(path.string(), fmt::format("write_npy: {} dimensions, numpy allows at most {}", array.shape.size(), kMaxDims));
  const std::string what = fmt::format("{}: shape {}", path.string(), shape_repr(array.shape));
  const std::uint64_t bytes = byte_size(array.dtype, element_count(array.shape, what), what);
  if (array.data.size() != bytes)
    fail(path.string(), fmt::format("write_npy: {} {} needs {} data bytes, got {}", dtype_name(array.dtype),
                           shape_repr(array.shape), bytes, array.data.size()));

  // numpy.lib.format._write_array_header: sorted keys, spare spaces for the first dimension to grow
  // in place, then spaces and '\n' up to a multiple of 64 bytes.
  std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr,
                                   shape_repr(array.shape));
  if (!array.shape.empty()) header.append(kGrowthAxisMaxDigits - fmt::formatted_size("{}", array.shape[0]), ' ');
  // With at most 64 dimensions of at most 19 digits the header stays under 1,500 bytes, so version
  // 1.0 (uint16 header length) always suffices, as it does for np.save of any such array.
  const std::size_t unpadded = kMagicLength + 2 + 2 + header.size() + 1;
  const std::size_t pad = kArrayAlign - unpadded % kArrayAlign;  // 1..64, never 0, as numpy computes it
  const std::uint64_t header_length = header.size() + pad + 1;
  std::string out(kMagic, kMagicLength);
  out += std::string("\x01\x00", 2);
  out.push_back(static_cast<char>(header_length & 0xFF));
  out.push_back(static_cast<char>(header_length >> 8));
  out += header;
  out.append(pad, ' ');
  out.push_back('\n');

  AtomicFile file(path);
  file.write(std::as_bytes(std::span(out)));
  file.write(array.data);
  file.commit();
}

}  // namespace loraq::io
