// The tables and plots of `loraq bench`: Markdown for people, CSV for spreadsheets, JSON for
// programs, one SVG of error against bits per value per residual format.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "loraq/bench.hpp"
#include "pipeline_util.hpp"
#include "svg_plot.hpp"

namespace loraq {
namespace {

// One configuration over every layer: parameter-weighted means, as the paper's weight-space figures.
struct Summary {
  double relative_error = 0, branch_quant_error = 0, bits_per_value = 0, seconds = 0;
  double sqnr_db = 0;  // mean over the layers that have it
  int sqnr_layers = 0, min_rank = std::numeric_limits<int>::max(), max_rank = 0;
};

std::vector<Summary> summarize(const BenchResult& r) {
  std::vector<Summary> s(r.configs.size());
  std::vector<double> parameters(r.configs.size(), 0.0);
  for (const BenchRow& row : r.rows) {
    Summary& t = s[row.config];
    const double n = double(row.out_features * row.in_features);
    parameters[row.config] += n;
    t.relative_error += row.metrics.relative_error * n;
    t.branch_quant_error += row.metrics.branch_quant_error * n;
    t.bits_per_value += row.metrics.bits_per_value * n;
    t.seconds += row.metrics.seconds;
    if (row.metrics.output_sqnr_db && std::isfinite(*row.metrics.output_sqnr_db))
      t.sqnr_db += *row.metrics.output_sqnr_db, ++t.sqnr_layers;
    t.min_rank = std::min(t.min_rank, row.rank), t.max_rank = std::max(t.max_rank, row.rank);
  }
  for (std::size_t c = 0; c < s.size(); ++c) {
    if (parameters[c] > 0) {
      s[c].relative_error /= parameters[c], s[c].branch_quant_error /= parameters[c];
      s[c].bits_per_value /= parameters[c];
    }
    if (s[c].sqnr_layers > 0) s[c].sqnr_db /= s[c].sqnr_layers;
  }
  return s;
}

std::string rank_text(const Summary& s) {
  if (s.max_rank == 0) return "-";
  return s.min_rank == s.max_rank ? std::to_string(s.max_rank) : fmt::format("{}-{}", s.min_rank, s.max_rank);
}

std::string branch_text(const BenchConfig& c) {
  return c.recipe.rank || c.recipe.budget ? std::string(format_info(c.recipe.branch_format).name) : "-";
}

std::string sqnr_text(const std::optional<double>& db) {
  if (!db) return "";
  return std::isfinite(*db) ? fmt::format("{:.2f}", *db) : "inf";
}

std::vector<std::string> residual_formats(const BenchResult& r) {
  std::vector<std::string> out;
  for (const BenchConfig& c : r.configs) {
    const std::string name(format_info(c.recipe.residual_format).name);
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  }
  return out;
}

std::string markdown(const BenchResult& r, const std::vector<Summary>& s, const std::string& title, bool sqnr) {
  const std::size_t n_configs = r.configs.size(), n_layers = r.rows.size() / std::max<std::size_t>(1, n_configs);
  std::string md = fmt::format("# {}\n\n{} layers x {} configurations in {:.1f} s. Errors are relative Frobenius "
                               "errors of the effective weight, ||W_eff - W|| / ||W||, averaged weighted by "
                               "parameters; bits per value count every stored byte (codes, scales, branch).\n\n",
                               title, n_layers, n_configs, r.seconds);
  md += std::string("## Summary\n\n| configuration | method | Q1 | Q2 | rank | bits/value | rel. error | branch q. error |") +
        (sqnr ? " SQNR dB |" : "") + " seconds |\n|---|---|---|---|---|---|---|---|" + (sqnr ? "---|" : "") + "---|\n";
  for (std::size_t c = 0; c < n_configs; ++c) {
    const BenchConfig& cfg = r.configs[c];
    md += fmt::format("| {} | {} | {} | {} | {} | {:.3f} | {:.4e} | {:.3e} |{} {:.1f} |\n", cfg.label, cfg.recipe.method,
                      format_info(cfg.recipe.residual_format).name, branch_text(cfg), rank_text(s[c]), s[c].bits_per_value,
                      s[c].relative_error, s[c].branch_quant_error,
                      sqnr ? (s[c].sqnr_layers ? fmt::format(" {:.2f} |", s[c].sqnr_db) : " - |") : "", s[c].seconds);
  }
  if (!r.claims.empty()) {
    md += "\n## Claims\n\nA claim A<=B holds on a layer when A's relative error is at most B's; in aggregate, on the "
          "parameter-weighted means above.\n\n| claim | Q1 | layers where it holds | in aggregate |\n|---|---|---|---|\n";
    for (const ClaimResult& c : r.claims)
      md += fmt::format("| {} | {} | {} / {} | {} |\n", fmt::join(c.labels, " <= "), c.residual, c.holding, c.layers,
                        c.holds_in_aggregate ? "holds" : "fails");
    for (const ClaimResult& c : r.claims) {
      if (c.failures.empty()) continue;
      md += fmt::format("\nWhere `{}` fails ({}):\n\n", fmt::join(c.labels, " <= "), c.residual);
      for (const std::string& f : c.failures) md += "- " + f + "\n";
    }
  }
  // Per layer, one table per residual format; the best configuration of each row in bold.
  for (const std::string& residual : residual_formats(r)) {
    std::vector<std::size_t> cols;
    for (std::size_t c = 0; c < n_configs; ++c)
      if (format_info(r.configs[c].recipe.residual_format).name == residual) cols.push_back(c);
    md += fmt::format("\n## Relative error per layer, residual {}\n\n| layer | shape |", residual);
    for (std::size_t c : cols) md += " " + r.configs[c].label + " |";
    md += "\n|---|---|";
    for (std::size_t k = 0; k < cols.size(); ++k) md += "---|";
    md += "\n";
    for (std::size_t l = 0; l < n_layers; ++l) {
      const BenchRow* row = &r.rows[l * n_configs];
      double best = std::numeric_limits<double>::infinity();
      for (std::size_t c : cols) best = std::min(best, row[c].metrics.relative_error);
      md += fmt::format("| {} | {}x{} |", row->layer, row->out_features, row->in_features);
      for (std::size_t c : cols) {
        const double e = row[c].metrics.relative_error;
        md += e == best ? fmt::format(" **{:.4e}** |", e) : fmt::format(" {:.4e} |", e);
      }
      md += "\n";
    }
  }
  return md;
}

std::string csv(const BenchResult& r, bool sqnr) {
  std::string out = std::string("layer,out_features,in_features,configuration,method,residual,branch,rank,bits_per_value,"
                                "relative_error,branch_quant_error,seconds") + (sqnr ? ",output_sqnr_db\n" : "\n");
  for (const BenchRow& row : r.rows) {
    const BenchConfig& c = r.configs[row.config];
    const LayerMetrics& m = row.metrics;
    out += fmt::format("{},{},{},{},{},{},{},{},{:.6g},{:.6g},{:.6g},{:.6g}{}\n", row.layer, row.out_features,
                       row.in_features, c.label, c.recipe.method, format_info(c.recipe.residual_format).name,
                       branch_text(c), row.rank, m.bits_per_value, m.relative_error, m.branch_quant_error, m.seconds,
                       sqnr ? "," + sqnr_text(m.output_sqnr_db) : "");
  }
  return out;
}

nlohmann::ordered_json json(const BenchResult& r, const std::vector<Summary>& s) {
  nlohmann::ordered_json j;
  j["loraq"] = LORAQ_VERSION;
  j["seconds"] = r.seconds;
  j["configurations"] = nlohmann::ordered_json::array();
  for (std::size_t c = 0; c < r.configs.size(); ++c) {
    const BenchConfig& cfg = r.configs[c];
    nlohmann::ordered_json e = {{"label", cfg.label},
                                {"method", cfg.recipe.method},
                                {"residual", format_info(cfg.recipe.residual_format).name},
                                {"branch", branch_text(cfg)},
                                {"rank", rank_text(s[c])},
                                {"bits_per_value", s[c].bits_per_value},
                                {"relative_error", s[c].relative_error},
                                {"branch_quant_error", s[c].branch_quant_error},
                                {"seconds", s[c].seconds}};
    if (s[c].sqnr_layers) e["output_sqnr_db"] = s[c].sqnr_db;
    j["configurations"].push_back(e);
  }
  j["rows"] = nlohmann::ordered_json::array();
  for (const BenchRow& row : r.rows) {
    nlohmann::ordered_json e = {{"layer", row.layer},
                                {"shape", {row.out_features, row.in_features}},
                                {"configuration", r.configs[row.config].label},
                                {"rank", row.rank}};
    e.update(metrics_to_json(row.metrics));
    j["rows"].push_back(e);
  }
  j["claims"] = nlohmann::ordered_json::array();
  for (const ClaimResult& c : r.claims)
    j["claims"].push_back({{"claim", c.claim},
                           {"residual", c.residual},
                           {"configurations", c.labels},
                           {"layers", c.layers},
                           {"holding", c.holding},
                           {"holds_in_aggregate", c.holds_in_aggregate},
                           {"failures", c.failures}});
  return j;
}

}  // namespace

std::vector<std::filesystem::path> write_bench_reports(const BenchResult& result, const std::filesystem::path& folder,
                                                       const std::string& title) {
  const std::vector<Summary> s = summarize(result);
  const bool sqnr = std::any_of(result.rows.begin(), result.rows.end(),
                                [](const BenchRow& row) { return row.metrics.output_sqnr_db.has_value(); });
  std::vector<std::filesystem::path> files = {folder / "bench.md", folder / "bench.csv", folder / "bench.json"};
  write_text_file_atomic(files[0], markdown(result, s, title, sqnr));
  write_text_file_atomic(files[1], csv(result, sqnr));
  write_text_file_atomic(files[2], json(result, s).dump(1) + "\n");
  for (const std::string& residual : residual_formats(result)) {
    Plot plot{title + ", residual " + residual, "bits per value (codes, scales and branch)",
              "relative weight error ||W_eff - W|| / ||W||", {}};
    for (std::size_t c = 0; c < result.configs.size(); ++c) {
      const BenchConfig& cfg = result.configs[c];
      if (format_info(cfg.recipe.residual_format).name != residual) continue;
      const std::string branch = branch_text(cfg);
      plot.points.push_back({s[c].bits_per_value, s[c].relative_error,
                             branch == "-" ? cfg.recipe.method : branch + " r" + rank_text(s[c]), cfg.recipe.method});
    }
    files.push_back(folder / ("bench-" + residual + ".svg"));
    write_text_file_atomic(files.back(), svg_scatter(plot));
  }
  return files;
}

}  // namespace loraq
