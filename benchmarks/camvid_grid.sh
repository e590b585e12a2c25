#!/usr/bin/env bash
# The CamVid grid of docs/benchmarks.md, --preset cpu (2 CPU cores, lite0-offline weights), on two splits:
#   val   : pool = camvid/train (367 images), evaluated on camvid/val (101 images of sequence 0016E5, the tuning split)
#   cross : pool = the 266 train images of 0001TP and 0016E5, evaluated on the 101 train images of 0006R0 (held out
#           by sequence: no image of 0006R0 is in the pool)
# Usage: benchmarks/camvid_grid.sh [RESULTS_DIR] [SEEDS...]; then: python benchmarks/report.py RESULTS_DIR --write-doc
# Each ovaal+ run also records the same final phase without the semi-supervised loss (the ovaal row) and, on val, the
# paper's inversion rule (the ovaal+paper row) and the default rule with a plain semi loss (ovaal+unbalanced), all on
# the same rounds (runs of an earlier grid may lack the last one). JOBS runs at a time, THREADS torch threads
# each (default 2 x 1 on 2 cores); a finished file is skipped, so an interrupted grid resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
CAMVID=${CAMVID:-../shared/data/camvid}
OUT=${1:-docs/results/camvid}
shift || true
SEEDS=${*:-0 1 2 3 4}
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
CKPT=${CKPT:-results/checkpoints}  # the ovaal models after the last round, for benchmarks/inversion_diagnostic.py
THREADS=${THREADS:-1}
mkdir -p "$OUT"

RUN_FLAGS="--preset cpu --encoder-weights lite0-offline --threads $THREADS"
source benchmarks/grid_common.sh

jobs_list() {  # main rows for every seed first (product default first), then the protocol checks
  for seed in $SEEDS; do
    for split in val cross; do
      local ablations=""
      [[ $split == val ]] && ablations="--semi-ablations paper,unbalanced"
      # the product's default: OVA with class balance 0.5 (the ovaal row is its final phase without the semi loss)
      job "$split" ovaal+-balance0.5 "$seed" --method ovaal+ --class-balance 0.5 $ablations \
          --save-checkpoint "$CKPT/${split}_ovaal_seed$seed.pt"
      job "$split" pixelpick "$seed" --method pixelpick
      job "$split" pixelpick-balanced "$seed" --method pixelpick-balanced
      job "$split" ovaal+-balance1 "$seed" --method ovaal+ --class-balance 1 $ablations  # full balance
    done
  done
  # the noise of the protocol: random's change from the last round to the final phase, and its seed spread
  for seed in $SEEDS; do for split in val cross; do job "$split" random "$seed" --method random; done; done
  # a decision: Adam's state kept across rounds
  for seed in 0 1 2; do job val pixelpick-keep-optimizer "$seed" --method pixelpick --keep-optimizer; done
}

mkdir -p "$OUT/val" "$OUT/cross" "$CKPT"
jobs_list | xargs -P "$JOBS" -I{} bash -c '{} >/dev/null 2>&1 || echo "failed: {}" >&2'
