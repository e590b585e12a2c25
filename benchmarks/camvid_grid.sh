#!/usr/bin/env bash
# The CamVid train -> val comparison of docs/benchmarks.md, with --preset cpu (2 CPU cores, lite0-offline weights).
# Usage: benchmarks/camvid_grid.sh [RESULTS_DIR] [SEEDS...]; then: python benchmarks/report.py RESULTS_DIR
# Each ovaal+ run also records the same final phase without the semi-supervised loss: that is the ovaal row.
set -euo pipefail
cd "$(dirname "$0")/.."
CAMVID=${CAMVID:-../shared/data/camvid}
OUT=${1:-results/camvid}
shift || true
SEEDS=${*:-0 1 2}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
for seed in $SEEDS; do
  for method in ovaal+ pixelpick random; do
    name="$OUT/${method}_seed${seed}.json"
    [[ -f "$name" ]] && continue
    $PY -m ovaal_backend simulate --train "$CAMVID/train" --eval "$CAMVID/val" --out "$name" \
      --method "$method" --preset cpu --encoder-weights lite0-offline --seed "$seed" --quiet
  done
done
# ova-separate (C networks, as in the paper) against ova-shared at one budget, on the first 24 pool images.
for seed in $SEEDS; do
  for classifier in ova-separate ova-shared; do
    name="$OUT/${classifier}-24img_seed${seed}.json"
    [[ -f "$name" ]] && continue
    $PY -m ovaal_backend simulate --train "$CAMVID/train" --eval "$CAMVID/val" --out "$name" \
      --classifier "$classifier" --selection ova --preset cpu --encoder-weights lite0-offline --seed "$seed" \
      --max-train-images 24 --rounds 1 --first-round-epochs 6 --epochs 3 --semi-epochs 0 --quiet
  done
done
