#!/usr/bin/env bash
# Runs the qmul-kernels and qmul-runtime tests for aarch64 under user-mode
# QEMU, so the NEON and dotprod variants are exercised on an x86_64 host, then
# cross-builds the C client against the aarch64 static library and runs the
# whole on-device flow with it under QEMU. Installs nothing: it needs
#   * the aarch64 Rust target:  rustup target add aarch64-unknown-linux-gnu
#   * a cross linker + libc:    aarch64-linux-gnu-gcc (Debian/Ubuntu: gcc-aarch64-linux-gnu)
#   * user-mode QEMU:           qemu-aarch64 (Debian/Ubuntu: qemu-user)
# Extra arguments are passed to `cargo test` (e.g. a test name filter).
# Honours CARGO_TARGET_DIR like any cargo invocation.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

missing=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=("aarch64-linux-gnu-gcc (package gcc-aarch64-linux-gnu)")
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=("qemu-aarch64 (package qemu-user)")
if [ -d /usr/aarch64-linux-gnu ]; then :; else missing+=("/usr/aarch64-linux-gnu sysroot (package libc6-dev-arm64-cross)"); fi
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    missing+=("Rust target aarch64-unknown-linux-gnu (rustup target add aarch64-unknown-linux-gnu)")
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/aarch64/run.sh: missing prerequisites:" >&2
    for m in "${missing[@]}"; do echo "  - $m" >&2; done
    exit 1
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# -cpu max enables every extension QEMU emulates (including dotprod).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max"

echo "== aarch64 (qemu -cpu max): best variant (dotprod)"
env -u QMUL_KERNEL cargo test -p qmul-kernels --target aarch64-unknown-linux-gnu "$@"

echo "== aarch64 (qemu -cpu max): QMUL_KERNEL=neon"
QMUL_KERNEL=neon cargo test -p qmul-kernels --target aarch64-unknown-linux-gnu "$@"

# The runtime: model file, gradients, unlearning, sessions, receipts, mutation
# tests (the header test is target-independent and runs on the host).
echo "== aarch64 (qemu -cpu max): qmul-runtime"
cargo test -p qmul-runtime --target aarch64-unknown-linux-gnu --lib \
    --test grad_check --test model_file --test unlearn --test mutation "$@"

# The C client, cross-compiled against the aarch64 static library.
echo "== aarch64 (qemu -cpu max): C client"
target_dir=${CARGO_TARGET_DIR:-target}
cargo build -p qmul-capi --lib --target aarch64-unknown-linux-gnu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
aarch64-linux-gnu-gcc -std=c11 -D_DEFAULT_SOURCE -Wall -Wextra -Werror -O1 -I include \
    tests/c/client.c "$target_dir/aarch64-unknown-linux-gnu/debug/libqmul.a" \
    -lpthread -ldl -lm -o "$work/client"
cp models/checkpoints/fmnist-subset-r18w8-pact.qmul "$work/model.qmul"
d=data/fashion-mnist-subset
qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max "$work/client" "$work/model.qmul" \
    $d/train-images-idx3-ubyte.gz $d/train-labels-idx1-ubyte.gz \
    $d/t10k-images-idx3-ubyte.gz $d/t10k-labels-idx1-ubyte.gz "$work/receipts.jsonl" | tee "$work/out"
grep -q "C CLIENT OK" "$work/out"
echo "test result: ok. 1 passed; 0 failed; (C client on aarch64 under qemu)"
