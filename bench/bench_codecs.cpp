// Codec throughput at PixArt-Sigma shapes, in GB/s of fp32 input and as a ratio to a memcpy of the
// same bytes with the same thread count, measured in the same run (the anchor).
//
//   build/bench/bench_codecs --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// Inputs rotate through enough matrices (> 64 MiB) that none is in cache when it is read again.
// Quote the medians of repetitions: this machine is shared and noisy.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench_shapes.hpp"
#include "loraq/format.hpp"

namespace {

// 64-byte aligned storage, as numpy and torch give for large arrays (vector stores stay aligned).
template <class T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  bool operator==(const Aligned64&) const { return true; }
};
using FloatBuffer = std::vector<float, Aligned64<float>>;

// Rotating inputs of one shape, and an output buffer per input.
struct Buffers {
  std::vector<FloatBuffer> inputs, outputs;
  explicit Buffers(const Shape& s) {
    const std::size_t n = std::size_t(s.rows * s.cols);
    const std::size_t copies = std::max<std::size_t>(2, (64u << 20) / (n * sizeof(float)) + 1);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (std::size_t c = 0; c < copies; ++c) {
      inputs.emplace_back(n);
      for (float& v : inputs.back()) v = normal(rng);
      outputs.emplace_back(n);
    }
  }
};

Buffers& buffers_for(const Shape& s) {
  static std::map<std::pair<std::int64_t, std::int64_t>, Buffers> cache;
  auto it = cache.find({s.rows, s.cols});
  if (it == cache.end()) it = cache.emplace(std::make_pair(s.rows, s.cols), Buffers(s)).first;
  return it->second;
}

// memcpy split over all threads: the anchor.
void parallel_memcpy(float* dst, const float* src, std::size_t n) {
#pragma omp parallel
  {
    const std::size_t threads = std::size_t(omp_get_num_threads()), t = std::size_t(omp_get_thread_num());
    const std::size_t begin = n * t / threads, end = n * (t + 1) / threads;
    std::memcpy(dst + begin, src + begin, (end - begin) * sizeof(float));
  }
}

// Each codec iteration is timed next to a memcpy of the same bytes (alternating, so both see the
// same machine state on this noisy shared host); vs_memcpy is total memcpy time / total codec time.
template <class Codec>
void timed_against_memcpy(benchmark::State& state, const Shape& s, Codec&& codec) {
  Buffers& b = buffers_for(s);
  std::size_t k = 0;
  double codec_seconds = 0, memcpy_seconds = 0;
  for (auto _ : state) {
    const std::size_t next = (k + 1) % b.inputs.size();
    const double t0 = omp_get_wtime();
    parallel_memcpy(b.outputs[next].data(), b.inputs[next].data(), b.inputs[next].size());
    const double t1 = omp_get_wtime();
    codec(b.inputs[k], b.outputs[k]);
    benchmark::ClobberMemory();
    const double t2 = omp_get_wtime();
    state.SetIterationTime(t2 - t1);
    codec_seconds += t2 - t1;
    memcpy_seconds += t1 - t0;
    k = (k + 2) % b.inputs.size();
  }
  state.SetBytesProcessed(std::int64_t(double(state.iterations()) * double(s.rows * s.cols) * sizeof(float)));
  state.counters["vs_memcpy"] = memcpy_seconds / codec_seconds;
  state.counters["memcpy_GBps"] = double(state.iterations()) * double(s.rows * s.cols) * sizeof(float) / memcpy_seconds / 1e9;
}

void bm_memcpy(benchmark::State& state, Shape s) {
  Buffers& b = buffers_for(s);
  std::size_t k = 0;
  for (auto _ : state) {
    parallel_memcpy(b.outputs[k].data(), b.inputs[k].data(), b.inputs[k].size());
    benchmark::ClobberMemory();
    k = (k + 1) % b.inputs.size();
  }
  state.SetBytesProcessed(std::int64_t(double(state.iterations()) * double(s.rows * s.cols) * sizeof(float)));
}

void bm_fake_quantize(benchmark::State& state, loraq::Format f, Shape s) {
  timed_against_memcpy(state, s, [&](const FloatBuffer& in, FloatBuffer& out) {
    loraq::fake_quantize(f, in, out, s.rows, s.cols);
  });
}

void bm_pack(benchmark::State& state, loraq::Format f, Shape s) {
  timed_against_memcpy(state, s, [&](const FloatBuffer& in, FloatBuffer&) {
    loraq::PackedMatrix p = loraq::pack(f, in, s.rows, s.cols);
    benchmark::DoNotOptimize(p.codes.data());
  });
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<Shape> shapes = load_shapes();
  const loraq::Format formats[] = {loraq::Format::mxfp4, loraq::Format::mxint8, loraq::Format::sint4,
                                   loraq::Format::nvfp4};
  for (const Shape& s : shapes) {
    const std::string shape = std::to_string(s.rows) + "x" + std::to_string(s.cols);
    benchmark::RegisterBenchmark(("memcpy/" + shape).c_str(), bm_memcpy, s)->UseRealTime();
    for (loraq::Format f : formats) {
      const std::string name(loraq::format_info(f).name);
      benchmark::RegisterBenchmark(("fake_quantize/" + name + "/" + shape).c_str(), bm_fake_quantize, f, s)
          ->UseManualTime();
      benchmark::RegisterBenchmark(("pack/" + name + "/" + shape).c_str(), bm_pack, f, s)->UseManualTime();
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("anchor", "memcpy of the same fp32 bytes with " + std::to_string(omp_get_max_threads()) +
                                            " threads, timed alternately with each codec iteration");
  benchmark::AddCustomContext("isa", std::string(loraq::isa_name(loraq::default_isa())));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
