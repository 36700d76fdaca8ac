#!/usr/bin/env bash
# Runs on a lent GPU machine (see scripts/device-bundle.sh): the CUDA tests (LoRaQ's loops, the codecs,
# the linear kernels), the CUDA benchmark, the CPU kernel sets on the host CPU, and
# LoRaQ over every block linear of a generated PixArt-Sigma-shaped 0.6 B checkpoint on the GPU
# (rank 128, 1000 Adam + 500 rotation steps), timed. Logs and the per-layer report go to $OUT
# (the device tool's folder) or out/device-check.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/device-check}
mkdir -p "$out"
root=/tmp/loraq-device
rm -rf "$root" && mkdir -p "$root" && tar -C "$root" -xJf .device/bundle.tar.xz || exit 1
cublas=$(find /usr/local/cuda* /usr/lib /opt -name 'libcublas.so.13' 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$root/lib:$(dirname "${cublas:-/usr/local/cuda/lib64/x}"):${LD_LIBRARY_PATH:-}"
bin=$root/bin
export LORAQ_BENCH_SHAPES=$PWD/bench/shapes  # the benchmarks' SANA and FLUX shapes (this copy of the tree)
{ nvidia-smi -L; nproc; } 2>&1 | tee "$out/machine.txt"
# Each step has its own time limit, most important first, so that a slow or hung step costs only its
# own share of the device call and what ran before it still comes back.
step() { local limit=$1; shift; timeout --kill-after=5 "$limit" "$@"; local rc=$?; echo "[step exit $rc: $*]"; }
step 100 "$bin/test_cuda" 2>&1 | tee "$out/test_cuda.log"
step 60 "$bin/test_linear_kernel" --gtest_filter='*Cuda*' 2>&1 | tee -a "$out/test_cuda.log"
step 150 "$bin/bench_cuda" --benchmark_out="$out/bench_cuda.json" --benchmark_out_format=json 2>&1 |
  tee "$out/bench_cuda.log"
# The vector codec layout (opt-in until measured here, docs/cuda.md): the whole method on it, and
# the LoRaQ step with its fused error kernel (bench_cuda's codec_vector rows time the codecs above).
LORAQ_CUDA_CODEC=vector step 60 "$bin/test_cuda" --gtest_filter='*Loraq*' 2>&1 | tee -a "$out/test_cuda.log"
LORAQ_CUDA_CODEC=vector step 60 "$bin/bench_cuda" --benchmark_filter='loraq_step/(1152x1152|4608x1152|1152x4608)/' 2>&1 |
  tee -a "$out/bench_cuda.log"
step 60 "$bin/loraq-make-model" -o "$root/pixart" --hidden 1152 --blocks 28 >/dev/null
start=$(date +%s%N)
step 150 "$bin/loraq" quantize "$root/pixart" --recipe recipes/loraq-sint4-r128.yaml -o "$root/q-gpu" --device cuda \
  --no-progress 2>&1 | tee "$out/quantize_gpu.log"
if [ -f "$root/q-gpu/quantize_report.csv" ]; then
  echo "whole model on the GPU: $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a "$out/quantize_gpu.log"
else
  echo "whole model on the GPU: FAILED or cut off" | tee -a "$out/quantize_gpu.log"
fi
cp "$root/q-gpu/quantize_report.csv" "$out/" 2>/dev/null
# (into test_cuda.log: the device tool brings back at most 8 files, and this script writes 8)
LORAQ_BIN="$bin/loraq" step 150 python3 -m pytest -q -rs tests/python/test_quantize_pipeline.py -k device 2>&1 |
  tee -a "$out/test_cuda.log"
# The Python package on the GPU, where this machine's python3 takes the bundled wheel (built for the
# development machine's Python) and has torch with CUDA: loraq.torch's device codec and its kernel
# backend bit for bit against the CPU, and quantize_weight(device="cuda") against the CPU.
wheel=$(ls "$root"/wheel/loraq-*.whl 2>/dev/null | head -1)
if [ -n "$wheel" ] && python3 -m pip install -q --no-deps --target "$root/py" "$wheel" >/dev/null 2>&1; then
  LORAQ_BIN="$bin/loraq" PYTHONPATH="$root/py" step 120 python3 -m pytest -q -rs tests/python/test_torch_codec.py \
    tests/python/test_kernels.py tests/python/test_bindings.py -k "gpu or cuda" 2>&1 | tee -a "$out/test_cuda.log"
  # A PixArt-Sigma-sized block on the GPU: fp32 torch, loraq's kernels, torch fake quantization.
  PYTHONPATH="$root/py" step 90 python3 bench/bench_torch_block.py --device cuda --repeat 5 2>&1 |
    tee -a "$out/test_cuda.log"
else
  echo "the Python package on the GPU: NOT RUN (no wheel for this Python: ${wheel:-none bundled})" |
    tee -a "$out/test_cuda.log"
fi
# Last, the CPU kernel sets on this host's CPU (another CPU than the development machine's): bit for
# bit against the scalar set, then the kernel benchmark at M = 1024.
{ grep -m1 'model name' /proc/cpuinfo; grep -o -w -E 'avx512_vnni|avx_vnni|avx512f' /proc/cpuinfo | sort -u; } 2>&1 |
  tee "$out/cpu_kernels.log"
step 30 "$bin/test_kernel_sets" 2>&1 | tee -a "$out/cpu_kernels.log"
step 60 "$bin/test_linear_kernel" --gtest_filter='-*Cuda*' 2>&1 | tee -a "$out/cpu_kernels.log"
step 60 "$bin/bench_linear" --benchmark_min_time=0.2 --benchmark_filter='M1024' 2>&1 | tee "$out/bench_linear.log"
