#!/usr/bin/env bash
# The main job: install, build, then quantize the embedded default weights (data/demo-weights) with
# every format of the table and print what each costs (bits per value, scales included) and loses
# (relative Frobenius error and SQNR over all tensors).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
loraq=build/tools/cli/loraq
model=data/demo-weights/demo.safetensors
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

$loraq formats
echo
echo "Fake quantization of $model (every float tensor, blocks along rows):"
printf '%-13s %9s %12s %9s\n' format bits/val rel.error SQNR_dB
for fmt in $($loraq formats --json | python3 -c 'import json,sys; print(" ".join(f["name"] for f in json.load(sys.stdin)))'); do
  bits=$($loraq formats --json --row-length 1152 | python3 -c "import json,sys; print([f for f in json.load(sys.stdin) if f['name']=='$fmt'][0]['bits_per_value_at_row_length'])")
  total=$($loraq cast --format "$fmt" --in "$model" --out "$out/q.safetensors" --report | tail -1)
  read -r _ _ _ _ rel sqnr _ <<<"$total"
  printf '%-13s %9.3f %12s %9s\n' "$fmt" "$bits" "$rel" "$sqnr"
done
