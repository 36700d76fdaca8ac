#!/usr/bin/env bash
# Configures and builds loraq into build/ (Release; warnings are errors). The CUDA backend is built
# when nvcc is found (on PATH or at /usr/local/cuda), the MPI layer when OpenMPI is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORAQ_WERROR=ON "$@" >/dev/null
cmake --build build -j "$(nproc)"
