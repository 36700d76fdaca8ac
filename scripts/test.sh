#!/usr/bin/env bash
# Every test: install (apt-get and the Python references), build, run the C++ suite (CTest:
# GoogleTest, MPI with two ranks, the CUDA kernels on the CPU through the SIMT emulation, also under
# ThreadSanitizer and AddressSanitizer), the file readers' fuzz targets (scripts/fuzz.sh: libFuzzer with
# sanitizers, a separate clang build) and the Python cross-checks (pytest: ml_dtypes, torchao, the
# safetensors library, the command line, and the Python package after `pip install .` into a fresh
# virtual environment). Skips are printed with their reason.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --python
scripts/build.sh
venv="${LORAQ_VENV:-$HOME/.cache/loraq/venv}"

echo "== C++ tests (ctest)"
(cd build && ctest --output-on-failure -j "$(nproc)" --timeout 600)

echo "== Fuzzing the file readers (libFuzzer, 20 s per target)"
scripts/fuzz.sh 20

echo "== Python package: pip install . into a fresh virtual environment"
# build/python-venv is made anew each run, without the test environment's packages; it gets the
# build requirements of pyproject.toml (scikit-build-core, nanobind) from PyPI and builds without
# isolation in build/python-wheel, so that a second run recompiles only what changed (a plain
# `pip install .` also works: it builds in a temporary folder, in about 2.5 minutes on two cores with CUDA).
fresh=build/python-venv
rm -rf "$fresh"
"$venv/bin/python" -m venv "$fresh"
scripts/python-package.sh "$fresh"
"$fresh/bin/python" -c "import loraq; print('import loraq:', loraq.__version__)"
# The same build, as a wheel, into the test environment (ninja finds nothing to do).
rm -rf build/python-dist
pip_quiet=(-q --disable-pip-version-check)
"$fresh/bin/pip" wheel "${pip_quiet[@]}" --no-build-isolation --no-deps -C build-dir=build/python-wheel -w build/python-dist .
"$venv/bin/pip" install "${pip_quiet[@]}" --no-deps --force-reinstall build/python-dist/loraq-*.whl

echo "== Python cross-checks (pytest)"
LORAQ_BIN="$PWD/build/tools/cli/loraq" LORAQ_IO_TOOL="$PWD/build/tests/io_roundtrip_tool" \
  "$venv/bin/python" -m pytest -rs -q tests/python
