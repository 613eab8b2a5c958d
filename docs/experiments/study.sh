#!/bin/bash
# The start-state study (issue 14, item 3): the 20k headline setting (PACT,
# random 10%, 3 seeds, the same grid for every method), with the reference
# per-epoch schedule, unlearning started from
#   codes    the file's codes alone (every latent weight at its bin's centre),
#   file     the file's codes and sub-bin residuals (the new default),
#   latent   the training run's exact f32 latent weights.
# Q-MUL against the headline's two best baselines (l1-sparse, fine-tuning).
# Resumable like tables.sh; the Retrain models of the headline are reused
# when copied into $RUNS/models (the original is retrained, deterministically,
# to get its residuals and its latent file).
#
#   docs/experiments/study.sh [codes|file|latent ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs}
Q=${QMUL:-target/release/qmul}
export QMUL_NO_PROGRESS=1
[ -x "$Q" ] || cargo build --release
mkdir -p "$RUNS/models"
for m in docs/experiments/fmnist20k-pact-random10/models/retrain-*.qmul; do
  [ -f "$RUNS/models/$(basename "$m")" ] || cp "$m" "$RUNS/models/"
done
SUB="--data fashion-mnist --train-subset 20000:0 --arch resnet18 --width 16 --train-epochs 15 --no-augment --batch 64 --models $RUNS/models"
GRID="lrx=1,5,20;epochs=1,2"
for start in "${@:-codes file latent}"; do
  for s in $start; do
    name="study-$s"
    mkdir -p "$RUNS/$name"
    echo "== $name ($(date -u +%H:%M))"
    "$Q" experiment $SUB --quant pact --forget random:0.1:1 --methods qmul,l1,ft --seeds 3 \
      --grid "$GRID" --start "$s" --report "$RUNS/$name" 2>>"$RUNS/$name/log.txt" | tail -n 40
    doc="docs/experiments/fmnist20k-pact-random10-start-$s"
    mkdir -p "$doc"
    cp "$RUNS/$name"/{results.json,table.md,avg_gap.svg} "$doc/"
    grep -v "^epoch \|^unlearn " "$RUNS/$name/log.txt" > "$doc/log.txt" || true
    echo "published $doc"
  done
done
