// Process groups: the single-process stand-in, and (under mpirun -n 2, see tests/CMakeLists.txt) MPI.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "loraq/dist.hpp"
#include "loraq/error.hpp"
#include "pipeline/distribute.hpp"

namespace loraq {
namespace {

std::vector<std::byte> bytes_of(const std::string& s) {
  std::vector<std::byte> b(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) b[i] = std::byte(s[i]);
  return b;
}

// Every pending layer goes to exactly one rank, and the costliest-first greedy keeps the loads within
// the largest single cost of each other.
TEST(ShareOf, PartitionsThePendingLayersByCost) {
  std::vector<double> costs;
  for (int i = 0; i < 40; ++i) costs.push_back(double((i * 7919) % 13 + 1) * (i % 5 == 0 ? 16 : 1));
  std::vector<std::size_t> pending;
  for (std::size_t i = 0; i < costs.size(); ++i)
    if (i % 3 != 1) pending.push_back(i);  // some were done by an earlier run
  for (const int size : {1, 2, 3, 5}) {
    std::vector<int> owner(costs.size(), -1);
    std::vector<double> load(std::size_t(size), 0.0);
    for (int rank = 0; rank < size; ++rank)
      for (const std::size_t layer : share_of(pending, costs, rank, size)) {
        EXPECT_EQ(owner[layer], -1) << "layer " << layer << " given twice";
        owner[layer] = rank;
        load[std::size_t(rank)] += costs[layer];
      }
    for (std::size_t i = 0; i < costs.size(); ++i) EXPECT_EQ(owner[i] >= 0, i % 3 != 1) << i << " of " << size;
    const double max_cost = *std::max_element(costs.begin(), costs.end());
    EXPECT_LE(*std::max_element(load.begin(), load.end()) - *std::min_element(load.begin(), load.end()), max_cost);
  }
}

TEST(Agree, OneProcessRethrowsItsOwnError) {
  auto group = single_process_group();
  EXPECT_NO_THROW(agree(group.get(), nullptr));
  EXPECT_THROW(agree(group.get(), std::make_exception_ptr(Error("x"))), Error);
  EXPECT_THROW(agree(nullptr, std::make_exception_ptr(std::runtime_error("y"))), std::runtime_error);
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
