#include <cstdlib>

#include "loraq/dist.hpp"

namespace loraq {
namespace {
// Launchers export the world size; a plain run has none of these and stays single-process.
bool launched_with_several_processes() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"})
    if (const char* v = std::getenv(name); v && std::atoi(v) > 1) return true;
  return false;
}
}  // namespace

int local_process_count() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"})
    if (const char* v = std::getenv(name); v && std::atoi(v) > 1) return std::atoi(v);
  return 1;
}

int local_process_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* v = std::getenv(name); v && std::atoi(v) >= 0) return std::atoi(v);
  return 0;
}

std::unique_ptr<ProcessGroup> default_process_group() {
  if (mpi_built() && launched_with_several_processes()) return mpi_world_group();
  return single_process_group();
}
}  // namespace loraq
