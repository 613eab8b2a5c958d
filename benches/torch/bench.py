#!/usr/bin/env python3
"""PyTorch side of `qmul bench` (issue 15): the workloads of
`tools/src/bench.rs`, run on the same 4-bit ResNet-18
(`tools/python/qmul_torch.py`, PACT, 8-bit stem and classifier, freshly
initialised) the way a PyTorch user would, on CPU, with a fixed thread count,
on seeded random u8 images (1 channel: 28x28, 3 channels: 32x32) and labels
of 10 classes. `qmul bench --torch PYTHON` runs this script once per workload.

Phases (one per invocation, so that the peak RSS is the phase's own):

* `train`: one step = u8 -> float conversion, forward + cross-entropy +
  backward + SGD (lr 0.01, momentum 0.9, weight decay 5e-4, as
  `bench::train_steps`) + quantizer-range clamping, train mode, the same
  batch every step; `images_per_s = batch / median step time`.
* `infer`: eval mode under `torch.no_grad()`, one forward of the same batch
  per step (`bench::infer_steps`).
* `unlearn`: one Q-MUL epoch as `runtime/src/unlearn.rs` runs it for a
  10-class model (`bench::unlearn_epoch`: a fresh optimiser, 10 forget and 30
  retain batches, lr 0.05, momentum 0.9, wd 5e-4):
  1. Similar Labels: eval-mode probabilities of the forget set; the target of
     each sample is the class `j != y` with `|p_j - p_y|` smallest (the
     runner-up when `y` is the prediction).
  2. Adaptive Gradient Reweighting: `G_f` = mean over forget batches of the
     sum of per-tensor gradient L2 norms of the mean CE (train-mode BN, running
     statistics not updated), `G_r` the same over as many shuffled retain
     batches as there are forget batches; `w_f = G_r / (G_f + G_r)`,
     `w_r = G_f / (G_f + G_r)` (0.5 each if the sum is not positive/finite).
  3. Training (the sequential variant qmul uses for <= 10 classes): a
     shuffled pass over the forget set with loss `w_f * CE`, then a shuffled
     pass over the retain set with `w_r * CE`, one SGD step per batch,
     BN running statistics updated.
  4. The epoch's bookkeeping: a finiteness check of every parameter and the
     count of changed weight codes (snapshot before and after).
  `epoch_s` is the wall time of all of it, from the optimiser's creation on
  (as `bench::unlearn_epoch` times the whole `unlearn()` call).

Steps: `--warmup` untimed steps, then `--steps` timed ones; the median is
`sorted(t)[n // 2]` like `bench::median`. For `unlearn` the warm-up is
gradient-only passes on retain batches that leave the model unchanged.
`peak_rss_mb` is the process's VmHWM (else `ru_maxrss`) at the end of the phase (it includes the
interpreter, torch and the data); `rss_import_mb` is the same high-water mark
right after importing torch (the fixed cost of the interpreter and the torch
libraries), `rss_start_mb` just before the first timed step.

`--phase all` runs the three phases in fresh subprocesses and prints one JSON
line holding all three. Every invocation prints exactly one JSON line on
stdout (on failure: the same line with an `error` field, exit status 1).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", choices=["train", "infer", "unlearn", "all"], default="train")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--channels", type=int, choices=[1, 3], default=1,
                   help="1: 28x28 grey (Fashion-MNIST), 3: 32x32 RGB (CIFAR); 10 classes")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--scheme", choices=["pact", "lsq", "dsq", "none"], default="pact")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--forget-batches", type=int, default=10,
                   help="unlearn: forget-set batches (bench::UNLEARN_FORGET_BATCHES)")
    p.add_argument("--retain-batches", type=int, default=30,
                   help="unlearn: retain-set batches (bench::UNLEARN_RETAIN_BATCHES)")
    p.add_argument("--epoch-batches", type=int, default=None,
                   help="unlearn: N batches in all, split like qmul's 10 + 30 "
                        "(N // 4 forget, the rest retain)")
    p.add_argument("--lr", type=float, default=None,
                   help="default 0.01 (train, as qmul bench), 0.05 (unlearn, qmul's Q-MUL default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the network runs (cuda: train and infer phases)")
    a = p.parse_args(argv)
    bad = [n for n in ("width", "batch", "threads", "steps", "forget_batches", "retain_batches")
           if getattr(a, n) < 1] + [n for n in ("warmup",) if a.warmup < 0]
    if a.epoch_batches is not None and a.epoch_batches < 2:
        bad.append("epoch_batches")
    if bad:
        p.error("must be positive: " + ", ".join("--" + n.replace("_", "-") for n in bad))
    return a


def emit(obj, code=0):
    if code and "error" in obj:
        sys.stderr.write(str(obj["error"]) + "\n")  # qmul bench shows stderr on failure
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    sys.exit(code)


def peak_rss_mb():
    # VmHWM: this process's own high-water mark. ru_maxrss is not used where
    # VmHWM exists: Linux carries the parent's peak into it across fork+exec,
    # so a bench that spawns this script would see its own peak instead.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_all(args):
    out = {}
    rest, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--phase":
            skip = True
        elif not a.startswith("--phase="):
            rest.append(a)
    for phase in ("train", "infer", "unlearn"):
        argv = [sys.executable, os.path.abspath(__file__), *rest, "--phase", phase]
        r = subprocess.run(argv, capture_output=True, text=True)
        sys.stderr.write(r.stderr)
        line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "{}"
        try:
            res = json.loads(line)
        except ValueError:
            res = {"phase": phase, "error": f"no JSON line: {line[:200]}"}
        if r.returncode != 0:
            res.setdefault("error", r.stderr.strip()[-2000:])
        out[phase] = res
    failed = any("error" in v for v in out.values())
    emit({"phase": "all", "phases": out}, 1 if failed else 0)


def main():
    args = parse_args()
    if args.phase == "all":
        run_all(args)
    # Thread pools must be sized before torch starts them.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    # torch.compile's C++ compile workers (warm-up only, never timed).
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(args.threads))
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    sys.path.insert(0, os.path.join(REPO, "tools", "python"))
    import qmul_torch as qt

    if args.device == "cuda":
        if not torch.cuda.is_available():
            emit({"phase": args.phase, "error": "--device cuda: torch sees no CUDA device"}, 1)
        if args.phase == "unlearn":
            emit({"phase": args.phase, "error": "--device cuda: the train and infer phases only"}, 1)
        _SYNC[0] = torch.cuda.synchronize
    rss_import = peak_rss_mb()
    base = {
        "torch": torch.__version__,
        "threads": args.threads,
        "width": args.width,
        "channels": args.channels,
        "batch": args.batch,
        "phase": args.phase,
        "scheme": args.scheme,
        "compiled": bool(args.compile),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "rss_import_mb": round(rss_import, 1),
    }
    try:
        res = PHASES[args.phase](args, torch, F, qt)
    except Exception as e:  # one JSON line even on failure
        emit({**base, "error": f"{type(e).__name__}: {e}"}, 1)
    emit({**base, **res, "peak_rss_mb": round(peak_rss_mb(), 1)})


# --------------------------------------------------------------------------


def setup(args, torch, qt):
    torch.manual_seed(args.seed)
    hw = 28 if args.channels == 1 else 32
    net = qt.QResNet18(args.width, args.channels, args.classes, args.scheme).to(args.device)
    fwd = net
    if args.compile:
        if not hasattr(torch, "compile"):
            raise RuntimeError("torch.compile is not available in this torch")
        fwd = torch.compile(net)
    g = torch.Generator().manual_seed(args.seed + 1)

    def batch_of(n):
        # u8 NHWC pixels, as qmul receives them; converted inside the timed step.
        # (torch's generator: the same distribution as qmul's, not the same values.)
        px = torch.randint(0, 256, (n, hw, hw, args.channels), dtype=torch.uint8, generator=g)
        y = torch.randint(0, args.classes, (n,), generator=g)
        return px.to(args.device), y.to(args.device)

    return net, fwd, batch_of


def median(ts):
    """`bench::median`: the upper middle element."""
    return sorted(ts)[len(ts) // 2]


_SYNC = [lambda: None]


def step_times(n, fn):
    """Seconds of `n` calls of `fn`, each including its wait for the device."""
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        _SYNC[0]()
        ts.append(time.perf_counter() - t0)
    return ts


def phase_train(args, torch, F, qt):
    net, fwd, batch_of = setup(args, torch, qt)
    px, y = batch_of(args.batch)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr or 0.01, momentum=0.9, weight_decay=5e-4)
    net.train()

    def step():
        x = qt.pixels_to_input(px)
        loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        net.clamp_quant_params()

    step_times(args.warmup, step)
    rss0 = peak_rss_mb()
    ts = step_times(args.steps, step)
    med = median(ts)
    return {
        "steps": args.steps,
        "warmup": args.warmup,
        "images_per_s": round(args.batch / med, 2),
        "median_step_ms": round(med * 1e3, 3),
        "rss_start_mb": round(rss0, 1),
    }


def phase_infer(args, torch, F, qt):
    net, fwd, batch_of = setup(args, torch, qt)
    px, _ = batch_of(args.batch)
    net.eval()

    def step():
        with torch.no_grad():
            fwd(qt.pixels_to_input(px))

    step_times(args.warmup, step)
    rss0 = peak_rss_mb()
    ts = step_times(args.steps, step)
    med = median(ts)
    return {
        "steps": args.steps,
        "warmup": args.warmup,
        "images_per_s": round(args.batch / med, 2),
        "median_step_ms": round(med * 1e3, 3),
        "rss_start_mb": round(rss0, 1),
    }


def similar_labels(probs, labels, torch):
    """qmul's `similar_labels`: j != y minimising |p_j - p_y| (first on ties)."""
    py = probs.gather(1, labels.view(-1, 1))
    dist = (probs - py).abs()
    dist.scatter_(1, labels.view(-1, 1), float("inf"))
    return dist.argmin(dim=1)


def phase_unlearn(args, torch, F, qt):
    net, fwd, batch_of = setup(args, torch, qt)
    B = args.batch
    if args.epoch_batches is not None:
        nf = max(1, args.epoch_batches // 4)
        nr = max(1, args.epoch_batches - nf)
    else:
        nf, nr = args.forget_batches, args.retain_batches
    f_px, f_y = batch_of(nf * B)
    r_px, r_y = batch_of(nr * B)
    nF, nR = len(f_y), len(r_y)
    params = list(net.parameters())
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    g = torch.Generator().manual_seed(args.seed + 2)

    def grad_norm_sum(px, y):
        """Sum of per-tensor gradient L2 norms of the mean CE (no parameter changes)."""
        loss = F.cross_entropy(fwd(qt.pixels_to_input(px)), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return sum(float(gr.double().norm()) for gr in grads if gr is not None)

    class frozen_running_stats:
        """Train-mode BN (batch statistics) with the running statistics put back
        afterwards (qmul's AGR passes do not update them). Restoring the buffers
        rather than zeroing BN's momentum keeps one graph under torch.compile."""

        def __enter__(self):
            self.saved = [[b.clone() for b in m.buffers()] for m in bns]

        def __exit__(self, *exc):
            with torch.no_grad():
                for m, saved in zip(bns, self.saved):
                    for b, v in zip(m.buffers(), saved):
                        b.copy_(v)

    # Warm-up (not timed, model unchanged): an eval forward and gradient passes,
    # and a throwaway optimiser (torch's first SGD() imports modules lazily, ~1 s).
    torch.optim.SGD(params, lr=0.0)
    net.eval()
    with torch.no_grad():
        fwd(qt.pixels_to_input(r_px[:B]))
    net.train()
    with frozen_running_stats():
        for i in range(args.warmup):
            j = (i % nr) * B
            grad_norm_sum(r_px[j:j + B], r_y[j:j + B])
    rss0 = peak_rss_mb()

    t0 = time.perf_counter()
    opt = torch.optim.SGD(params, lr=args.lr or 0.05, momentum=0.9, weight_decay=5e-4)
    codes = net.weight_codes()
    ts = time.perf_counter()

    # 1. Similar Labels.
    net.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(fwd(qt.pixels_to_input(f_px[j:j + B])), dim=1)
                           for j in range(0, nF, B)])
    f_t = similar_labels(probs, f_y, torch)
    t1 = time.perf_counter()

    # 2. AGR: G_f over the forget set, G_r over as many shuffled retain batches.
    def mean_norm(px, y, idx):
        total, count = 0.0, 0
        for j in range(0, len(idx), B):
            b = idx[j:j + B]
            total += grad_norm_sum(px[b], y[b])
            count += 1
        return total / max(count, 1), count

    net.train()
    with frozen_running_stats():
        gf, fb = mean_norm(f_px, f_t, torch.arange(nF))
        ridx = torch.randperm(nR, generator=g)[: min(fb * B, nR)]
        gr, rb = mean_norm(r_px, r_y, ridx)
    tot = gf + gr
    wf, wr = (gr / tot, gf / tot) if 0.0 < tot < float("inf") else (0.5, 0.5)
    t2 = time.perf_counter()

    # 3. Sequential variant: the shuffled forget set, then the shuffled retain set.
    def train_step(px, y, w):
        loss = w * F.cross_entropy(fwd(qt.pixels_to_input(px)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        net.clamp_quant_params()
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss {float(loss)}: diverged")

    fo = torch.randperm(nF, generator=g)
    ro = torch.randperm(nR, generator=g)
    for j in range(0, nF, B):
        b = fo[j:j + B]
        train_step(f_px[b], f_t[b], wf)
    for j in range(0, nR, B):
        b = ro[j:j + B]
        train_step(r_px[b], r_y[b], wr)
    t3 = time.perf_counter()

    # 4. Bookkeeping.
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    now = net.weight_codes()
    changed = int(sum(int((a != b).sum()) for a, b in zip(codes, now)))
    t4 = time.perf_counter()

    return {
        "forget_batches": fb,
        "retain_batches": -(-nR // B),
        "agr_retain_batches": rb,
        "warmup": args.warmup,
        "epoch_s": round(t4 - t0, 3),
        "setup_s": round(ts - t0, 3),
        "similar_labels_s": round(t1 - ts, 3),
        "agr_norms_s": round(t2 - t1, 3),
        "train_s": round(t3 - t2, 3),
        "bookkeeping_s": round(t4 - t3, 3),
        "w_forget": round(wf, 6),
        "w_retain": round(wr, 6),
        "finite": finite,
        "codes_changed": changed,
        "rss_start_mb": round(rss0, 1),
    }


PHASES = {"train": phase_train, "infer": phase_infer, "unlearn": phase_unlearn}

if __name__ == "__main__":
    main()
