#!/usr/bin/env bash
# The CamVid train -> val comparison of docs/benchmarks.md, with --preset cpu (2 CPU cores, lite0-offline weights).
# Usage: benchmarks/camvid_grid.sh [RESULTS_DIR] [SEEDS...]; then: python benchmarks/report.py RESULTS_DIR
# Each ovaal+ run also records the same final phase without the semi-supervised loss: that is the ovaal row.
# Runs one after the other (two torch jobs on 2 cores slow each other down many times); a finished file is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
CAMVID=${CAMVID:-../shared/data/camvid}
OUT=${1:-results/camvid}
shift || true
SEEDS=${*:-0 1 2}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"

simulate() {  # simulate NAME SEED FLAGS...
  local name="$OUT/${1}_seed${2}.json" seed=$2
  shift 2
  [[ -f "$name" ]] && return 0
  $PY -m ovaal_backend simulate --train "$CAMVID/train" --eval "$CAMVID/val" --out "$name" --preset cpu \
    --encoder-weights lite0-offline --seed "$seed" --quiet "$@"
}

# The four methods (ovaal comes with every ovaal+ run).
for seed in $SEEDS; do
  for method in ovaal+ pixelpick random; do
    simulate "$method" "$seed" --method "$method"
  done
done
# Ablations of OVAAL: no positive/negative balance in the per-class BCE; strict top pixels per class (no diversity step).
for seed in $SEEDS; do
  simulate ovaal+-no-balance "$seed" --method ovaal+ --no-balance
  simulate ovaal+-strict-top "$seed" --method ovaal+ --diversity-top-fraction 0
done
# Table II of the paper: each classifier with the other method's selection (same diversity step for all).
for seed in $SEEDS; do
  simulate multiclass+ova "$seed" --classifier multiclass --selection ova
  simulate ova-shared+margin "$seed" --classifier ova-shared --selection margin
done
# ova-separate (C networks, as in the paper) against ova-shared at one budget, on the first 24 pool images.
for seed in $SEEDS; do
  for classifier in ova-separate ova-shared; do
    simulate "${classifier}-24img" "$seed" --classifier "$classifier" --selection ova --max-train-images 24 \
      --rounds 1 --first-round-epochs 6 --epochs 3 --semi-epochs 0
  done
done
