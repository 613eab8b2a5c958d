#!/bin/bash
# Issue 14's tables on the 20k headline setting (PACT, batch 64, the fair grid
# for every method), all with the reference per-epoch schedule (the default
# since issue 14). Each step is a resumable `qmul experiment`; rerun the script
# after an interruption. The Retrain models of the first headline are reused
# (copied into $RUNS/models); the original is retrained, deterministically (the
# same codes as the committed one), to get its residuals and its exact latent
# file.
#
#   docs/experiments/study.sh [STEP...]      (default: every step, in order)
#
#   file            the headline rerun with the new defaults: every method,
#                   random 10%, 3 seeds, unlearning from the file's codes and
#                   sub-bin residuals (the start-state study's (b))
#   codes           Q-MUL, l1-sparse, FT from the codes alone (every latent
#                   weight at its bin's centre; the study's (a))
#   latent          the same from the training run's exact f32 latents ((c))
#   sequence        five successive requests of 2% each through the commit
#                   path, Q-MUL, l1-sparse, FT at the settings `file` chose
#   sequence-codes  the same, every request started from the bins' centres
#   class-pact      the class-wise (class 0) PACT table rerun, every method, 1 seed
#   durability      every method on the full-precision model (--quant none) at
#                   the settings the earlier full-precision table chose, then
#                   each result quantized to 4 bits after the fact (qmul
#                   quantize's method), FA and MIA before and after, 1 seed
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs}
# SUFFIX: appended to a step's run and published directory names, to rerun a
# finished step (with another binary, say) beside its first result.
SUFFIX=${SUFFIX:-}
Q=${QMUL:-target/release/qmul}
export QMUL_NO_PROGRESS=1
[ -x "$Q" ] || cargo build --release
mkdir -p "$RUNS/models"
for m in docs/experiments/fmnist20k-pact-random10/models/retrain-*.qmul; do
  [ -f "$RUNS/models/$(basename "$m")" ] || cp "$m" "$RUNS/models/"
done
SUB="--data fashion-mnist --train-subset 20000:0 --arch resnet18 --width 16 --train-epochs 15 --no-augment --batch 64 --models $RUNS/models --quant pact"
GRID="lrx=1,5,20;epochs=1,2"
ALL="qmul,rl,salun,ft,ga,l1"
BEST="qmul,l1,ft"

chosen() { # results.json, methods: the tuned setting of each, as --set
  python3 - "$@" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
out = []
for m in sys.argv[2].split(","):
    ts = [t for t in d["tuning"] if t["method"] == m]
    if ts:
        t = min(ts, key=lambda t: t["avg_gap"])
        out.append(f"{m}:epochs={t['epochs']}:lr={t['lr']:.6g}")
print(",".join(out))
PY
}

run() { # name, published directory, experiment arguments
  local name=$1$SUFFIX doc=docs/experiments/$2$SUFFIX; shift 2
  mkdir -p "$RUNS/$name" "$doc"
  echo "== $name ($(date -u +%H:%M))"
  "$Q" experiment "$@" --report "$RUNS/$name" 2>>"$RUNS/$name/log.txt" | tail -n 40
  cp "$RUNS/$name"/{results.json,table.md,avg_gap.svg} "$doc/"
  grep -v "^epoch \|^unlearn " "$RUNS/$name/log.txt" > "$doc/log.txt" || true
  echo "published $doc"
}

step() {
  case $1 in
    file) run study-file fmnist20k-pact-random10-v3 $SUB --forget random:0.1:1 --methods $ALL --seeds 3 --grid "$GRID" --start file ;;
    codes|latent) run "study-$1" "fmnist20k-pact-random10-start-$1" $SUB --forget random:0.1:1 --methods $BEST --seeds 3 --grid "$GRID" --start "$1" ;;
    sequence|sequence-codes)
      local set start=file; set=$(chosen "$RUNS/study-file/results.json" $BEST)
      [ "$1" = sequence-codes ] && start=codes
      run "$1" "fmnist20k-pact-sequence5x2-$start" $SUB --forget sequence:5x0.02:1 --methods $BEST --seeds 1 --set "$set" --start $start ;;
    class-pact) run class-pact-v3 fmnist20k-pact-class0-v3 $SUB --forget class:0 --methods $ALL --seeds 1 --grid "$GRID" ;;
    durability)
      local set; set=$(chosen docs/experiments/fmnist20k-none-random10/results.json $ALL)
      run durability fmnist20k-none-random10-durability ${SUB/--quant pact/--quant none} --forget random:0.1:1 \
        --methods $ALL --seeds 1 --set "$set" --quantize-after ;;
    *) echo "unknown step '$1'" >&2; exit 2 ;;
  esac
}

for s in "${@:-file codes latent sequence sequence-codes class-pact durability}"; do
  for t in $s; do step "$t"; done
done
