#!/usr/bin/env bash
# Every test: install (apt-get and the Python references), build, run the C++ suite (CTest:
# GoogleTest, MPI with two ranks), the file readers' fuzz targets (scripts/fuzz.sh: libFuzzer with
# sanitizers, a separate clang build) and the Python cross-checks (pytest: ml_dtypes, torchao, the
# safetensors library, the command line). Skips are printed with their reason.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --python
scripts/build.sh
venv="${LORAQ_VENV:-$HOME/.cache/loraq/venv}"

echo "== C++ tests (ctest)"
(cd build && ctest --output-on-failure -j "$(nproc)" --timeout 600)

echo "== Fuzzing the file readers (libFuzzer, 20 s per target)"
scripts/fuzz.sh 20

echo "== Python cross-checks (pytest)"
LORAQ_BIN="$PWD/build/tools/cli/loraq" LORAQ_IO_TOOL="$PWD/build/tests/io_roundtrip_tool" \
  "$venv/bin/python" -m pytest -rs -q tests/python
