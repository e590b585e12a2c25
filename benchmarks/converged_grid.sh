#!/usr/bin/env bash
# The converged CamVid grid (issue 15): the same short active loop as --preset cpu, at the product's budget
# (22 + 4 x 22 = 110 px per image), then the final model trained from scratch on each method's selected labels
# (--preset converged: 20 epochs, encoder at 0.1 of the head's rate, scale 0.5-2, the same recipe for every method).
# Every run also measures logit adjustment (tau 0.5, 1) and the final masks on the pool images (RESULT.json: pool).
#   val   : pool = camvid/train (367 images) -> camvid/val (101 images of 0016E5, the tuning split)
#   cross : pool = the 266 train images of 0001TP and 0016E5 -> the 101 train images of 0006R0 (held out by sequence)
# Usage: benchmarks/converged_grid.sh [main|budgets|convergence|mechanisms] [RESULTS_DIR] [SEEDS...]
#   main        : default, pixelpick and Table II's other cells (softmax-ovaselect, ova-margin, ova-plain), both splits
#   budgets     : default and pixelpick at 44 px (cold start: 22 + 1 x 22) and 200 px (40 + 4 x 40)
#   convergence : default and pixelpick with the final phase trained again for twice the epochs (both splits; cross
#                 has the fewer training steps per epoch, 266 images against 367, so it is the stricter check)
#   mechanisms  : item 6's designs for the large classes, both splits, each a change of ovaal (the default until
#                 they were measured): ova-softmax (a softmax decision head beside the One-vs-All heads, plain
#                 cross-entropy; the default is that head half balanced), ova-area (half of each round's pixels split
#                 by predicted class area), ova-global (the balance's class weights from all clicks), ova-halves (half
#                 of each round by margin), and default-area (the default with ova-area's quotas); each is paired
#                 with the default and with ovaal of the same seed and split
# Order: the default and PixelPick seed by seed on both splits, then the other cells, so a CPU run that is stopped still leaves the
# pairs that matter; a finished file is skipped, so the grid resumes. JOBS runs at a time, THREADS torch threads each
# (CPU: JOBS=1 THREADS=2; one H200: JOBS=14 THREADS=1, images and labels resident on the GPU).
# LOGS=DIR keeps each run's log (its per-round lines) in DIR/<split>-<name>.log.
# Then: python benchmarks/converged_report.py RESULTS_DIR --write-doc
set -euo pipefail
cd "$(dirname "$0")/.."
GRID=${1:-main}
OUT=${2:-docs/results/camvid-converged}
shift 2 || shift $# || true
SEEDS=${*:-0 1 2 3 4}
CAMVID=${CAMVID:-../shared/data/camvid}
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-1}
THREADS=${THREADS:-2}

RUN_FLAGS="--preset converged --encoder-weights lite0-offline --threads $THREADS --logit-taus 0.5,1"
source benchmarks/grid_common.sh

jobs_list() {
  if [[ $GRID == main ]]; then  # the pairs that matter first, on every seed, then Table II's other cells
    for methods in "default pixelpick" "softmax-ovaselect ova-margin ova-plain"; do
      for seed in $SEEDS; do
        for split in val cross; do
          for method in $methods; do
            job "$split" "$method" "$seed" --method "$method"
          done
        done
      done
    done
    return
  fi
  for seed in $SEEDS; do
    for split in val cross; do
      case $GRID in
        budgets)
          for method in default pixelpick; do
            job "$split" "$method-44px" "$seed" --method "$method" --rounds 1
            job "$split" "$method-200px" "$seed" --method "$method" --init-pixels 40 --pixels-per-round 40
          done ;;
        convergence)
          for method in default pixelpick; do
            job "$split" "$method-convergence" "$seed" --method "$method" --convergence-check
          done ;;
        mechanisms)
          for method in ovaal ova-softmax ova-area ova-global ova-halves default-area; do
            job "$split" "$method" "$seed" --method "$method"
          done ;;
        *) echo "unknown grid $GRID: main, budgets, convergence or mechanisms" >&2; exit 2 ;;
      esac
    done
  done
}

mkdir -p "$OUT/val" "$OUT/cross"
# each run's log (its per-round lines) goes to LOGS/<name>.log when LOGS names a folder
LOGS=${LOGS:-}
[[ -n $LOGS ]] && mkdir -p "$LOGS"
export LOGS
# A run claims its result by creating <result>.lock (a folder: mkdir is atomic) just before it starts, so several
# instances of this script (e.g. one per core) share one grid without running a cell twice; a stopped run leaves its
# lock behind: remove the .lock folders of runs that are no longer alive before resuming.
jobs_list | xargs -P "$JOBS" -I{} bash -c 'cmd="{}"; out=${cmd##*--out }; out=${out%% *}
  [[ -f $out ]] && exit 0
  mkdir "$out.lock" 2>/dev/null || exit 0
  log=/dev/null; [[ -n $LOGS ]] && log="$LOGS/$(basename "$(dirname "$out")")-$(basename "$out" .json).log"
  $cmd >"$log" 2>&1 || echo "failed: $cmd" >&2
  rmdir "$out.lock"'
