#!/bin/bash
# On a machine with an NVIDIA GPU: checks the GPU kernels against the CPU
# reference and times the ResNet-18 (width 64) GEMM shapes, with binaries
# built elsewhere by benches/gpu/build.sh (no Rust toolchain needed here).
#
#   benches/gpu/run.sh [BATCH]      (default 256)
#
# Prints the device, the kernels' and operations' verdicts against the CPU,
# the copy bandwidth, the i32 multiply-add ceiling and the GEMM table, the whole network's training step
# and inference against PyTorch's CUDA fake-quant step (PYTHON: a python
# with torch, default python3), and one Q-MUL deletion request on the
# shipped model (the demo's first) trained on the GPU and on the CPU side by
# side (figures and wall time). The integer roofline is the device's i32
# multiply-add rate (these kernels have no dp4a or tensor-core path in
# cubecl 0.10).
set -uo pipefail
cd "$(dirname "$0")"
batch=${1:-256}
bin=bin
for b in gpu_bench gpu_harness gpu_ops qmul; do
  [ -x $bin/$b ] || { echo "run benches/gpu/build.sh first ($bin/$b missing)" >&2; exit 2; }
done
root=$(cd ../.. && pwd)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null || echo "(nvidia-smi not found)"
echo "== the GPU kernels against the CPU reference (CUDA)"
QMUL_GPU_REQUIRED=1 QMUL_GPU_BACKEND=cuda $bin/gpu_harness --nocapture --test-threads 1
h=$?
echo "== the training step's operations, the device forward and training pass, whole unlearning runs against the CPU (CUDA)"
QMUL_REPO_ROOT=$root QMUL_GPU_REQUIRED=1 QMUL_GPU_BACKEND=cuda $bin/gpu_ops --nocapture --test-threads 1 2>&1 | grep -v '^\s*$'
o=${PIPESTATUS[0]}
echo "== GEMMs of ResNet-18 width 64, batch $batch (CUDA)"
$bin/gpu_bench "$batch" cuda
b=$?
echo "== the whole network on the GPU (training step, inference) against PyTorch's CUDA fake-quant step"
QMUL_NO_PROGRESS=1 $bin/qmul --device cuda bench --nets 16x1,64x3 --batch "$batch" --steps 10 \
  --torch "${PYTHON:-python3}" --torch-script "$root/benches/torch/bench.py"
n=$?
echo "== one Q-MUL request (random 5%, 5 epochs) on the shipped model: GPU, then CPU (f32 backward)"
m=$root/models/checkpoints/fmnist-subset-r18w8-pact.qmul
for dev in cuda cpu; do
  s0=$(date +%s%N)
  QMUL_DATA_DIR=$root/data QMUL_NO_PROGRESS=1 $bin/qmul --backward f32 --device $dev unlearn --model "$m" --data "subset" \
    --forget random:0.05:1 --epochs 5 --force --out /tmp/qmul-gpu-run-$dev.qmul 2>&1 | grep -E '^(before|after)|codes changed|qmul in'
  echo "$dev: $(( ($(date +%s%N) - s0) / 1000000 )) ms in all"
done
echo "== harness exit $h, operations exit $o, GEMM bench exit $b, network bench exit $n"
[ $h -eq 0 ] && [ $o -eq 0 ] && [ $b -eq 0 ] && [ $n -eq 0 ]
