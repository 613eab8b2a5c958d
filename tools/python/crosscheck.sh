#!/bin/sh
# PyTorch as the oracle for qmul's numerics (issue 17): installs PyTorch into
# a virtualenv, runs the Python-side tests, then qmul's `torch_crosscheck`
# test, which trains small networks of every scheme in PyTorch
# (tools/python/crosscheck.py), converts them and compares logits, losses and
# gradients with qmul's integer kernels.
#
#   tools/python/crosscheck.sh [VENV]        # default tools/python/.venv
#
# Works from any directory. The virtualenv comes from benches/torch/setup.sh
# (plain `pip install torch` from PyPI; see that script for the download size
# and TORCH_INDEX_URL for the much smaller CPU-only wheel). A VENV whose python
# already imports torch and numpy is used as it is, without touching pip.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${1:-"$root/tools/python/.venv"}
case $venv in
    /*) ;;
    *) venv="$PWD/$venv" ;;  # the test runs from another directory
esac
cd "$root"

if "$venv/bin/python" -c "import torch, numpy" 2>/dev/null; then
    python="$venv/bin/python"
    echo "using $python (torch already installed)" >&2
else
    # setup.sh prints the python on its last line; keep its progress visible
    # and its exit status (no pipefail in POSIX sh).
    log=$(mktemp)
    trap 'rm -f "$log" "$log.rc"' EXIT
    : > "$log.rc"
    { benches/torch/setup.sh "$venv" || echo failed > "$log.rc"; } | tee "$log" >&2
    if [ -s "$log.rc" ]; then
        echo "crosscheck.sh: benches/torch/setup.sh $venv failed" >&2
        exit 1
    fi
    python=$(tail -n 1 "$log")
fi

"$python" tools/python/test_qmul_torch.py

QMUL_TORCH_PYTHON="$python" QMUL_TORCH_REQUIRED=1 \
    cargo test --release -p qmul-tools --test torch_crosscheck -- --nocapture
