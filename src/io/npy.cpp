// .npy arrays (NEP 1 / numpy.lib.format): float32, float16 and bfloat16, little-endian, C order.
//
// The header is a Python dict literal. We never evaluate it: a small parser accepts exactly the
// three keys numpy writes, with a quoted string, True/False and a tuple of integers as values, and
// everything else is an Error naming the file. write_npy produces the bytes np.save produces for the
// same array (same header text, growth padding and 64-byte alignment).
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

[[noreturn]] void fail(const std::filesystem::path& path, std::string_view message) {
  throw Error(fmt::format("{}: {}", path.string(), message));
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
    if (fd_ < 0) fail(path, fmt::format("cannot open for reading: {}", std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) fail(path, fmt::format("cannot stat: {}", std::strerror(errno)));
    if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
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
        fail(path_, fmt::format("read error at byte {}: {}", offset, std::strerror(errno)));
      }
      if (got == 0) fail(path_, fmt::format("file ended at byte {} while reading (truncated while open?)", offset));
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
  HeaderParser(std::string_view text, const std::filesystem::path& path) : text_(text), path_(path) {}

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
      fail(path_, "npy header lacks one of the keys 'descr', 'fortran_order', 'shape'");
    return header;
  }

 private:
  [[noreturn]] void fail_here(std::string_view message) const {
    fail(path_, fmt::format("invalid npy header at byte {} of the header: {}", pos_, message));
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
  const std::filesystem::path& path_;
  std::size_t pos_ = 0;
};

DType dtype_of_descr(const std::string& descr, const std::filesystem::path& path) {
  if (descr == "<f4") return DType::f32;
  if (descr == "<f2") return DType::f16;
  if (descr == "<V2" || descr == "|V2") return DType::bf16;
  if (!descr.empty() && descr[0] == '>')
    fail(path, fmt::format("descr '{}' is big-endian; expected little-endian '<f4', '<f2' or '<V2' (bfloat16)",
                           descr));
  fail(path, fmt::format("unsupported descr '{}'; expected '<f4' (float32), '<f2' (float16) or '<V2'/'|V2' "
                         "(bfloat16 as ml_dtypes saves it)", descr));
}

std::uint32_t read_le(const unsigned char* p, int bytes) {
  std::uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

NpyArray read_npy(const std::filesystem::path& path) {
  const ReadOnlyFile file(path);
  unsigned char prefix[12] = {};
  constexpr std::size_t kShortPrefix = kMagicLength + 2 + 2;  // magic, version, uint16 header length
  if (file.size() < kShortPrefix)
    fail(path, fmt::format("{} bytes is too short for an npy file (expected at least {})", file.size(),
                           kShortPrefix));
  file.read(0, prefix, file.size() < sizeof prefix ? kShortPrefix : sizeof prefix);
  if (std::memcmp(prefix, kMagic, kMagicLength) != 0)
    fail(path, "not an npy file: expected the magic string \\x93NUMPY at the start");
  const int major = prefix[6];
  const int minor = prefix[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0)
    fail(path, fmt::format("unsupported npy format version {}.{} (expected 1.0, 2.0 or 3.0)", major, minor));
  // Version 1.0 stores the header length in 2 bytes; 2.0 and 3.0 (UTF-8 header) in 4.
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  const std::uint64_t data_start_min = kMagicLength + 2 + length_bytes;
  if (file.size() < data_start_min)
    fail(path, fmt::format("{} bytes is too short for an npy {}.0 file (expected at least {})", file.size(), major,
                           data_start_min));
  const std::uint64_t header_length = read_le(prefix + 8, static_cast<int>(length_bytes));
  if (header_length > kMaxHeaderBytes)
    fail(path, fmt::format("npy header claims {} bytes, more than the {}-byte limit", header_length,
                           kMaxHeaderBytes));
  const std::uint64_t data_start = data_start_min + header_length;
  if (data_start > file.size())
    fail(path, fmt::format("truncated npy header: it claims {} bytes but the file ends {} bytes after its prefix",
                           header_length, file.size() - data_start_min));
  std::string text(header_length, '\0');
  file.read(data_start_min, text.data(), text.size());

  const Header header = HeaderParser(text, path).parse();
  NpyArray array;
  array.dtype = dtype_of_descr(*header.descr, path);
  if (*header.fortran_order)
    fail(path, "fortran_order is True: only C-order arrays are supported (save np.ascontiguousarray(a))");
  array.shape = *header.shape;
  const std::string what = fmt::format("{}: shape {}", path.string(), shape_repr(array.shape));
  const std::uint64_t bytes = byte_size(array.dtype, element_count(array.shape, what), what);
  const std::uint64_t actual = file.size() - data_start;
  if (actual != bytes)
    fail(path, fmt::format("{}: expected {} data bytes for descr '{}' shape {} after the {}-byte header, the file "
                           "holds {}",
                           actual < bytes ? "truncated npy data" : "trailing bytes after the npy data", bytes,
                           *header.descr, shape_repr(array.shape), data_start, actual));
  array.data.resize(static_cast<std::size_t>(bytes));
  file.read(data_start, array.data.data(), array.data.size());
  return array;
}

void write_npy(const std::filesystem::path& path, const NpyArray& array) {
  const std::string_view descr = descr_of(array.dtype);
  if (descr.empty())
    fail(path, fmt::format("write_npy: dtype {} cannot be saved (expected F32, F16 or BF16)",
                           dtype_name(array.dtype)));
  if (array.shape.size() > kMaxDims)
    fail(path, fmt::format("write_npy: {} dimensions, numpy allows at most {}", array.shape.size(), kMaxDims));
  const std::string what = fmt::format("{}: shape {}", path.string(), shape_repr(array.shape));
  const std::uint64_t bytes = byte_size(array.dtype, element_count(array.shape, what), what);
  if (array.data.size() != bytes)
    fail(path, fmt::format("write_npy: {} {} needs {} data bytes, got {}", dtype_name(array.dtype),
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
