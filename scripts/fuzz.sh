#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS]: builds the libFuzzer targets of tests/fuzz with clang++ (address and
# undefined-behaviour sanitizers) in build-fuzz/, then runs each for SECONDS (default 20) from its
# checked-in seeds. Exits non-zero on any finding: a crash, a sanitizer report, an exception other
# than loraq::Error, a broken reader promise, a leak, an input slower than 5 s, or more than 512 MB.
# A finding's input is kept as build-fuzz/artifacts/<target>-crash-* (replay: <target> FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
targets=(fuzz_safetensors_header fuzz_npy_header fuzz_checkpoint_index fuzz_layer_table)

# A separate configure: the main build uses g++, libFuzzer needs clang.
cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLORAQ_FUZZ=ON -DLORAQ_WERROR=ON \
  -DLORAQ_CUDA=OFF -DLORAQ_MPI=OFF -DLORAQ_TESTS=OFF -DLORAQ_BENCH=OFF >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target "${targets[@]}"

mkdir -p build-fuzz/artifacts build-fuzz/logs
final_stat() { sed -n "s/^stat::$1: *//p" "$log"; }  # from libFuzzer's -print_final_stats=1 lines
status=0
for t in "${targets[@]}"; do
  # New inputs go to build-fuzz/corpus/<target> (the first folder), never into the checked-in seeds.
  mkdir -p "build-fuzz/corpus/$t"
  log="build-fuzz/logs/$t.log"
  rc=0
  "build-fuzz/tests/fuzz/$t" "build-fuzz/corpus/$t" "tests/fuzz/corpus/$t" -dict="tests/fuzz/$t.dict" \
    -max_total_time="$seconds" -rss_limit_mb=512 -timeout=5 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/artifacts/$t-" >"$log" 2>&1 || rc=$?
  echo "fuzz: $t: $(final_stat number_of_executed_units) executions in ${seconds} s" \
       "($(final_stat average_exec_per_sec)/s), corpus $(ls "build-fuzz/corpus/$t" | wc -l) found" \
       "+ $(ls "tests/fuzz/corpus/$t" | wc -l) seeds," \
       "peak RSS $(final_stat peak_rss_mb) MB, exit $rc"
  if [ "$rc" -ne 0 ]; then
    echo "fuzz: FINDING in $t (full log: $log):"
    grep -E "^==[0-9]+==|^SUMMARY|^fuzz_|Test unit written|runtime error|ERROR" "$log" | head -40 || tail -40 "$log"
    status=1
  fi
done
exit "$status"
