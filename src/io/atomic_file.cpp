// AtomicFile: every writer's way to never leave a half-written file under the final name.
//
// The data goes to "<path>.tmp-<pid>" in the same directory (rename is only atomic within one file
// system), is fsynced before the rename (otherwise a crash after the rename can leave a renamed but
// empty file on ext4/xfs), and the directory is fsynced after it so that the rename itself survives.
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "loraq/error.hpp"
#include "loraq/io.hpp"

namespace loraq::io {
namespace {

[[noreturn]] void fail_errno(const std::filesystem::path& path, std::string_view what, int error) {
  throw Error(fmt::format("{}: {}: {}", path.string(), what, std::strerror(error)));
}

// Makes the rename durable. Best effort: some file systems refuse fsync on a directory (EINVAL), and
// the data itself is already safe at this point, so a failure here is not worth failing the write.
void sync_directory(const std::filesystem::path& file) {
  std::filesystem::path dir = file.parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  (void)::close(fd);
}

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path target) : path(std::move(target)) {
  temp_path = path;
  temp_path += fmt::format(".tmp-{}", ::getpid());
  // O_EXCL: never write through a file (or symlink) that someone else put at the temporary name.
  fd = ::open(temp_path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int error = errno;
    if (error == EEXIST)
      throw Error(fmt::format("{}: cannot create temporary file {}: it already exists (another writer of "
                              "this file in this process, or left by a crashed run: remove it)",
                              path.string(), temp_path.string()));
    fail_errno(path, fmt::format("cannot create temporary file {}", temp_path.string()), error);
  }
}

AtomicFile::~AtomicFile() {
  if (fd >= 0) (void)::close(fd);
  if (!committed) (void)::unlink(temp_path.c_str());  // nothing to report from a destructor
}

void AtomicFile::write(std::span<const std::byte> bytes) {
  if (committed || fd < 0)
    throw Error(fmt::format("{}: write after the file was committed or a write failed", path.string()));
  const std::byte* p = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    // Linux writes at most 0x7ffff000 bytes per call; ask for no more than 1 GiB at a time.
    const std::size_t chunk = left < (std::size_t{1} << 30) ? left : (std::size_t{1} << 30);
    const ssize_t n = ::write(fd, p, chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // The file now ends in the middle of something: close it so that no later write() or commit()
      // can turn it into a finished-looking file. The destructor still removes it.
      const int error = n < 0 ? errno : EIO;
      (void)::close(fd);
      fd = -1;
      fail_errno(path, fmt::format("cannot write {} bytes to {}", left, temp_path.string()), error);
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

void AtomicFile::commit() {
  if (committed) throw Error(fmt::format("{}: committed twice", path.string()));
  if (fd < 0) throw Error(fmt::format("{}: commit after a failed write or commit", path.string()));
  // On failure the destructor removes the temporary file: `committed` stays false.
  if (::fsync(fd) != 0) fail_errno(path, fmt::format("cannot fsync {}", temp_path.string()), errno);
  const int closing = fd;
  fd = -1;
  // close() can report a deferred write error (NFS, quotas): treat it as a failed write.
  // EINTR is not a failure: Linux releases the descriptor anyway and the data is already synced.
  if (::close(closing) != 0 && errno != EINTR) fail_errno(path, fmt::format("cannot close {}", temp_path.string()), errno);
  if (::rename(temp_path.c_str(), path.c_str()) != 0)
    fail_errno(path, fmt::format("cannot rename {} onto it", temp_path.string()), errno);
  committed = true;
  sync_directory(path);
}

bool same_file(const std::filesystem::path& a, const std::filesystem::path& b) {
  std::error_code ec;  // a path that does not exist (yet) is no existing file
  return std::filesystem::equivalent(a, b, ec) && !ec;
}

}  // namespace loraq::io
