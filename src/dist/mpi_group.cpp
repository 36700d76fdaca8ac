// The MPI process group (OpenMPI from Debian). MPI is initialised on first use and finalised at exit.
#include <mpi.h>

#include <cstdlib>
#include <string>

#include "loraq/dist.hpp"
#include "loraq/error.hpp"

namespace loraq {
namespace {

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) throw Error(std::string("MPI call failed: ") + what + " returned " + std::to_string(rc));
}

class MpiWorldGroup final : public ProcessGroup {
 public:
  MpiWorldGroup() {
    int initialized = 0;
    check(MPI_Initialized(&initialized), "MPI_Initialized");
    if (!initialized) {
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      std::atexit([] {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
      });
    }
    check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

  std::vector<std::vector<std::byte>> all_gather(std::span<const std::byte> mine) override {
    const int my_count = static_cast<int>(mine.size());
    if (mine.size() > std::size_t(INT32_MAX)) throw Error("all_gather: more than 2 GiB from one rank");
    const auto ranks = static_cast<std::size_t>(size_);
    std::vector<int> counts(ranks), displacements(ranks);
    check(MPI_Allgather(&my_count, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD), "MPI_Allgather");
    long long total = 0;
    for (int r = 0; r < size_; ++r) {
      if (total > INT32_MAX) throw Error("all_gather: more than 2 GiB in all");
      displacements[std::size_t(r)] = static_cast<int>(total);
      total += counts[std::size_t(r)];
    }
    std::vector<std::byte> all(static_cast<std::size_t>(total));
    check(MPI_Allgatherv(mine.data(), my_count, MPI_BYTE, all.data(), counts.data(), displacements.data(), MPI_BYTE,
                         MPI_COMM_WORLD),
          "MPI_Allgatherv");
    std::vector<std::vector<std::byte>> result(ranks);
    for (int r = 0; r < size_; ++r) {
      const auto begin = all.begin() + displacements[std::size_t(r)];
      result[std::size_t(r)].assign(begin, begin + counts[std::size_t(r)]);
    }
    return result;
  }

 private:
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

bool mpi_built() { return true; }
std::unique_ptr<ProcessGroup> mpi_world_group() { return std::make_unique<MpiWorldGroup>(); }

}  // namespace loraq
