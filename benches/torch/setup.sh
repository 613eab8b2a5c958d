#!/bin/sh
# Creates the virtualenv for the PyTorch side of `qmul bench` and prints the
# python to run benches/torch/bench.py with.
#
#   benches/torch/setup.sh [VENV]        # default benches/torch/.venv
#
# Installs torch with a plain `pip install torch` from PyPI (plus numpy, which
# torch warns about when missing). On Linux x86_64 the PyPI wheel is the CUDA
# build: it pulls the nvidia-* and triton wheels, about 5.3 GB installed
# (torch 2.15.0: torch 1.2 GB, nvidia-* 3.0 GB, triton 1.0 GB), and `import
# torch` alone then peaks at about 530 MB RSS. The benchmark runs on the CPU
# either way. The nvidia wheels cannot be skipped with --no-deps: that torch
# fails to import (it preloads libcublasLt). Where the PyTorch index is
# reachable, the CPU-only wheel is much smaller:
#
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu benches/torch/setup.sh
#
# TORCH_SPEC pins a version (default: torch).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
venv=${1:-"$here/.venv"}
python=${PYTHON:-python3}
spec=${TORCH_SPEC:-torch}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$venv/bin/python" -m pip install --index-url "$TORCH_INDEX_URL" "$spec"
else
    "$venv/bin/python" -m pip install "$spec"
fi
"$venv/bin/python" -m pip install numpy
"$venv/bin/python" - <<'EOF' >&2
import torch
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
      f"torch.compile {'available' if hasattr(torch, 'compile') else 'missing'}")
EOF
echo "$venv/bin/python"
