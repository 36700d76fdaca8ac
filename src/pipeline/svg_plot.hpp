// A scatter plot as a standalone SVG file: enough for error-against-bits charts, with no plotting
// library behind it (the reports are written by the C++ command, which has no Python).
#pragma once

#include <string>
#include <vector>

namespace loraq {

struct PlotPoint {
  double x = 0, y = 0;
  std::string label;   // written beside the point
  std::string series;  // points of a series share a colour and a legend entry
};

struct Plot {
  std::string title, x_label, y_label;
  std::vector<PlotPoint> points;
};

// The SVG text. Axes span the points with a margin, ticks at 1, 2 or 5 times a power of ten.
std::string svg_scatter(const Plot& plot);

}  // namespace loraq
