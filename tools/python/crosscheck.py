"""Reference cases for the Rust side of PyTorch interop (issue 17).

    python tools/python/crosscheck.py make DIR [--width 8] [--n 10000]
        [--batch 32] [--seed 0] [--schemes pact,lsq,dsq]

For each scheme S this writes two safetensors files that qmul's
`torch_crosscheck` test reads after converting the model with `qmul convert`:
* `DIR/S.safetensors`: `qmul_torch.export` of a `QResNet18(width, 1, 10, S)`
  for 28x28 input, moved away from its initialisation (BatchNorm affine
  parameters, activation clips, LSQ weight steps, DSQ alphas) so that a
  converter that dropped, transposed or mixed up a tensor changes the
  outputs, then trained for `--steps` SGD steps on the shipped Fashion-MNIST
  subset (`data/fashion-mnist-subset`). Why trained: a random network's
  logits hardly depend on its input (and LSQ/DSQ ranges initialised from
  random pixels collapse most activations to two or three codes), so
  agreeing on them would prove little; a briefly trained one predicts every
  class.
* `DIR/S.case.safetensors`: `pixels` U8 `[N, 28, 28, 1]` (NHWC: the subset's
  5,000 training and 1,000 test images, then mirrored training images up to
  `--n`) with their eval-mode `logits` F32 `[N, 10]`; and `--train-batches`
  training batches `train.K.pixels` U8 `[B, 28, 28, 1]` (subset test images),
  `train.K.labels` I64 `[B]`, their train-mode (batch-statistics BatchNorm)
  `train.K.logits` F32 `[B, 10]`, mean cross-entropy `train.K.loss` F32 `[1]`
  and `train.K.grad.<name>` F32 for every parameter (PyTorch name and shape)
  from one backward pass of that loss, and `train.K.near_mask` I64 `[1]`:
  how many activation-quantizer inputs lay within 1e-5 of a straight-through
  mask edge (0 or the top of the range). Several small batches, because a
  batch-statistics pass couples the samples: one value on the other side of
  a rounding boundary changes every later layer's statistics, so the test
  compares gradients on the batches whose forward passes agree.
  Metadata: scheme, width, seed. With `--indices` the images are stored as
  `pixel_indices` / `train.K.indices` I64 into the subset's training then
  test images instead (the small fixtures in `tools/tests/fixtures/torch/`,
  which the Rust test checks without PyTorch).

The model file is written before the training passes, which update the
BatchNorm running statistics. CPU, one thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmnist  # noqa: E402
import qmul_torch as qt  # noqa: E402

CLASSES = 10
HW = 28
#: Eval chunk: bounds memory; eval-mode logits do not depend on it.
EVAL_CHUNK = 1000


#: The shipped subset, relative to this file.
SUBSET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data",
                      "fashion-mnist-subset")


def subset():
    """(train images NHWC, train labels, test images NHWC, test labels)."""
    tr, ly = fmnist.load_split(SUBSET, "train")
    te, lt = fmnist.load_split(SUBSET, "test")
    return tr, ly, te, lt


def eval_images(n: int) -> torch.Tensor:
    """`n` real images: the subset's training and test images, then mirrored
    training images."""
    tr, _, te, _ = subset()
    pool = torch.cat([tr, te])
    while len(pool) < n:
        pool = torch.cat([pool, tr.flip(2)])
    return pool[:n].contiguous()


def train_briefly(model: qt.QResNet18, steps: int, g: torch.Generator) -> None:
    """`steps` SGD steps (batch 64, lr 0.05, momentum 0.9) on the subset's
    training images, quantizer parameters clamped after each, as qmul trains."""
    tr, ly, _, _ = subset()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(tr), (64,), generator=g)
        loss = F.cross_entropy(model(qt.pixels_to_input(tr[idx])), ly[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.clamp_quant_params()
    model.eval()


@torch.no_grad()
def perturb_params(model: qt.QResNet18, g: torch.Generator) -> None:
    """Moves BatchNorm affine and quantizer parameters off their init values,
    which are special (gamma 1, beta 0, PACT clip 6, alpha 0.2) and would hide
    a converter that writes defaults instead of the file's values."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0.0, 0.1, generator=g)
        elif isinstance(m, qt.QAct) and m.scheme == "pact":
            m.q.uniform_(2.0, 6.0, generator=g)
        elif isinstance(m, qt.QAct) and m.scheme == "dsq":
            m.q[1].uniform_(0.1, 0.4, generator=g)
        elif isinstance(m, qt._QuantWeights) and m.kind == "lsq":
            m.wq.mul_(torch.empty_like(m.wq).uniform_(0.8, 1.2, generator=g))
        elif isinstance(m, qt._QuantWeights) and m.kind == "dsq":
            m.wq[-1].uniform_(0.1, 0.4, generator=g)
    model.clamp_quant_params()


def make_model(scheme: str, width: int, seed: int, steps: int, g: torch.Generator) -> qt.QResNet18:
    """A QResNet18 with perturbed parameters, then briefly trained on the subset."""
    torch.manual_seed(seed)  # the module's init draws from the global generator
    model = qt.QResNet18(width, 1, CLASSES, scheme)
    perturb_params(model, g)
    # LSQ/DSQ ranges initialise from the first training batch: real images
    # (random pixels would set them far too wide and collapse the codes).
    train_briefly(model, steps, g)
    return model


@torch.no_grad()
def eval_logits(model: qt.QResNet18, pixels: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(qt.pixels_to_input(pixels[i:i + EVAL_CHUNK]))
                      for i in range(0, len(pixels), EVAL_CHUNK)])


#: Relative distance to an activation quantizer's mask edge (0 or the top of
#: its range) within which qmul's and PyTorch's values, which differ by
#: accumulated float rounding, may fall on different sides.
MASK_EDGE = 1e-5


@torch.no_grad()
def near_mask_edges(act: qt.QAct, x: torch.Tensor) -> int:
    """Values of `x` within MASK_EDGE of `act`'s straight-through mask edges:
    there the code is the same either side (0 or 15), but the gradient passes
    on one side only, so such a batch's gradients need not agree even when
    its logits do."""
    top = {"pact": lambda q: q[0], "lsq": lambda q: q[0] * qt.A_QMAX,
           "dsq": lambda q: q[0]}.get(act.scheme)
    if top is None:
        return 0
    r = float(top(act.q))
    return int(((x.abs() <= MASK_EDGE * r) | ((x - r).abs() <= MASK_EDGE * r)).sum())


def train_case(model: qt.QResNet18, k: int, batch: int, g: torch.Generator,
               by_index: bool = False) -> dict:
    """Training batch `k`: one train-mode forward + backward of the mean
    cross-entropy on `batch` of the subset's test images with their labels,
    the tensors qmul's training step must reproduce (`train.K.*`)."""
    tr, _, te, lt = subset()
    idx = torch.randperm(len(te), generator=g)[:batch]
    pixels, labels = te[idx].contiguous(), lt[idx].contiguous()
    model.train()
    model.zero_grad(set_to_none=True)
    near = []
    hooks = [m.register_forward_hook(lambda mod, i, o: near.append(near_mask_edges(mod, i[0])))
             for m in model.modules() if isinstance(m, qt.QAct)]
    logits = model(qt.pixels_to_input(pixels))
    for h in hooks:
        h.remove()
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    p = f"train.{k}."
    # By index: into the subset's training then test images (`--indices`).
    images = {p + "indices": idx + len(tr)} if by_index else {p + "pixels": pixels}
    out = {**images, p + "labels": labels,
           p + "logits": logits.detach().contiguous(),
           p + "loss": loss.detach().reshape(1).float(),
           p + "near_mask": torch.tensor([sum(near)], dtype=torch.int64)}
    for name, param in model.named_parameters():
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        out[f"{p}grad.{name}"] = grad.detach().contiguous()
    model.eval()
    return out


def make_scheme(out_dir: str, scheme: str, args) -> None:
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(args.seed)
    model = make_model(scheme, args.width, args.seed, args.steps, g)
    model_path = os.path.join(out_dir, f"{scheme}.safetensors")
    qt.export(model, model_path, input_hw=(HW, HW),
              info={"made_by": "tools/python/crosscheck.py make",
                    "seed": str(args.seed),
                    "weights": f"random, then {args.steps} steps on the subset"})
    t1 = time.perf_counter()
    pixels = eval_images(args.n)
    case = {"logits": eval_logits(model, pixels)}
    if args.indices:
        case["pixel_indices"] = torch.arange(args.n, dtype=torch.int64)
    else:
        case["pixels"] = pixels
    t2 = time.perf_counter()
    # Train mode updates the running statistics; the file is already written
    # and batch-statistics passes do not read them.
    for k in range(args.train_batches):
        case.update(train_case(model, k, args.batch, g, args.indices))
    t3 = time.perf_counter()
    meta = {"scheme": scheme, "width": str(args.width), "seed": str(args.seed)}
    qt.save_safetensors(case, meta, os.path.join(out_dir, f"{scheme}.case.safetensors"))
    print(f"{scheme}: model {t1 - t0:.1f}s, {args.n} eval logits {t2 - t1:.1f}s, "
          f"{args.train_batches} train steps (batch {args.batch}) {t3 - t2:.1f}s, total {time.perf_counter() - t0:.1f}s "
          f"-> {model_path}", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write DIR/S.safetensors and DIR/S.case.safetensors per scheme")
    m.add_argument("dir")
    m.add_argument("--width", type=int, default=8)
    m.add_argument("--n", type=int, default=10000, help="eval images")
    m.add_argument("--batch", type=int, default=4, help="training batch for the gradient cases")
    m.add_argument("--train-batches", type=int, default=128, help="training batches (gradient cases)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--steps", type=int, default=100, help="training steps on the subset")
    m.add_argument("--schemes", default="pact,lsq,dsq", help="comma-separated, of pact,lsq,dsq,none")
    m.add_argument("--indices", action="store_true",
                   help="store subset indices instead of pixels (the small fixtures the test "
                        "keeps in tools/tests/fixtures/torch; --n at most 6000)")
    args = p.parse_args(argv)
    args.schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    bad = [s for s in args.schemes if s not in qt.SCHEMES]
    if bad:
        p.error(f"unknown scheme(s) {', '.join(bad)}; choose from {', '.join(qt.SCHEMES)}")
    if args.indices and args.n > 6000:
        p.error("--indices takes --n up to 6000 (the subset's training and test images)")
    if args.width < 1 or args.n < 1 or args.batch < 2:
        p.error("--width and --n must be >= 1, --batch >= 2 (train-mode BatchNorm needs 2)")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.dir, exist_ok=True)
    for scheme in args.schemes:
        make_scheme(args.dir, scheme, args)


if __name__ == "__main__":
    main()
