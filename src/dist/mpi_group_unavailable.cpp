// Stand-in for builds without MPI (LORAQ_MPI=OFF or no MPI found).
#include "loraq/dist.hpp"
#include "loraq/error.hpp"

namespace loraq {
bool mpi_built() { return false; }
std::unique_ptr<ProcessGroup> mpi_world_group() {
  throw Error("this loraq was built without MPI: install libopenmpi-dev and rebuild with -DLORAQ_MPI=ON");
}
}  // namespace loraq
