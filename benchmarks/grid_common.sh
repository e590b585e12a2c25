# Sourced by the CamVid grid scripts (camvid_grid.sh, converged_grid.sh): the two splits and one run's command line.
# Needs CAMVID, OUT, PY and RUN_FLAGS (the grid's preset, weights and threads) set by the script that sources it.

split_flags() {  # split_flags SPLIT
  case $1 in
    val) echo "--train $CAMVID/train --eval $CAMVID/val" ;;
    cross) echo "--train $CAMVID/train --train-prefixes 0001TP,0016E5 --eval $CAMVID/train --eval-prefixes 0006R0" ;;
  esac
}

job() {  # job SPLIT NAME SEED FLAGS...: one line for the runner, or nothing when the result exists
  local split=$1 name=$2 seed=$3
  shift 3
  local out="$OUT/$split/${name}_seed${seed}.json"
  [[ -f "$out" ]] && return 0
  echo "$PY -m ovaal_backend simulate $(split_flags "$split") --out $out $RUN_FLAGS --seed $seed --quiet $*"
}
