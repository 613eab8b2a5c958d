"""qmul's quantized CIFAR-style ResNet-18, written in plain PyTorch.

Why: `qmul bench` (issue 15) compares qmul's packed 4-bit runtime with what a
PyTorch user would run for the same network, and issue 17 (PyTorch interop)
builds on this module. The network, its quantizers and their
straight-through backward passes therefore follow qmul's Rust sources, not a
generic quantization library:

* Architecture (`models/src/resnet.rs`): 3x3 stem convolution, stride 1, no
  max-pool; four stages of two BasicBlocks with `w, 2w, 4w, 8w` channels,
  stride 2 in the first block of stages 2-4; a 1x1 convolution + BatchNorm
  shortcut where the shape changes (the first block of stages 2-4), identity
  elsewhere; global average pooling; linear classifier with bias. Convolutions
  have no bias; padding is `k // 2`.
* Quantizer placement: an activation quantizer (ReLU + unsigned 4-bit, codes
  0..15) after the stem BatchNorm, after each block's first BatchNorm and
  after each block's residual sum: 17 in all. Block convolutions and
  shortcuts have signed 4-bit weights; the stem convolution and the
  classifier have 8-bit per-output-channel max-abs weights under every
  scheme. The classifier also quantizes its input per sample to u8 with scale
  `max(row) / 255` (`runtime/src/ops/linear.rs`), straight-through backward.
* Schemes (`runtime/src/quant/{act,weight,dsq}.rs`):
  - `pact`: activations `round(clip(x, 0, a) * 15 / a) * a / 15`, learned
    clip `a` (init 6.0); backward `dx = dy * 1[0 <= x <= a]`,
    `da = sum dy * 1[x >= a]` (no rounding-residual term). 4-bit weights:
    per-output-channel max-abs, `scale = max|w| / 7`, identity backward.
  - `lsq`: activations with learned step `s`, codes `round(clip(x/s, 0, 15))`,
    gradient scale `1/sqrt(N * 15)` with N the elements per sample; weights
    with a learned step per output channel, codes `round(clip(w/s, -8, 7))`,
    gradient scale `1/sqrt(K * 7)` with K the weights per channel.
  - `dsq`: hard quantization forward, backward through the tanh soft
    quantizer; activations `[u, alpha]` (clip and sharpness), weights a clip
    `u` per channel (interval `u / 7`, levels `-8..7`) and one `alpha` per
    layer.
  - `none`: float weights, plain ReLU, float classifier.
* Max-abs scales have their low mantissa bits cleared (3 bits for 4-bit,
  7 for 8-bit) exactly as qmul does, so that codes match; all rounding is
  half-to-even (`torch.round`), and scales are applied as `x * (1 / scale)`
  like the Rust code.
* Initialisation (`runtime/src/model.rs`): Kaiming-normal convolutions
  (fan-out, `std = sqrt(2 / (cout k k))`), PyTorch-default linear layer
  (uniform `+-1/sqrt(cin)` for weight and bias), BatchNorm at identity
  (eps 1e-5, momentum 0.1, as PyTorch). LSQ weight steps start at
  `2 mean|w| / sqrt(7)` per channel and DSQ weight clips at `max|w|`,
  alpha 0.2. LSQ/DSQ activation ranges start at 0 and are set from the first
  training batch: `s = max(2 mean(relu(x)) / sqrt(15), 1e-3)`, DSQ `u = 15 s`.
* After every optimiser step call `model.clamp_quant_params()` (qmul clamps
  PACT/LSQ/DSQ ranges to >= 1e-4 (activations) / 1e-8 (weights) and DSQ
  alpha to [1e-3, 0.499]).

Input: qmul takes u8 NHWC pixels with value `byte / 255`; here the input is
an NCHW float tensor `byte / 255` (`pixels_to_input` converts).

Parameter layout mirrors qmul's parameter store so that a model can be
moved between the two (issue 17): every quantized conv / linear owns an
optional `wq` parameter (`[]` max-abs: not registered; LSQ `[s_0..s_{n-1}]`;
DSQ `[u_0..u_{n-1}, alpha]`), every activation quantizer a `q` parameter
(PACT `[a]`, LSQ `[s]`, DSQ `[u, alpha]`). `qmul_name` maps names, and
`to_qmul_layout` / `from_qmul_layout` convert conv weights between PyTorch's
`(cout, cin, kh, kw)` and qmul's `(cout, kh * kw * cin)` rows.

Differences from qmul that remain (by design of the two runtimes):
qmul multiplies integer codes and applies the scales once per output
(`sum(code_x * code_w) * s_x * s_w`), PyTorch multiplies the dequantized
float values, and BatchNorm statistics are accumulated in f64 in qmul; the
results agree to float rounding, so a value lying on a rounding boundary can
occasionally land on the neighbouring code. Random initial weights come from
PyTorch's generator, not qmul's.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "QResNet18",
    "QConv2d",
    "QLinear",
    "QAct",
    "pixels_to_input",
    "qmul_name",
    "to_qmul_layout",
    "from_qmul_layout",
    "SCHEMES",
]

SCHEMES = ("pact", "lsq", "dsq", "none")

#: Largest unsigned activation code.
A_QMAX = 15.0


# --------------------------------------------------------------------------
# Helpers


def _ste(hard: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """`hard` in the forward, the gradient of `surrogate` in the backward.

    Written as `hard + (s - s)` rather than `s + (hard - s)` so that the
    forward value is exactly `hard` (the codes must not move by float error).
    """
    return hard.detach() + (surrogate - surrogate.detach())


def _exact_scale(s: torch.Tensor, qmax: float) -> torch.Tensor:
    """qmul's `exact_scale`: clear the low mantissa bits of a max-abs scale
    (3 for 4-bit, 7 for 8-bit) so that `code * scale` is exact."""
    bits = 3 if qmax <= 7.0 else 7
    mask = ~((1 << bits) - 1)
    return (s.contiguous().view(torch.int32) & mask).view(torch.float32)


def _rows(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-output-channel vector shaped to broadcast over `like`."""
    return t.view(-1, *([1] * (like.dim() - 1)))


def _dsq_soft(x, d, offset, alpha):
    """DSQ's soft quantizer `D (i - o + 1/2 + 1/2 s tanh(c t))` at in-range
    inputs (`runtime/src/quant/dsq.rs`); `i` is piecewise constant (no
    gradient), `c = ln(2/alpha - 1)`, `s = 1/tanh(c/2)`."""
    c = torch.log(2.0 / alpha - 1.0)
    s = 1.0 / torch.tanh(0.5 * c)
    v = x / d + offset
    i = torch.floor(v).clamp(0.0, 14.0).detach()
    t = v - i - 0.5
    return d * (i - offset + 0.5 + 0.5 * s * torch.tanh(c * t))


# --------------------------------------------------------------------------
# Activation quantizers: ReLU + unsigned 4-bit


class _PactAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a):
        scale = a / A_QMAX
        inv = 1.0 / scale
        ctx.save_for_backward(x, a)
        return torch.round((x * inv).clamp(0.0, A_QMAX)) * scale

    @staticmethod
    def backward(ctx, g):
        x, a = ctx.saved_tensors
        dx = g * ((x >= 0) & (x <= a)).to(g.dtype)
        da = (g * (x >= a).to(g.dtype)).sum().reshape(1)
        return dx, da


class _LsqAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, features: int):
        inv = 1.0 / s
        ctx.save_for_backward(x, s)
        ctx.features = features
        return torch.round((x * inv).clamp(0.0, A_QMAX)) * s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        v = x * (1.0 / s)
        below, above = v < 0, v > A_QMAX
        inside = ~(below | above)
        dx = g * inside.to(g.dtype)
        ds = torch.where(above, g * A_QMAX, torch.where(inside, g * (torch.round(v) - v), 0.0))
        gscale = 1.0 / math.sqrt(ctx.features * A_QMAX)
        return dx, (ds.sum() * gscale).reshape(1), None


def _dsq_act(x, q):
    u, alpha = q[0], q[1]
    scale = u / A_QMAX
    hard = torch.round((x * (1.0 / scale)).clamp(0.0, A_QMAX)) * scale
    soft = _dsq_soft(x, scale, 0.0, alpha)
    surrogate = torch.where(x < 0, torch.zeros_like(x), torch.where(x > u, u.expand_as(x), soft))
    return _ste(hard, surrogate)


class QAct(nn.Module):
    """ReLU + unsigned 4-bit quantizer (qmul's `Act` node); `q` holds the
    scheme's parameters: PACT `[a]`, LSQ `[s]`, DSQ `[u, alpha]`."""

    def __init__(self, scheme: str, pact_init: float = 6.0):
        super().__init__()
        self.scheme = scheme
        init = {"pact": [pact_init], "lsq": [0.0], "dsq": [0.0, 0.2], "none": []}[scheme]
        if init:
            self.q = nn.Parameter(torch.tensor(init, dtype=torch.float32))
        # LSQ/DSQ ranges at 0 are set from the first training batch.
        self._pending = scheme in ("lsq", "dsq")

    @torch.no_grad()
    def _init_from_batch(self, x):
        mean = x.detach().clamp_min(0).double().mean().item()
        s = max(2.0 * mean / math.sqrt(A_QMAX), 1e-3)
        self.q[0] = s if self.scheme == "lsq" else s * A_QMAX

    def forward(self, x):
        if self.scheme == "none":
            return F.relu(x)
        if self._pending and self.training:
            if float(self.q[0].detach()) <= 0.0:
                self._init_from_batch(x)
            self._pending = False
        if self.scheme == "pact":
            return _PactAct.apply(x, self.q)
        if self.scheme == "lsq":
            return _LsqAct.apply(x, self.q, x[0].numel())
        return _dsq_act(x, self.q)

    @torch.no_grad()
    def clamp_params(self):
        if self.scheme in ("pact", "lsq"):
            self.q.clamp_(min=1e-4)
        elif self.scheme == "dsq":
            self.q[0].clamp_(min=1e-4)
            self.q[1].clamp_(1e-3, 0.499)

    def extra_repr(self):
        return f"scheme={self.scheme}"


# --------------------------------------------------------------------------
# Weight quantizers: signed, one scale per output channel


def _maxabs_weight(w, qmax: float):
    """Per-output-channel max-abs codes `round(w / scale)`, `scale = max|w| /
    qmax` (mantissa-trimmed; 1 for an all-zero channel); identity backward."""
    with torch.no_grad():
        m = w.abs().flatten(1).amax(dim=1)
        scale = torch.where(m > 0, _exact_scale(m / qmax, qmax), torch.ones_like(m))
        scale = _rows(scale, w)
        hard = torch.round((w * (1.0 / scale)).clamp(-qmax, qmax)) * scale
    return _ste(hard, w)


class _LsqWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, s):
        sr = _rows(s, w)
        ctx.save_for_backward(w, s)
        return torch.round((w * (1.0 / sr)).clamp(-8.0, 7.0)) * sr

    @staticmethod
    def backward(ctx, g):
        w, s = ctx.saved_tensors
        v = w * (1.0 / _rows(s, w))
        below, above = v < -8.0, v > 7.0
        inside = ~(below | above)
        dw = g * inside.to(g.dtype)
        ds = torch.where(
            below, -8.0 * g, torch.where(above, 7.0 * g, g * (torch.round(v) - v))
        )
        k = w[0].numel()
        return dw, ds.flatten(1).sum(dim=1) / math.sqrt(k * 7.0)


def _dsq_weight(w, q):
    cout = w.shape[0]
    u, alpha = _rows(q[:cout], w), q[cout]
    d = u / 7.0
    hard = torch.round((w * (1.0 / d)).clamp(-8.0, 7.0)) * d
    soft = _dsq_soft(w, d, 8.0, alpha)
    lo = -8.0 * d
    surrogate = torch.where(w < lo, lo.expand_as(w), torch.where(w > u, u.expand_as(w), soft))
    return _ste(hard, surrogate)


class _QuantWeights:
    """Shared by QConv2d and QLinear: `kind` is 'none', 'maxabs4', 'maxabs8',
    'lsq' or 'dsq' (qmul's `WeightQuant::of(scheme, precision)`)."""

    def _setup_quant(self, kind: str):
        self.kind = kind
        self.register_parameter("wq", None)

    @torch.no_grad()
    def _init_quant(self):
        w, cout = self.weight, self.weight.shape[0]
        k = w[0].numel()
        if self.kind == "lsq":
            s = (2.0 * w.abs().flatten(1).sum(dim=1) / k / math.sqrt(7.0)).clamp_min(1e-8)
            self.wq = nn.Parameter(s)
        elif self.kind == "dsq":
            u = w.abs().flatten(1).amax(dim=1).clamp_min(1e-8)
            self.wq = nn.Parameter(torch.cat([u, torch.tensor([0.2])]))

    def quantized_weight(self):
        if self.kind == "none":
            return self.weight
        if self.kind == "maxabs4":
            return _maxabs_weight(self.weight, 7.0)
        if self.kind == "maxabs8":
            return _maxabs_weight(self.weight, 127.0)
        if self.kind == "lsq":
            return _LsqWeight.apply(self.weight, self.wq)
        return _dsq_weight(self.weight, self.wq)

    @torch.no_grad()
    def clamp_params(self):
        if self.kind == "lsq":
            self.wq.clamp_(min=1e-8)
        elif self.kind == "dsq":
            cout = self.weight.shape[0]
            self.wq[:cout].clamp_(min=1e-8)
            self.wq[cout].clamp_(1e-3, 0.499)


def _weight_kind(scheme: str, eight_bit: bool) -> str:
    if scheme == "none":
        return "none"
    if eight_bit:
        return "maxabs8"
    return {"pact": "maxabs4", "lsq": "lsq", "dsq": "dsq"}[scheme]


class QConv2d(nn.Conv2d, _QuantWeights):
    """Bias-free convolution (padding `k // 2`) with quantized weights."""

    def __init__(self, cin, cout, k, stride, kind):
        nn.Conv2d.__init__(self, cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self._setup_quant(kind)
        # qmul: Kaiming normal, fan-out.
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self._init_quant()

    def forward(self, x):
        return self._conv_forward(x, self.quantized_weight(), None)

    def extra_repr(self):
        return super().extra_repr() + f", weights={self.kind}"


class QLinear(nn.Linear, _QuantWeights):
    """Classifier. 8-bit: max-abs weights per output, input rows quantized to
    u8 with scale `max(row) / 255` (identity backward); float under 'none'."""

    def __init__(self, cin, cout, kind):
        nn.Linear.__init__(self, cin, cout)  # PyTorch default init, as qmul
        self._setup_quant(kind)
        self._init_quant()

    def forward(self, x):
        if self.kind != "none":
            with torch.no_grad():
                mx = x.amax(dim=1, keepdim=True).clamp_min(0.0)
                s = torch.where(mx > 0, mx / 255.0, torch.ones_like(mx))
                xq = torch.round((x / s).clamp(0.0, 255.0)) * s
            x = _ste(xq, x)
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self):
        return super().extra_repr() + f", weights={self.kind}"


# --------------------------------------------------------------------------
# Network


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN (+ shortcut) - act."""

    def __init__(self, cin, cout, stride, scheme):
        super().__init__()
        kind = _weight_kind(scheme, False)
        self.conv1 = QConv2d(cin, cout, 3, stride, kind)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = QAct(scheme)
        self.conv2 = QConv2d(cout, cout, 3, 1, kind)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(QConv2d(cin, cout, 1, stride, kind), nn.BatchNorm2d(cout))
        self.act2 = QAct(scheme)

    def forward(self, x):
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        short = x if self.downsample is None else self.downsample(x)
        return self.act2(y + short)


class QResNet18(nn.Module):
    """qmul's ResNet-18 (`ResNetConfig::resnet18`): `width` channels in the
    first stage, `in_ch` 1 or 3 input channels, `classes` outputs, `scheme`
    one of 'pact', 'lsq', 'dsq', 'none'. Input NCHW floats `byte / 255`."""

    def __init__(self, width=16, in_ch=1, classes=10, scheme="pact", blocks=(2, 2, 2, 2)):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        if width < 1 or classes < 2 or in_ch not in (1, 3):
            raise ValueError("width >= 1, classes >= 2 and 1 or 3 input channels required")
        self.scheme = scheme
        self.conv1 = QConv2d(in_ch, width, 3, 1, _weight_kind(scheme, True))
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = QAct(scheme)
        cin = width
        for s, nb in enumerate(blocks):
            cout = width << s
            layer = []
            for j in range(nb):
                layer.append(BasicBlock(cin, cout, 2 if s > 0 and j == 0 else 1, scheme))
                cin = cout
            setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
        self.fc = QLinear(cin, classes, _weight_kind(scheme, True))

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))

    @torch.no_grad()
    def clamp_quant_params(self):
        """Keeps quantizer parameters in their valid ranges (call after every
        optimiser step, as qmul's SGD does)."""
        for m in self.modules():
            if isinstance(m, (QAct, _QuantWeights)):
                m.clamp_params()

    def weight_codes(self):
        """Integer weight codes of every quantized layer, in layer order
        (qmul's `Model::weight_codes`; comparing snapshots counts changed codes)."""
        out = []
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, _QuantWeights) and m.kind != "none":
                    wq = m.quantized_weight()
                    if m.kind in ("maxabs4", "maxabs8"):
                        qmax = 7.0 if m.kind == "maxabs4" else 127.0
                        mx = m.weight.abs().flatten(1).amax(dim=1)
                        scale = torch.where(mx > 0, _exact_scale(mx / qmax, qmax), torch.ones_like(mx))
                    elif m.kind == "lsq":
                        scale = m.wq
                    else:
                        scale = m.wq[: m.weight.shape[0]] / 7.0
                    out.append(torch.round(wq / _rows(scale, wq)).to(torch.int8))
        return out


# --------------------------------------------------------------------------
# Interop helpers


def pixels_to_input(pixels: torch.Tensor, nhwc: bool = True) -> torch.Tensor:
    """u8 images (NHWC as qmul stores them, or NCHW) -> NCHW floats `byte / 255`."""
    x = pixels.permute(0, 3, 1, 2) if nhwc else pixels
    return x.contiguous().float() / 255.0


_BLOCK_PART = {"conv1": "1.conv", "bn1": "1.bn", "act1": "1.act", "conv2": "2.conv",
               "bn2": "2.bn", "act2": "out.act", "downsample.0": "down.conv", "downsample.1": "down.bn"}
_STEM_PART = {"conv1": "stem.conv", "bn1": "stem.bn", "act1": "stem.act", "fc": "fc"}
_LEAF = {"weight": "weight", "bias": "bias", "wq": "wq", "q": "q",
         "running_mean": "running_mean", "running_var": "running_var"}


def qmul_name(name: str) -> str | None:
    """qmul's tensor name for a `state_dict` key (None for keys qmul has no
    tensor for, e.g. `num_batches_tracked`). BatchNorm `weight`/`bias` are
    qmul's `gamma`/`beta`."""
    m = re.fullmatch(r"(layer\d\.\d+)\.(.+)\.([a-z_]+)", name)
    if m:
        prefix, part, leaf = m.group(1), m.group(2), m.group(3)
        part = _BLOCK_PART.get(part)
        base = None if part is None else f"{prefix}.{part}"
    else:
        m = re.fullmatch(r"([a-z0-9]+)\.([a-z_]+)", name)
        if not m:
            return None
        base, leaf = _STEM_PART.get(m.group(1)), m.group(2)
    if base is None or leaf not in _LEAF:
        return None
    if base.endswith(".bn") and leaf in ("weight", "bias"):
        return f"{base}.{'gamma' if leaf == 'weight' else 'beta'}"
    return f"{base}.{_LEAF[leaf]}"


def to_qmul_layout(w: torch.Tensor) -> torch.Tensor:
    """Conv weight `(cout, cin, kh, kw)` -> qmul's rows `(cout, kh * kw * cin)`
    (`(ky, kx, c)` order); linear weights are already `(out, cin)`."""
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1) if w.dim() == 4 else w


def from_qmul_layout(rows: torch.Tensor, cin: int, k: int) -> torch.Tensor:
    """Inverse of `to_qmul_layout` for a `k x k` convolution with `cin` inputs."""
    return rows.reshape(rows.shape[0], k, k, cin).permute(0, 3, 1, 2).contiguous()


if __name__ == "__main__":  # quick self-check: shapes and parameter counts
    torch.set_num_threads(1)
    for sch in SCHEMES:
        net = QResNet18(16, 1, 10, sch)
        n = sum(p.numel() for p in net.parameters())
        y = net(torch.rand(2, 1, 28, 28))
        print(f"{sch:5s} params {n:,}  logits {tuple(y.shape)}")
