#!/usr/bin/env bash
# The main job: install, build, make the embedded default model (PixArt-Sigma's tensor names at
# reduced width and depth: tools/make_model), then quantize it with every shipped recipe
# (recipes/*.yaml), data-free, and print what each costs (bits per value, scales included) and
# loses (parameter-weighted relative weight error), with the dequantized export of the last one.
# LoRaQ's 1000 + 500 optimizer steps per layer take seconds per layer on two cores, so the
# default is 2 blocks of width 256 (20 layers, a few minutes for all recipes); scale it with
#   LORAQ_RUN_HIDDEN=1152 LORAQ_RUN_BLOCKS=28 scripts/run.sh   # PixArt-Sigma's 0.6 B parameters
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
bin=build/tools/cli
hidden="${LORAQ_RUN_HIDDEN:-256}"
blocks="${LORAQ_RUN_BLOCKS:-2}"
model="build/default-model/pixart-sigma-h${hidden}-b${blocks}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

[ -d "$model" ] || "$bin/loraq-make-model" -o "$model" --hidden "$hidden" --blocks "$blocks" --seed 0
"$bin/loraq" inspect "$model" --preset pixart-sigma | sed -n 1,3p
echo
printf '%-30s %-12s %-22s %6s %9s %12s %8s\n' recipe method "Q1 / Q2" rank bits/val rel.error seconds
for recipe in recipes/*.yaml; do
  name=$(basename "$recipe" .yaml)
  "$bin/loraq" quantize "$model" --recipe "$recipe" -o "$out/$name" --no-progress > /dev/null
  python3 - "$out/$name/quantize_report.json" "$name" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
n = sum(r["shape"][0] * r["shape"][1] for r in rows)
mean = lambda key: sum(r[key] * r["shape"][0] * r["shape"][1] for r in rows) / n
r0 = rows[0]
formats = r0["residual"] + (" / " + r0["branch"] if r0["branch"] else "")
print(f"{sys.argv[2]:<30} {r0['method']:<12} {formats:<22} {r0['rank'] or '-':>6} {mean('bits_per_value'):9.3f} "
      f"{mean('relative_error'):12.4e} {sum(r['seconds'] for r in rows):8.2f}")
PY
  last="$name"
done
echo
"$bin/loraq" export "$out/$last" -o "$out/dequantized" --dequantized
echo "(every quantized model: $out, removed on exit; per-layer reports in each quantize_report.md)"
