#!/usr/bin/env bash
# Installs what loraq needs on Debian 12: the build toolchain and libraries (apt-get), and with
# --python a virtual environment holding the test references (pip, requirements-test.txt: numpy,
# ml_dtypes, torch, torchao, safetensors, huggingface_hub, diffusers, pytest). The apt packages are
# also all that `pip install .` needs (cmake, ninja, g++, python3-dev, python3-venv and the
# libraries): pip brings scikit-build-core and nanobind from PyPI. Safe to run again: it only
# installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  cmake ninja-build g++ pkg-config git
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev nlohmann-json3-dev libfmt-dev libyaml-cpp-dev
  clang libclang-rt-14-dev libomp-dev   # scripts/fuzz.sh: libFuzzer, and OpenMP for clang's configure
  libopenblas-dev libopenmpi-dev openmpi-bin
  python3 python3-venv python3-dev
  dataset-fashion-mnist                 # the end-to-end model's training data (tools/train_dit.py)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--python" ]; then
  venv="${LORAQ_VENV:-$HOME/.cache/loraq/venv}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "install-deps: creating the Python environment $venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements-test.txt
fi
