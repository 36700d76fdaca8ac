// Spreading a run's layers over the processes of a group (mpirun), and agreeing on failure so that
// no process waits forever for one that has stopped.
#pragma once

#include <cstdint>
#include <exception>
#include <vector>

#include "loraq/dist.hpp"

namespace loraq {

// The share of `pending` (indices into `costs`) that process `rank` of `size` does: the costliest
// first, each to the least loaded process so far (lowest rank on ties), so every process derives
// the same assignment without talking to the others.
std::vector<std::size_t> share_of(const std::vector<std::size_t>& pending, const std::vector<double>& costs, int rank,
                                  int size);

// A collective step: every process of `group` calls it with what it caught (null: nothing). When
// any process failed, every process throws Error saying which rank failed and why (a single
// process rethrows its own exception). Without a group, or with one process, it only rethrows.
void agree(ProcessGroup* group, const std::exception_ptr& error);

}  // namespace loraq
