#!/usr/bin/env bash
# Packs what a check on a lent GPU machine needs into .device/bundle.tar.xz (ignored by git): the
# CUDA-enabled programs built here and the Debian libraries they link that a CUDA image lacks
# (OpenBLAS, fmt, yaml-cpp, gfortran, gomp, this compiler's libstdc++). The CUDA libraries come from
# the GPU machine's own toolkit. Then, with the device tool:
#   run(command="scripts/device-check.sh", carry=[".device"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
programs=(build/tools/cli/loraq build/tools/cli/loraq-make-model build/tests/test_cuda build/tests/test_linear_kernel
          build/tests/test_kernel_sets build/bench/bench_cuda build/bench/bench_linear)
rm -rf .device
mkdir -p .device/stage/bin .device/stage/lib
cp "${programs[@]}" .device/stage/bin/
ldd "${programs[@]}" | awk '/=> \// {print $3}' | sort -u |
  grep -v -E '/usr/local/cuda|/libc\.so|/libm\.so|/libdl\.so|/libpthread\.so|/librt\.so' |
  while read -r lib; do cp -L "$lib" .device/stage/lib/; done
# The Python package's wheel, when scripts/test.sh has built one: device-check.sh runs loraq.torch's
# device codec tests with it where the GPU machine's Python matches.
if ls build/python-dist/loraq-*.whl >/dev/null 2>&1; then
  mkdir -p .device/stage/wheel && cp build/python-dist/loraq-*.whl .device/stage/wheel/
fi
tar -C .device/stage -cJf .device/bundle.tar.xz .
rm -rf .device/stage
ls -la .device/bundle.tar.xz
