#!/bin/bash
# The bf16 backward's unlearning evidence (issue 15, item 3): the 20k
# headline setting (PACT, random 10%, batch 64, from the file's residuals),
# every method at the setting the headline rerun tuned, 3 seeds, once with
# bf16 and once with f32 gradient GEMMs, the same binary. Resumable (each
# report directory keeps its finished runs); needs the headline's original
# and Retrain models in $RUNS/models (docs/experiments/study.sh puts them
# there).
#
#   benches/bf16_unlearning.sh        (QMUL=path/to/qmul to pin a binary)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
Q=${QMUL:-target/release/qmul}
[ -x "$Q" ] || cargo build --release
export QMUL_NO_PROGRESS=1
SET="qmul:epochs=2:lr=0.05,rl:epochs=2:lr=0.01,salun:epochs=2:lr=0.01,ft:epochs=2:lr=0.05,ga:epochs=1:lr=0.002,l1:epochs=1:lr=0.01"
for bk in bf16 f32; do
  mkdir -p "$RUNS/evidence-$bk"
  "$Q" --backward $bk experiment --data fashion-mnist --train-subset 20000:0 --arch resnet18 \
    --width 16 --train-epochs 15 --no-augment --batch 64 --models "$RUNS/models" --quant pact \
    --forget random:0.1:1 --methods qmul,rl,salun,ft,ga,l1 --seeds 3 --set "$SET" --start file \
    --report "$RUNS/evidence-$bk" 2>>"$RUNS/evidence-$bk/log.txt" | tail -n 30
done
