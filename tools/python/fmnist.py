"""Fashion-MNIST-style data for the PyTorch scripts (`train_torch.py`,
`eval_torch.py`): the four gzipped idx files in a directory, read with gzip
and numpy only, so the scripts need nothing beyond torch and numpy.

Images come back as u8 NHWC tensors `[n, 28, 28, 1]`, the layout qmul stores
them in (`qmul_torch.pixels_to_input` turns them into model input), labels
as int64 `[n]`.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import torch

#: idx magic numbers: 0x08 = unsigned byte data, then the number of dimensions.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
HW = 28
CLASSES = 10


def read_idx(path: str, magic: int) -> np.ndarray:
    """One gzipped idx file -> u8 array, checking the magic number and that
    the data length matches the dimensions in the header (a truncated or
    mislabelled download fails here, not as a shape error later)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (expected a gzipped idx file)")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an idx header")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: idx magic {got:#010x}, expected {magic:#010x}")
    ndim = magic & 0xFF
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{path}: truncated idx header")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - head != int(np.prod(dims)):
        raise ValueError(f"{path}: {len(raw) - head} data bytes, the header's "
                         f"dimensions {dims} need {int(np.prod(dims))}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def load_split(data_dir: str, split: str, limit: int | None = None):
    """(images u8 `[n, 28, 28, 1]`, labels int64 `[n]`) of `split` ('train'
    or 'test'), the first `limit` images when given."""
    img_name, lab_name = FILES[split]
    images = read_idx(os.path.join(data_dir, img_name), IMAGES_MAGIC)
    labels = read_idx(os.path.join(data_dir, lab_name), LABELS_MAGIC)
    where = os.path.join(data_dir, img_name)
    if images.shape[1:] != (HW, HW):
        raise ValueError(f"{where}: images are {images.shape[1]}x{images.shape[2]}, expected {HW}x{HW}")
    if len(images) != len(labels):
        raise ValueError(f"{data_dir}: {len(images)} {split} images but {len(labels)} labels")
    if labels.size and int(labels.max()) >= CLASSES:
        raise ValueError(f"{data_dir}: {split} label {int(labels.max())} outside 0..{CLASSES - 1}")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.copy()).unsqueeze(-1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
