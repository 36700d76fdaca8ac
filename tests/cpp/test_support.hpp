// Small helpers the GoogleTest suites share.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "loraq/error.hpp"

namespace loraq::testing {

// The message of the loraq::Error that `f` throws; a test failure (and "") when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const loraq::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a loraq::Error";
  return {};
}

}  // namespace loraq::testing
