// Per-layer reports: JSON for programs, CSV for spreadsheets, Markdown for people.
#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "loraq/pipeline.hpp"
#include "pipeline_util.hpp"

namespace loraq {

std::vector<std::filesystem::path> write_reports(const std::vector<LayerReport>& layers,
                                                 const std::filesystem::path& stem, const std::string& title) {
  // The output SQNR columns appear when activations were given (loraq/activations.hpp).
  const bool sqnr = std::any_of(layers.begin(), layers.end(), [](const LayerReport& r) {
    return r.metrics.output_sqnr_db.has_value();
  });
  nlohmann::ordered_json json = nlohmann::ordered_json::array();
  std::string csv = std::string("layer,out_features,in_features,method,residual,branch,rank,bits_per_value,relative_error,"
                                "branch_quant_error,seconds") + (sqnr ? ",output_sqnr_db\n" : "\n");
  std::string md = "# " + title + "\n\n| layer | shape | method | Q1 | Q2 | rank | bits/value | rel. error | " +
                   (sqnr ? "SQNR dB | " : "") + "seconds |\n|---|---|---|---|---|---|---|---|" + (sqnr ? "---|" : "") +
                   "---|\n";
  double weighted_error = 0, signal_weight = 0, bits = 0, seconds = 0;
  for (const LayerReport& r : layers) {
    const LayerMetrics& m = r.metrics;
    json.push_back({{"layer", r.name},
                    {"shape", {r.out_features, r.in_features}},
                    {"method", r.method},
                    {"residual", r.residual_format},
                    {"branch", r.branch_format},
                    {"rank", r.rank}});
    json.back().update(metrics_to_json(m));
    const std::string sqnr_text = m.output_sqnr_db ? fmt::format("{:.2f}", *m.output_sqnr_db) : "";
    csv += fmt::format("{},{},{},{},{},{},{},{:.6g},{:.6g},{:.6g},{:.6g}{}\n", r.name, r.out_features, r.in_features,
                       r.method, r.residual_format, r.branch_format, r.rank, m.bits_per_value, m.relative_error,
                       m.branch_quant_error, m.seconds, sqnr ? "," + sqnr_text : "");
    md += fmt::format("| {} | {}x{} | {} | {} | {} | {} | {:.3f} | {:.4e} | {}{:.3f} |\n", r.name, r.out_features,
                      r.in_features, r.method, r.residual_format, r.branch_format.empty() ? "-" : r.branch_format,
                      r.rank, m.bits_per_value, m.relative_error, sqnr ? (sqnr_text.empty() ? "- | " : sqnr_text + " | ") : "",
                      m.seconds);
    const double n = double(r.out_features * r.in_features);
    weighted_error += m.relative_error * n, signal_weight += n, bits += m.bits_per_value * n, seconds += m.seconds;
  }
  if (signal_weight > 0)
    md += fmt::format("\n{} layers; parameter-weighted mean relative error {:.4e}, {:.3f} bits per value, {:.1f} s "
                      "of method time.\n",
                      layers.size(), weighted_error / signal_weight, bits / signal_weight, seconds);
  const std::filesystem::path json_path = stem.string() + ".json", csv_path = stem.string() + ".csv",
                              md_path = stem.string() + ".md";
  write_text_file_atomic(json_path, json.dump(1) + "\n");
  write_text_file_atomic(csv_path, csv);
  write_text_file_atomic(md_path, md);
  return {json_path, csv_path, md_path};
}

}  // namespace loraq
