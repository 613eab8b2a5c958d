"""Trains qmul's quantized ResNet-18 in PyTorch and writes a `qmul-torch`
model file that `qmul convert` turns into a `.qmul` model (issue 17).

    python tools/python/train_torch.py --data DIR --out FILE.safetensors
        [--width 16] [--scheme pact] [--epochs 1] [--limit N] [--batch 128]
        [--lr 0.05] [--seed 0] [--threads 2] [--augment]

The recipe is qmul's (`runtime/src/optim.rs`): SGD with momentum 0.9 and
weight decay 5e-4 on every parameter, cosine learning rate from `--lr` to 0
over all steps, quantizer parameters clamped after each step. `--augment`
adds random 28x28 crops of the image padded by 2 and horizontal flips.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402
import qmul_torch as qt  # noqa: E402
from eval_torch import accuracy  # noqa: E402

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
PAD = 2
#: Progress lines per run (plus the first and last step).
PROGRESS_LINES = 20


def cosine_lr(base: float, step: int, total: int) -> float:
    """qmul's `cosine_lr`: `base` at step 0, annealed to 0 at `total`."""
    return base if total == 0 else base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-image random crop of the zero-padded image and random horizontal
    flip, on NCHW floats (vectorised: one gather for the whole batch)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    oy = torch.randint(0, 2 * PAD + 1, (n,), generator=g)
    ox = torch.randint(0, 2 * PAD + 1, (n,), generator=g)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # [n, 1, h, 1]
    cols = ox[:, None] + torch.arange(w)                        # [n, w]
    flip = torch.rand(n, generator=g) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, chan, rows, cols]


def batches(n: int, size: int, g: torch.Generator):
    """Shuffled index batches over `n` images; a final batch of one image is
    dropped (train-mode BatchNorm over a single image is degenerate)."""
    perm = torch.randperm(n, generator=g)
    for i in range(0, n, size):
        idx = perm[i:i + size]
        if len(idx) >= 2:
            yield idx


def steps_per_epoch(n: int, size: int) -> int:
    full, rest = divmod(n, size)
    return full + (rest >= 2)


def train(model, images, labels, args, g) -> None:
    """SGD over `args.epochs` epochs with a per-step cosine learning rate."""
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM,
                          weight_decay=WEIGHT_DECAY)
    total = args.epochs * steps_per_epoch(len(images), args.batch)
    every = max(1, total // PROGRESS_LINES)
    step, t0 = 0, time.perf_counter()
    model.train()
    for epoch in range(1, args.epochs + 1):
        for idx in batches(len(images), args.batch, g):
            lr = cosine_lr(args.lr, step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            x = qt.pixels_to_input(images[idx])
            if args.augment:
                x = augment(x, g)
            logits = model(x)
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.clamp_quant_params()
            step += 1
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"loss became {loss.item()} at step {step}; try a lower --lr")
            if step == 1 or step % every == 0 or step == total:
                acc = 100.0 * float((logits.argmax(1) == labels[idx]).float().mean())
                print(f"epoch {epoch}/{args.epochs} step {step}/{total} loss {loss.item():.4f} "
                      f"batch acc {acc:.1f}% lr {lr:.4g} {time.perf_counter() - t0:.1f}s", flush=True)
    model.eval()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="directory with the four gzipped idx files")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--scheme", default="pact", choices=qt.SCHEMES)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, help="train on the first N training images")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--augment", action="store_true", help="random crop (pad 2) + horizontal flip")
    args = p.parse_args(argv)
    if args.width < 1 or args.epochs < 1 or args.batch < 2 or args.threads < 1:
        p.error("--width, --epochs and --threads must be >= 1, --batch >= 2")
    if args.limit is not None and args.limit < 2:
        p.error("--limit must be >= 2")
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error("--lr must be a positive number")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # weight init draws from the global generator
    g = torch.Generator().manual_seed(args.seed)
    try:
        train_x, train_y = fmnist.load_split(args.data, "train", args.limit)
        test_x, test_y = fmnist.load_split(args.data, "test")
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"train_torch: {e}")
    print(f"{args.scheme} width {args.width}: {len(train_x)} training images, "
          f"{args.epochs} epoch(s), batch {args.batch}, lr {args.lr}, "
          f"{'augmented, ' if args.augment else ''}{torch.get_num_threads()} threads", flush=True)
    model = qt.QResNet18(args.width, 1, fmnist.CLASSES, args.scheme)
    train(model, train_x, train_y, args, g)
    acc = accuracy(model, test_x, test_y)
    print(f"test accuracy {acc:.2f}% ({len(test_x)} images)", flush=True)
    command = "tools/python/train_torch.py " + " ".join(shlex.quote(a) for a in argv)
    qt.export(model, args.out, input_hw=(fmnist.HW, fmnist.HW),
              info={"trained": command, "train_images": str(len(train_x)),
                    "test_accuracy": f"{acc:.2f}"})
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
