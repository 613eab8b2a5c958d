#!/bin/bash
# The bf16 backward's accuracy evidence (issue 15, item 3): the model card's
# full Fashion-MNIST recipe (PACT 4w4a, width 16, 10 epochs, batch 128, lr 0.1,
# seed 1) trained with the backward's gradient GEMMs in bf16 and in f32, each
# evaluated on the test set. Resumable (`--resume`); needs
# `apt-get install -y dataset-fashion-mnist`. Results: docs/performance.md.
#
#   benches/bf16_accuracy.sh [OUT_DIR]      (default runs/bf16)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bf16}
Q=${QMUL:-target/release/qmul}
[ -x "$Q" ] || cargo build --release
mkdir -p "$OUT"
for b in bf16 f32; do
  [ -f "$OUT/pact-$b.qmul" ] || QMUL_NO_PROGRESS=1 "$Q" --backward "$b" train --data fashion-mnist \
    --arch resnet18 --width 16 --quant pact --bits 4 --epochs 10 --batch 128 --lr 0.1 --seed 1 \
    --out "$OUT/pact-$b.qmul" --resume > "$OUT/train-$b.log" 2>&1
  "$Q" eval --model "$OUT/pact-$b.qmul" --data fashion-mnist | tee "$OUT/eval-$b.log"
done
