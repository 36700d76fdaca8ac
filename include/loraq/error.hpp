// The one exception type loraq throws for bad input: its message names the file, tensor or key and
// what was expected, so the command line can print it on one line and exit non-zero.
#pragma once

#include <stdexcept>
#include <string>

namespace loraq {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace loraq
