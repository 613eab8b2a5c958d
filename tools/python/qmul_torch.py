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

Model files (issue 17): `export` / `load` write and read a safetensors file
(plain-Python reader and writer, no `safetensors` package) holding the state
dict without `num_batches_tracked`, in PyTorch names, layout and dtype, with
metadata `format=qmul-torch`, `format_version=1`, `arch`, `blocks`, `width`,
`in_channels`, `classes`, `input_h`, `input_w`, `scheme`, `edge_precision`,
`input` and `info` (JSON text). `qmul convert` turns such a file into a
`.qmul` model and back; `torch.save` pickles are refused, never unpickled.

Differences from qmul that remain (by design of the two runtimes):
qmul multiplies integer codes and applies the scales once per output
(`sum(code_x * code_w) * s_x * s_w`), PyTorch multiplies the dequantized
float values, and BatchNorm statistics are accumulated in f64 in qmul; the
results agree to float rounding, so a value lying on a rounding boundary can
occasionally land on the neighbouring code. Random initial weights come from
PyTorch's generator, not qmul's.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys

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
    "save_safetensors",
    "load_safetensors",
    "export",
    "load",
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


def _needs_surrogate(*ts) -> bool:
    """DSQ's tanh surrogate only shapes the backward pass; skipping it when no
    gradient will flow makes no-grad evaluation several times faster."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


def _dsq_act(x, q):
    u, alpha = q[0], q[1]
    scale = u / A_QMAX
    hard = torch.round((x * (1.0 / scale)).clamp(0.0, A_QMAX)) * scale
    if not _needs_surrogate(x, q):
        return hard + 0.0  # `+ 0.0` as in `_ste`: -0.0 becomes +0.0 either way
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
        # A range still waiting for its first training batch stays at 0 (qmul
        # initialises before it clamps; clamping first would pin it at 1e-4).
        if self._pending and self.scheme in ("lsq", "dsq") and float(self.q[0]) <= 0.0:
            return
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
    if not _needs_surrogate(w, q):
        return hard + 0.0
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
        # Kept so that `export` can write the architecture into the file.
        self.width, self.in_ch, self.classes = width, in_ch, classes
        self.blocks = tuple(blocks)
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


# --------------------------------------------------------------------------
# safetensors, in plain Python (issue 17: the venv must not need the
# `safetensors` package, and qmul's Rust converter reads the same bytes)

#: safetensors dtype name -> torch dtype. Unsigned types wider than 8 bits
#: exist only in newer torch releases, hence the `getattr`.
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
    "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}

#: Header size limit: a guard against reading a multi-gigabyte "length" out of
#: a file that is not safetensors at all (the reference reader uses 100 MB).
_ST_MAX_HEADER = 100_000_000

_PICKLE_HINT = (
    "{path} is a `torch.save` pickle ({kind}), not safetensors; qmul reads only "
    "safetensors (pickles can run code). Export it from PyTorch instead: "
    "`qmul_torch.export(model, 'model.safetensors')` for a QResNet18, or "
    "`qmul_torch.save_safetensors(model.state_dict(), {{}}, 'model.safetensors')`"
)


def _check_little_endian():
    """The raw data is little-endian and is copied as the machine stores it."""
    if sys.byteorder != "little":
        raise RuntimeError("qmul_torch's safetensors code needs a little-endian machine")


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw little-endian bytes of `t` in row-major order, any dtype
    (viewed as bytes, so bfloat16 needs no numpy support)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def save_safetensors(tensors: dict, metadata: dict, path) -> None:
    """Writes `tensors` (name -> tensor, any supported dtype, stored as it
    is) and `metadata` (str -> str) as a safetensors file.

    Tensors are laid out in sorted name order and the header JSON has sorted
    keys, so the same inputs always give the same bytes (files can be
    compared or hashed). The header is space-padded to a multiple of 8 so the
    data block starts aligned.
    """
    _check_little_endian()
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"safetensors metadata must map str to str; got {k!r}: {v!r}")
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.dtype not in _ST_NAMES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors "
                            f"cannot store here (supported: {sorted(_ST_DTYPES)})")
        data = _tensor_bytes(t)
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = text.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:  # write-then-rename: no half-written file on error
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def _looks_like_pickle(head: bytes):
    """Which `torch.save` format `head` starts with, or None."""
    if head.startswith(b"PK\x03\x04"):
        return "zip archive"
    if head[:1] == b"\x80":
        return "legacy pickle"
    return None


def _parse_header(blob: bytes, path):
    """Splits a safetensors file into (header dict, data block), refusing
    pickles and malformed headers with messages that say what is wrong.

    A valid header length can itself start with byte 0x80 (e.g. 128 bytes), so
    the pickle test applies only when the bytes do not parse as safetensors.
    """
    n = struct.unpack("<Q", blob[:8])[0] if len(blob) >= 8 else None
    valid = n is not None and n <= _ST_MAX_HEADER and 8 + n <= len(blob) and blob[8:9] == b"{"
    if not valid:
        kind = _looks_like_pickle(blob[:8])
        if kind:
            raise ValueError(_PICKLE_HINT.format(path=path, kind=kind))
        if n is None:
            raise ValueError(f"{path}: {len(blob)} bytes, too short for a safetensors file")
        raise ValueError(f"{path} is not a safetensors file: header length {n} "
                         f"with {len(blob)} bytes in the file, or the header is not JSON")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: safetensors header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    return header, memoryview(blob)[8 + n:]


def _read_metadata(header: dict, path) -> dict:
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError(f"{path}: __metadata__ must be an object of strings")
    return meta


def _read_tensor(name: str, entry, data: memoryview, path) -> tuple:
    """One header entry -> (begin, end, tensor), checking dtype, shape and
    that the byte range fits the data block and the element count."""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: tensor {name!r}: header entry is not an object")
    dtype_name = entry.get("dtype")
    if dtype_name not in _ST_DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name!r} "
                         f"(supported: {', '.join(sorted(_ST_DTYPES))})")
    shape, offs = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise ValueError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
        raise ValueError(f"{path}: tensor {name!r} has invalid data_offsets {offs!r}")
    begin, end = offs
    dtype = _ST_DTYPES[dtype_name]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if not 0 <= begin <= end <= len(data):
        raise ValueError(f"{path}: tensor {name!r} bytes {begin}..{end} lie outside the "
                         f"{len(data)}-byte data block (truncated file?)")
    if end - begin != math.prod(shape) * itemsize:
        raise ValueError(f"{path}: tensor {name!r} {dtype_name} {shape} needs "
                         f"{math.prod(shape) * itemsize} bytes, data_offsets give {end - begin}")
    if end == begin:
        t = torch.empty(shape, dtype=dtype)
    else:
        # bytearray: a writable private copy, so the tensor owns its memory.
        raw = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.uint8)
        t = raw.view(dtype).reshape(shape)
    return begin, end, t


def _check_coverage(spans: list, size: int, path) -> None:
    """The format requires tensors to tile the data block exactly: no
    overlaps, no holes, nothing after the last tensor."""
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else f"leaves a gap at byte {pos}"
            raise ValueError(f"{path}: tensor {name!r} (bytes {begin}..{end}) {what}")
        pos = end
    if pos != size:
        raise ValueError(f"{path}: {size - pos} bytes after the last tensor in the data block")


def load_safetensors(path):
    """Reads a safetensors file -> (name -> tensor, metadata str -> str).

    Refuses `torch.save` pickles (zip or legacy) with a message on how to
    export instead: qmul never unpickles, since a pickle can run code.
    """
    _check_little_endian()
    with open(path, "rb") as f:
        blob = f.read()
    header, data = _parse_header(blob, path)
    meta = _read_metadata(header, path)
    tensors, spans = {}, []
    for name, entry in header.items():
        begin, end, t = _read_tensor(name, entry, data, path)
        tensors[name] = t
        spans.append((begin, end, name))
    _check_coverage(spans, len(data), path)
    return tensors, meta


# --------------------------------------------------------------------------
# Model files shared with qmul (`qmul convert`): format `qmul-torch` version 1

FORMAT = "qmul-torch"
FORMAT_VERSION = "1"
_INPUT_TEXT = "NCHW float32 = u8 pixel / 255"
#: Metadata keys that `export` computes; any other key a loaded model carried
#: (e.g. the converter's `graph`, `latent`, `qmul_*`) is written back as is.
_OWN_KEYS = ("format", "format_version", "arch", "blocks", "width", "in_channels",
             "classes", "input_h", "input_w", "scheme", "edge_precision", "input", "info")
_REQUIRED_KEYS = ("format", "format_version", "arch", "width", "in_channels", "classes",
                  "scheme", "input_h", "input_w")


def _exported_state(model: nn.Module) -> dict:
    """The tensors a model file holds: the state dict without the
    `num_batches_tracked` counters (qmul has no tensor for them)."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def _edge_precision(scheme: str) -> str:
    """Stem conv and classifier are 8-bit under every quantized scheme."""
    return "f32" if scheme == "none" else "int8"


def _info_text(info) -> str:
    if not isinstance(info, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in info.items()):
        raise TypeError(f"info must be a dict of str -> str, got {info!r}")
    return json.dumps(info, sort_keys=True, ensure_ascii=False)


def export(model: "QResNet18", path, input_hw=None, info: dict | None = None) -> None:
    """Writes `model` as a `qmul-torch` safetensors file for `qmul convert`.

    Tensors keep their state-dict names, PyTorch layout and dtype (conv weights
    `(cout, cin, kh, kw)`), so the file is also a plain PyTorch state dict.
    `input_hw` and `info` default to what `load` attached to the model (so a
    load -> export round trip keeps them), else `(28, 28)` and `{}`; metadata
    keys this function does not set are copied from `model.torch_metadata`.
    """
    if not isinstance(model, QResNet18):
        raise TypeError(f"export takes a QResNet18, got {type(model).__name__}")
    if model.blocks != (2, 2, 2, 2):
        raise ValueError(f"export writes ResNet-18 (blocks 2,2,2,2); model has {model.blocks}")
    if input_hw is None:
        input_hw = getattr(model, "input_hw", None) or (28, 28)
    h, w = (int(v) for v in input_hw)
    if h < 1 or w < 1:
        raise ValueError(f"input_hw must be positive, got {input_hw!r}")
    if info is None:
        info = getattr(model, "info", None) or {}
    meta = {k: v for k, v in getattr(model, "torch_metadata", {}).items() if k not in _OWN_KEYS}
    meta.update({
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "arch": "resnet18", "blocks": "2,2,2,2",
        "width": str(model.width), "in_channels": str(model.in_ch),
        "classes": str(model.classes), "input_h": str(h), "input_w": str(w),
        "scheme": model.scheme, "edge_precision": _edge_precision(model.scheme),
        "input": _INPUT_TEXT, "info": _info_text(info),
    })
    save_safetensors(_exported_state(model), meta, path)


def _meta_int(meta: dict, key: str, path) -> int:
    try:
        v = int(meta[key])
    except ValueError:
        raise ValueError(f"{path}: metadata {key}={meta[key]!r} is not an integer") from None
    if v < 1:
        raise ValueError(f"{path}: metadata {key}={v} must be positive")
    return v


def _check_metadata(meta: dict, path) -> None:
    """Refuses files that are not qmul-torch ResNet-18s, naming the key."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format={meta.get('format')!r}, expected "
                         f"{FORMAT!r} (write files with qmul_torch.export or `qmul convert`)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version={meta.get('format_version')!r}; this "
                         f"qmul_torch reads version {FORMAT_VERSION} only")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: metadata lacks {', '.join(missing)}")
    if meta["arch"] != "resnet18" or meta.get("blocks", "2,2,2,2") != "2,2,2,2":
        raise ValueError(f"{path}: arch={meta['arch']!r} blocks={meta.get('blocks')!r}; "
                         "only resnet18 with blocks 2,2,2,2 is supported")
    if meta["scheme"] not in SCHEMES:
        raise ValueError(f"{path}: scheme={meta['scheme']!r}, expected one of {SCHEMES}")
    edge = meta.get("edge_precision", _edge_precision(meta["scheme"]))
    if edge != _edge_precision(meta["scheme"]):
        raise ValueError(f"{path}: edge_precision={edge!r} under scheme {meta['scheme']!r}; "
                         f"QResNet18 uses {_edge_precision(meta['scheme'])!r}")


def _parse_info(meta: dict, path) -> dict:
    try:
        info = json.loads(meta.get("info", "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: metadata info is not JSON ({e})") from None
    if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
        raise ValueError(f"{path}: metadata info must be a JSON object of strings")
    return info


def _check_tensors(tensors: dict, expected: dict, path) -> None:
    """Strict match with the model's state: every tensor present, float32,
    right shape, nothing unknown (`num_batches_tracked` is tolerated)."""
    unknown = sorted(k for k in tensors if k not in expected
                     and not k.endswith("num_batches_tracked"))
    if unknown:
        raise ValueError(f"{path}: unknown tensors for this QResNet18: {', '.join(unknown)}")
    for name, ref in expected.items():
        if name not in tensors:
            raise ValueError(f"{path}: tensor {name!r} is missing")
        t = tensors[name]
        if t.dtype != torch.float32:
            raise ValueError(f"{path}: tensor {name!r} is {t.dtype}, expected torch.float32")
        if t.shape != ref.shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {list(t.shape)}, "
                             f"expected {list(ref.shape)}")


def load(path) -> "QResNet18":
    """Reads a `qmul-torch` file (from `export` or `qmul convert`) into a
    QResNet18 in eval mode.

    Attaches `input_hw`, `info` (dict) and `torch_metadata` (every metadata
    key, so `export` can write back keys such as the converter's `qmul_*`).
    LSQ/DSQ activation ranges come from the file, so they are marked as
    initialised and the first training batch does not overwrite them.
    """
    tensors, meta = load_safetensors(path)
    _check_metadata(meta, path)
    model = QResNet18(_meta_int(meta, "width", path), _meta_int(meta, "in_channels", path),
                      _meta_int(meta, "classes", path), meta["scheme"])
    expected = _exported_state(model)
    _check_tensors(tensors, expected, path)
    model.load_state_dict({k: tensors[k] for k in expected}, strict=False)
    for m in model.modules():
        if isinstance(m, QAct):
            m._pending = False
    model.input_hw = (_meta_int(meta, "input_h", path), _meta_int(meta, "input_w", path))
    model.info = _parse_info(meta, path)
    model.torch_metadata = dict(meta)
    return model.eval()


if __name__ == "__main__":  # quick self-check: shapes and parameter counts
    torch.set_num_threads(1)
    for sch in SCHEMES:
        net = QResNet18(16, 1, 10, sch)
        n = sum(p.numel() for p in net.parameters())
        y = net(torch.rand(2, 1, 28, 28))
        print(f"{sch:5s} params {n:,}  logits {tuple(y.shape)}")
