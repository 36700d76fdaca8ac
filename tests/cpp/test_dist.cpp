// Process groups: the single-process stand-in, and (under mpirun -n 2, see tests/CMakeLists.txt) MPI.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "loraq/dist.hpp"
#include "loraq/error.hpp"

namespace loraq {
namespace {

std::vector<std::byte> bytes_of(const std::string& s) {
  std::vector<std::byte> b(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) b[i] = std::byte(s[i]);
  return b;
}

TEST(SingleProcess, IsRankZeroOfOne) {
  auto group = single_process_group();
  EXPECT_EQ(group->rank(), 0);
  EXPECT_EQ(group->size(), 1);
  const auto all = group->all_gather(bytes_of("abc"));
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0], bytes_of("abc"));
}

// Under `mpirun -n N` every rank sees every other rank's bytes, in rank order, of differing lengths.
TEST(Mpi, AllGatherSpansTheWorld) {
  if (!mpi_built()) {
    EXPECT_THROW(mpi_world_group(), Error);
    GTEST_SKIP() << "SKIPPED LOUDLY: built without MPI";
  }
  const char* launched = std::getenv("OMPI_COMM_WORLD_SIZE");
  const int expected_size = launched ? std::atoi(launched) : 1;
  auto group = mpi_world_group();
  ASSERT_EQ(group->size(), expected_size);
  const std::string mine = "rank" + std::string(std::size_t(group->rank() + 1), '*');
  const auto all = group->all_gather(bytes_of(mine));
  ASSERT_EQ(int(all.size()), expected_size);
  for (int r = 0; r < expected_size; ++r) EXPECT_EQ(all[std::size_t(r)], bytes_of("rank" + std::string(std::size_t(r + 1), '*')));
  group->barrier();
}

}  // namespace
}  // namespace loraq
