#!/bin/bash
# Builds, on a machine with the Rust toolchain, what benches/gpu/run.sh runs
# on a machine with an NVIDIA GPU (which needs no toolchain): the GPU bench
# and the GPU harness, both with the CUDA and wgpu runtimes (libcuda is
# loaded at run time, so no CUDA toolkit is needed to build).
#
#   benches/gpu/build.sh          -> benches/gpu/bin/{gpu_bench,gpu_harness,gpu_ops,qmul}
set -euo pipefail
cd "$(dirname "$0")/../.."
out=benches/gpu/bin
mkdir -p "$out"
cargo build --release -p qmul-kernels --features cuda --example gpu_bench
cp "${CARGO_TARGET_DIR:-target}/release/examples/gpu_bench" "$out/"
harness=$(cargo test --release -p qmul-kernels --features cuda --test gpu_harness --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu_harness" and m.get("executable"):
        print(m["executable"])')
cp "$harness" "$out/gpu_harness"
ops=$(cargo test --release -p qmul-runtime --features gpu,qmul-kernels/cuda --test gpu_ops --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu_ops" and m.get("executable"):
        print(m["executable"])')
cp "$ops" "$out/gpu_ops"
cargo build --release -p qmul-tools --features cuda
cp "${CARGO_TARGET_DIR:-target}/release/qmul" "$out/qmul"
ls -la "$out"
