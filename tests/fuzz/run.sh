#!/usr/bin/env bash
# Runs every fuzz target for N executions (default 1,000,000) and prints the
# executions and time of each. Needs `cargo install cargo-fuzz` and nightly.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-1000000}
mkdir -p tests/fuzz/corpus/model_file tests/fuzz/corpus/data_readers tests/fuzz/corpus/receipt_log
# Seeds: four small models (one per quantization scheme) written by the mutation test.
QMUL_FUZZ_SEEDS=$PWD/tests/fuzz/corpus/model_file cargo test -q -p qmul-runtime --test mutation write_fuzz_seeds >/dev/null
for t in model_file data_readers receipt_log; do
    start=$(date +%s)
    cargo +nightly fuzz run --fuzz-dir tests/fuzz "$t" "tests/fuzz/corpus/$t" -- \
        -runs="$runs" -max_len=16384 -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
        | grep -E "stat::number_of_executed_units|stat::peak_rss_mb|Done|SUMMARY|panicked|crash" || true
    echo "$t: $runs runs requested, $(( $(date +%s) - start )) s"
done
