#!/usr/bin/env bash
# The main job: install, build, make a synthetic PixArt-Sigma-shaped checkpoint (PixArt-Sigma's
# tensor names at reduced width and depth: tools/make_model), then quantize it with every shipped
# recipe (recipes/*.yaml), data-free, and print what each costs (bits per value, scales included) and
# loses (parameter-weighted relative weight error), with the dequantized export of the last one.
# Then the embedded default model end to end (models/fashion-dit, a diffusion transformer trained on
# Fashion-MNIST; docs/end-to-end.md): quantized with four of the paper's configurations, 100 images
# generated per configuration from the same seeds, and the table and grid of tools/evaluate.py
# (LORAQ_RUN_SAMPLES changes the count).
# LoRaQ's 1000 + 500 optimizer steps per layer take seconds per layer on two cores, so the
# default is 2 blocks of width 256 (20 layers, a few minutes for all recipes); scale it with
#   LORAQ_RUN_HIDDEN=1152 LORAQ_RUN_BLOCKS=28 scripts/run.sh   # PixArt-Sigma's 0.6 B parameters
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --python   # apt-get, and torch + diffusers for the end-to-end part
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

echo
echo "== End to end: models/fashion-dit, quantized, sampled and compared (tools/evaluate.py)"
venv="${LORAQ_VENV:-$HOME/.cache/loraq/venv}"
scripts/python-package.sh "$venv"
e2e=out/run-fashion-dit
"$venv/bin/python" tools/evaluate.py --model models/fashion-dit -n "${LORAQ_RUN_SAMPLES:-100}" --steps 20 \
  --recipes recipes/fashion-dit/{rtn-sint4-w4a16,rtn-sint4-w4a4,svdquant-sint4-w4a4,loraq-sint4-r128-w4a4}.yaml \
  -o "$e2e"
cat "$e2e/results.md"
echo "(grid of the first 10 seeds per configuration: $e2e/grid.png; times: $e2e/timings.md)"
