// Process groups: how loraq spreads work over processes. The core never includes an MPI header;
// the MPI implementation lives in src/dist/mpi_group.cpp (built when MPI is found), and a build
// without it gets a stand-in that says how to rebuild.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

namespace loraq {

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void barrier() = 0;
  // Every rank's bytes, in rank order, on every rank.
  virtual std::vector<std::vector<std::byte>> all_gather(std::span<const std::byte> mine) = 0;
};

// One process: rank 0 of 1.
std::unique_ptr<ProcessGroup> single_process_group();

// True when this build has the MPI layer.
bool mpi_built();
// The MPI world (initialising MPI once, finalised at exit). Throws Error in a build without MPI.
std::unique_ptr<ProcessGroup> mpi_world_group();
// The world group when launched under mpirun/srun with more than one process, else a single one.
std::unique_ptr<ProcessGroup> default_process_group();
// Processes of this launch on this machine (the launcher's local size; 1 outside a launcher): the
// cores are shared among them.
int local_process_count();
// This process's index among them (0 outside a launcher): under mpirun each rank takes GPU
// local_process_rank() % the GPU count.
int local_process_rank();

}  // namespace loraq
