#include "distribute.hpp"

#include <algorithm>
#include <numeric>
#include <string>

#include "loraq/error.hpp"

namespace loraq {

std::vector<std::size_t> share_of(const std::vector<std::size_t>& pending, const std::vector<double>& costs, int rank,
                                  int size) {
  if (size <= 1) return pending;
  std::vector<std::size_t> order = pending;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(std::size_t(size), 0.0);
  std::vector<std::size_t> mine;
  for (const std::size_t layer : order) {
    const auto least = std::size_t(std::min_element(load.begin(), load.end()) - load.begin());
    load[least] += costs[layer];
    if (int(least) == rank) mine.push_back(layer);
  }
  std::sort(mine.begin(), mine.end());  // checkpoint order: files are read front to back
  return mine;
}

void agree(ProcessGroup* group, const std::exception_ptr& error) {
  if (!group || group->size() <= 1) {
    if (error) std::rethrow_exception(error);
    return;
  }
  std::string message;
  if (error) {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
      message = "unknown error";
    }
    if (message.empty()) message = "error";
  }
  const auto bytes = std::as_bytes(std::span<const char>(message.data(), message.size()));
  const std::vector<std::vector<std::byte>> all = group->all_gather(bytes);
  for (std::size_t r = 0; r < all.size(); ++r) {
    if (all[r].empty()) continue;
    const std::string text(reinterpret_cast<const char*>(all[r].data()), all[r].size());
    if (int(r) == group->rank()) std::rethrow_exception(error);  // this process's own, as it was
    throw Error("rank " + std::to_string(r) + " of " + std::to_string(group->size()) + ": " + text);
  }
}

}  // namespace loraq
