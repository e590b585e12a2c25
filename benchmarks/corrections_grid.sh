#!/bin/bash
# Corrected masks in the simulator (issue 18 item 4): the product default on CamVid with N pool images fully labelled
# (as if an annotator had corrected their pushed masks) against clicks alone, paired by seed. Cheap on 2 CPU cores:
# 88x120 training size, the first 100 train images as the pool, evaluated on the 101 val images, one run at a time.
# Usage: bash benchmarks/corrections_grid.sh OUT_DIR "0 10 30" 0 1 2   (dense-image counts, then seeds; skips
# finished files). POINTS (default 1000, as CORRECTION_POINTS) caps the training points of each fully labelled
# image; POINTS=0 gives one per training pixel (files val_dense<N>_points<P>_seed<S>.json).
# Tables: .venv/bin/python benchmarks/corrections_report.py OUT_DIR
set -euo pipefail
out=${1:?output folder}; counts=${2:?dense-image counts}; shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
camvid=${CAMVID:-$root/../shared/data/camvid}
python=${PYTHON:-$root/.venv/bin/python}
mkdir -p "$out"
for seed in "$@"; do
  for n in $counts; do
    file="$out/val_dense${n}$([ "$n" = 0 ] || echo "_points${POINTS:-1000}")_seed${seed}.json"
    [ -s "$file" ] && continue
    nice -n 5 "$python" -m ovaal_backend simulate --train "$camvid/train" --eval "$camvid/val" --method default \
      --preset cpu --image-size 88x120 --max-train-images 100 --threads 1 --quiet --seed "$seed" \
      --dense-images "$n" --correction-points "${POINTS:-1000}" --out "$file"
  done
done
