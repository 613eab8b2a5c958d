#!/bin/bash
# On a machine with an NVIDIA GPU: checks the GPU kernels against the CPU
# reference and times the ResNet-18 (width 64) GEMM shapes, with binaries
# built elsewhere by benches/gpu/build.sh (no Rust toolchain needed here).
#
#   benches/gpu/run.sh [BATCH]      (default 256)
#
# Prints the device, the harness's verdict and the GEMM table. Still to come
# (issue 16): the measured memory bandwidth and int8 roofline beside the
# table, a whole training step on the GPU, and PyTorch's CUDA fake-quant
# training step of the same network side by side.
set -uo pipefail
cd "$(dirname "$0")"
batch=${1:-256}
bin=bin
[ -x $bin/gpu_bench ] && [ -x $bin/gpu_harness ] || { echo "run benches/gpu/build.sh first" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null || echo "(nvidia-smi not found)"
echo "== the GPU kernels against the CPU reference (CUDA)"
QMUL_GPU_REQUIRED=1 QMUL_GPU_BACKEND=cuda $bin/gpu_harness --nocapture --test-threads 1
h=$?
echo "== GEMMs of ResNet-18 width 64, batch $batch (CUDA)"
$bin/gpu_bench "$batch" cuda
b=$?
echo "== harness exit $h, bench exit $b"
[ $h -eq 0 ] && [ $b -eq 0 ]
