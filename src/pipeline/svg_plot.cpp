#include "svg_plot.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace loraq {
namespace {

constexpr double kWidth = 720, kHeight = 480, kLeft = 80, kRight = 200, kTop = 40, kBottom = 60;
constexpr const char* kColours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string escape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// A tick step of 1, 2 or 5 x 10^k giving about five intervals over `span`.
double tick_step(double span) {
  const double raw = span / 5, power = std::pow(10.0, std::floor(std::log10(raw)));
  for (const double m : {1.0, 2.0, 5.0})
    if (raw <= m * power) return m * power;
  return 10 * power;
}

struct Axis {
  double lo, hi, step;
};

Axis axis_for(double lo, double hi, bool from_zero) {
  if (from_zero) lo = std::min(lo, 0.0);
  if (hi <= lo) hi = lo + (lo == 0 ? 1 : std::fabs(lo) * 0.1);
  const double margin = (hi - lo) * 0.08;
  if (!from_zero) lo -= margin;
  hi += margin;
  const double step = tick_step(hi - lo);
  return {std::floor(lo / step) * step, std::ceil(hi / step) * step, step};
}

}  // namespace

std::string svg_scatter(const Plot& plot) {
  double x_lo = 1e300, x_hi = -1e300, y_lo = 1e300, y_hi = -1e300;
  for (const PlotPoint& p : plot.points) {
    x_lo = std::min(x_lo, p.x), x_hi = std::max(x_hi, p.x);
    y_lo = std::min(y_lo, p.y), y_hi = std::max(y_hi, p.y);
  }
  if (plot.points.empty()) x_lo = y_lo = 0, x_hi = y_hi = 1;
  const Axis xa = axis_for(x_lo, x_hi, false), ya = axis_for(y_lo, y_hi, true);
  const double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  const auto px = [&](double x) { return kLeft + (x - xa.lo) / (xa.hi - xa.lo) * plot_w; };
  const auto py = [&](double y) { return kTop + plot_h - (y - ya.lo) / (ya.hi - ya.lo) * plot_h; };

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">{3}</text>\n",
      kWidth, kHeight, kLeft + plot_w / 2, escape(plot.title));
  // Grid, ticks and axis labels.
  for (double x = xa.lo; x <= xa.hi + xa.step / 2; x += xa.step)
    svg += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#ddd\"/>"
                       "<text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4:.4g}</text>\n",
                       px(x), kTop, kTop + plot_h, kTop + plot_h + 16, x);
  for (double y = ya.lo; y <= ya.hi + ya.step / 2; y += ya.step)
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>"
                       "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5:.4g}</text>\n",
                       kLeft, py(y), kLeft + plot_w, kLeft - 6, py(y) + 4, y);
  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n", kLeft, kTop,
                     plot_w, plot_h);
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", kLeft + plot_w / 2, kHeight - 16,
                     escape(plot.x_label));
  svg += fmt::format("<text transform=\"translate(18 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                     kTop + plot_h / 2, escape(plot.y_label));
  // Points, coloured by series, and the legend.
  std::vector<std::string> series;
  for (const PlotPoint& p : plot.points)
    if (std::find(series.begin(), series.end(), p.series) == series.end()) series.push_back(p.series);
  const auto colour = [&](const std::string& s) {
    const auto index = std::size_t(std::find(series.begin(), series.end(), s) - series.begin());
    return kColours[index % std::size(kColours)];
  };
  for (const PlotPoint& p : plot.points)
    svg += fmt::format("<circle cx=\"{0:.1f}\" cy=\"{1:.1f}\" r=\"4\" fill=\"{2}\"><title>{3}: {4:.4g} bits, {5:.4g}"
                       "</title></circle><text x=\"{6:.1f}\" y=\"{7:.1f}\" font-size=\"9\" fill=\"{2}\">{3}</text>\n",
                       px(p.x), py(p.y), colour(p.series), escape(p.label), p.x, p.y, px(p.x) + 6, py(p.y) - 4);
  for (std::size_t i = 0; i < series.size(); ++i) {
    const double y = kTop + 10 + 18 * double(i);
    svg += fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"5\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
                       kLeft + plot_w + 20, y, colour(series[i]), kLeft + plot_w + 30, y + 4, escape(series[i]));
  }
  return svg + "</svg>\n";
}

}  // namespace loraq
