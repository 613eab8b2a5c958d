"""Accuracy of a `qmul-torch` model file on Fashion-MNIST-style data, the
PyTorch counterpart of qmul's own evaluation (issue 17), so a model trained
or unlearned on either side can be scored on the other.

    python tools/python/eval_torch.py --model FILE.safetensors --data DIR
        [--forget-indices FILE] [--train-limit N] [--threads 2]

Prints `TA XX.XX%` (test set). With `--forget-indices` (one training-set
index per line) also `FA` (accuracy on those training images) and `RA`
(accuracy on the rest of the first `--train-limit` training images, default
all): the forget / retain accuracies of machine unlearning.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402
import qmul_torch as qt  # noqa: E402

EVAL_BATCH = 500


@torch.no_grad()
def accuracy(model: qt.QResNet18, images: torch.Tensor, labels: torch.Tensor,
             batch: int = EVAL_BATCH) -> float:
    """Percentage of `images` (u8 NHWC) classified as `labels`, in eval mode
    (running BatchNorm statistics, so the batch size does not matter)."""
    if len(images) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        logits = model(qt.pixels_to_input(images[i:i + batch]))
        correct += int((logits.argmax(dim=1) == labels[i:i + batch]).sum())
    model.train(was_training)
    return 100.0 * correct / len(images)


def read_indices(path: str, n_train: int) -> list:
    """Training-set indices, one per line (blank lines and `#` comments
    skipped); each must be a valid index into the training set. Duplicates
    are dropped: each image counts once."""
    out, seen = [], set()
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                i = int(text)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: {text!r} is not an integer index") from None
            if not 0 <= i < n_train:
                raise ValueError(f"{path}:{lineno}: index {i} outside the {n_train} training images")
            if i not in seen:
                seen.add(i)
                out.append(i)
    if not out:
        raise ValueError(f"{path}: no indices")
    return out


def check_model_fits(model: qt.QResNet18, path: str) -> None:
    """The data are 28x28 grayscale with 10 classes; refuse other models
    before running them."""
    if model.in_ch != 1 or model.classes != fmnist.CLASSES:
        raise ValueError(f"{path}: model takes {model.in_ch} channels and has {model.classes} "
                         f"classes; Fashion-MNIST needs 1 and {fmnist.CLASSES}")
    if tuple(model.input_hw) != (fmnist.HW, fmnist.HW):
        raise ValueError(f"{path}: model input is {model.input_hw[0]}x{model.input_hw[1]}, "
                         f"the data are {fmnist.HW}x{fmnist.HW}")


def report(name: str, acc: float, n: int) -> None:
    print(f"{name} {acc:.2f}% ({n} images)", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="qmul-torch .safetensors file")
    p.add_argument("--data", required=True, help="directory with the four gzipped idx files")
    p.add_argument("--forget-indices", help="file of training-set indices, one per line")
    p.add_argument("--train-limit", type=int, help="RA over the first N training images (default all)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model = qt.load(args.model)
        check_model_fits(model, args.model)
        test_x, test_y = fmnist.load_split(args.data, "test")
        report("TA", accuracy(model, test_x, test_y), len(test_x))
        if args.forget_indices:
            evaluate_forget(model, args)
        elif args.train_limit is not None:
            print("note: --train-limit only matters with --forget-indices", file=sys.stderr)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"eval_torch: {e}")


def evaluate_forget(model: qt.QResNet18, args) -> None:
    """FA over the forget indices, RA over the other first-`train_limit`
    training images."""
    train_x, train_y = fmnist.load_split(args.data, "train")
    limit = len(train_x) if args.train_limit is None else args.train_limit
    if not 1 <= limit <= len(train_x):
        raise ValueError(f"--train-limit {limit}: the training set has {len(train_x)} images")
    forget = read_indices(args.forget_indices, len(train_x))
    fidx = torch.tensor(forget, dtype=torch.int64)
    report("FA", accuracy(model, train_x[fidx], train_y[fidx]), len(fidx))
    keep = torch.ones(limit, dtype=torch.bool)
    keep[fidx[fidx < limit]] = False
    ridx = keep.nonzero().squeeze(1)
    report("RA", accuracy(model, train_x[ridx], train_y[ridx]), len(ridx))


if __name__ == "__main__":
    main()
