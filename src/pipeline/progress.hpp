// Progress of a long run on stderr: a redrawn bar with layer name, rate and ETA on a terminal,
// one plain line per layer otherwise (logs, CI).
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace loraq {

class Progress {
 public:
  enum class Style { bar, lines, quiet };  // quiet still says when a run resumes
  // `done_layers`/`done_params`: what an earlier run already finished (resume). `unit`: what the
  // counted items are called in messages.
  Progress(std::string what, std::size_t total_layers, std::uint64_t total_params, std::size_t done_layers,
           std::uint64_t done_params, Style style, std::string unit = "layers");
  // Thread-safe: one layer finished.
  void layer_done(const std::string& name, std::uint64_t params, const std::string& detail);
  void finish();
  void abandon();  // the run failed: leave the terminal clean for the error message

  static bool stderr_is_terminal();

 private:
  void draw(const std::string& name);

  std::string what_, unit_;
  std::size_t total_layers_, done_layers_;
  std::uint64_t total_params_, done_params_, resumed_params_;
  Style style_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  std::mutex mutex_;
};

}  // namespace loraq
