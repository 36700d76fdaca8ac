#include "progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace loraq {
namespace {

std::string clock_text(double seconds) {
  const auto s = static_cast<long long>(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60) : fmt::format("{:02}:{:02}", s / 60, s % 60);
}

}  // namespace

Progress::Progress(std::string what, std::size_t total_layers, std::uint64_t total_params, std::size_t done_layers,
                   std::uint64_t done_params, Style style, std::string unit)
    : what_(std::move(what)),
      unit_(std::move(unit)),
      total_layers_(total_layers),
      done_layers_(done_layers),
      total_params_(total_params),
      done_params_(done_params),
      resumed_params_(done_params),
      style_(style),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_ - std::chrono::seconds(1)) {
  if (done_layers > 0)
    std::fprintf(stderr, "%s: resuming: %zu of %zu %s already done\n", what_.c_str(), done_layers, total_layers, unit_.c_str());
}

bool Progress::stderr_is_terminal() { return isatty(STDERR_FILENO) == 1; }

void Progress::layer_done(const std::string& name, std::uint64_t params, const std::string& detail) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++done_layers_;
  done_params_ += params;
  if (style_ == Style::bar) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_draw_ < std::chrono::milliseconds(100) && done_layers_ < total_layers_) return;
    last_draw_ = now;
    draw(name);
  } else if (style_ == Style::lines) {
    std::fprintf(stderr, "%s: [%zu/%zu] %s %s\n", what_.c_str(), done_layers_, total_layers_, name.c_str(), detail.c_str());
  }
}

void Progress::draw(const std::string& name) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? double(done_params_ - resumed_params_) / elapsed : 0;
  const double fraction = total_params_ ? double(done_params_) / double(total_params_) : 1.0;
  const double eta = rate > 0 ? double(total_params_ - done_params_) / rate : 0;
  constexpr int width = 24;
  const int filled = static_cast<int>(fraction * width);
  const std::string bar = std::string(std::size_t(filled), '#') + std::string(std::size_t(width - filled), '.');
  std::string line = fmt::format("\r{}: [{}] {}/{} {:3.0f}% {:.1f} Mparam/s ETA {} {}", what_, bar, done_layers_,
                                 total_layers_, 100 * fraction, rate / 1e6, clock_text(eta), name);
  if (line.size() > 160) line.resize(160);
  std::fprintf(stderr, "%s\033[K", line.c_str());
  std::fflush(stderr);
}

void Progress::finish() {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (style_ == Style::quiet) return;
  if (style_ == Style::bar) std::fprintf(stderr, "\n");
  std::fprintf(stderr, "%s: %zu %s, %.1f M parameters in %s\n", what_.c_str(), done_layers_, unit_.c_str(),
               double(done_params_) / 1e6, clock_text(elapsed).c_str());
}

void Progress::abandon() {
  // End the redrawn bar's line so that the error message that follows starts on its own line.
  if (style_ == Style::bar) std::fprintf(stderr, "\n");
}

}  // namespace loraq
