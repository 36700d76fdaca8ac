// loraq: post-training quantization of transformer weights. `loraq --help` lists the subcommands.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "commands.hpp"
#include "loraq/error.hpp"
#include "loraq/linalg.hpp"

int main(int argc, char** argv) {
  // OpenBLAS picks its kernels when it loads; on a CPU newer than it, the slow generic ones.
  loraq::linalg::use_widest_blas_kernels(argv);
  CLI::App app{"loraq: data-free low-rank + quantization of transformer weights (LoRaQ, SVDQuant, MX formats)"};
  app.set_version_flag("--version", std::string("loraq ") + LORAQ_VERSION + " (OpenBLAS kernels: " +
                                        loraq::linalg::running_blas_core() + ")");
  app.require_subcommand(1);
  const std::vector<loraq::cli::Command> commands = {
      loraq::cli::add_formats_command(app),
      loraq::cli::add_cast_command(app),
      loraq::cli::add_quantize_command(app),
      loraq::cli::add_export_command(app),
      loraq::cli::add_eval_command(app),
      loraq::cli::add_inspect_command(app),
      loraq::cli::add_bench_command(app),
      loraq::cli::add_run_linear_command(app),
  };
  try {
    app.parse(argc, argv);
    for (const loraq::cli::Command& command : commands)
      if (command.app->parsed()) return command.run();
    return 2;
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const loraq::Error& e) {
    std::fprintf(stderr, "loraq: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loraq: error: %s\n", e.what());
    return 1;
  }
}
