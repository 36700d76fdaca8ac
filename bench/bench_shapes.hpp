// The weight shapes the benchmarks run on: bench/shapes/pixart_sigma.txt, sana.txt and flux.txt
// ("rows cols" per line, '#' comments), so that every benchmark measures the same real model shapes.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

struct Shape {
  std::int64_t rows, cols;
};

// `model`: pixart_sigma, sana or flux (bench/shapes/<model>.txt). The folder is the source tree's,
// or $LORAQ_BENCH_SHAPES where the programs run elsewhere (scripts/device-check.sh).
inline std::vector<Shape> load_shapes(const std::string& model = "pixart_sigma") {
  const char* dir = std::getenv("LORAQ_BENCH_SHAPES");
  std::ifstream in(std::string(dir && *dir ? dir : LORAQ_BENCH_SHAPES) + "/" + model + ".txt");
  std::vector<Shape> shapes;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    Shape s{};
    if (fields >> s.rows >> s.cols) shapes.push_back(s);
  }
  if (shapes.empty() && model == "pixart_sigma") shapes = {{1152, 1152}, {4608, 1152}, {1152, 4608}};
  return shapes;
}
