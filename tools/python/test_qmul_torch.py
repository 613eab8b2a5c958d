"""Checks of qmul_torch against the expectations of qmul's own Rust unit tests
(`runtime/src/quant/{act,weight,dsq}.rs`, `models/src/resnet.rs`) and the
parameter counts `qmul inspect` reports for the shipped width-16 models.

Run: `python tools/python/test_qmul_torch.py` (or pytest). CPU, one thread, seconds.
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qmul_torch as qt  # noqa: E402

torch.set_num_threads(1)


def test_parameter_counts_match_qmul():
    # `qmul inspect models/checkpoints/fmnist-r18w16-{pact,lsq,dsq}.qmul`
    expect = {"pact": 701_195, "lsq": 702_379, "dsq": 702_415}
    for scheme, n in expect.items():
        net = qt.QResNet18(16, 1, 10, scheme)
        assert sum(p.numel() for p in net.parameters()) == n, scheme
    # models/src/resnet.rs: width 64, 100 classes, weights only = 11,220,132
    net = qt.QResNet18(64, 3, 100, "none")
    assert sum(p.numel() for p in net.parameters()) == 11_220_132


def test_shapes_and_structure():
    for c, hw in ((1, 28), (3, 32)):
        for scheme in qt.SCHEMES:
            net = qt.QResNet18(8, c, 10, scheme)
            y = net(torch.rand(3, c, hw, hw))
            assert y.shape == (3, 10)
            y.sum().backward()
    net = qt.QResNet18(16, 1, 10, "pact")
    convs = [m for m in net.modules() if isinstance(m, qt.QConv2d)]
    acts = [m for m in net.modules() if isinstance(m, qt.QAct)]
    assert len(convs) == 20 and len(acts) == 17
    assert net.conv1.kind == "maxabs8" and net.fc.kind == "maxabs8"
    assert sum(c.kind == "maxabs4" for c in convs) == 19
    assert net.layer1[0].downsample is None and net.layer2[0].downsample is not None


def test_pact_codes_and_grads():
    a = torch.tensor([3.0], requires_grad=True)
    x = torch.tensor([-1.0, 0.1, 1.5, 2.9, 3.0, 7.0], requires_grad=True)
    y = qt._PactAct.apply(x, a)
    assert torch.equal(torch.round(y / (3.0 / 15.0)), torch.tensor([0.0, 0, 8, 14, 15, 15]))
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert a.grad.item() == 2.0


def test_lsq_step_gradient_follows_formula():
    s = torch.tensor([0.5], requires_grad=True)
    x = torch.tensor([0.3, -0.2, 9.0], requires_grad=True)
    y = qt._LsqAct.apply(x, s, 4)
    (y * torch.tensor([1.0, 1.0, 2.0])).sum().backward()
    expect = ((1.0 - 0.6) + 0.0 + 2.0 * 15.0) / math.sqrt(4 * 15.0)
    assert abs(s.grad.item() - expect) < 1e-5
    assert x.grad.tolist() == [1.0, 0.0, 0.0]


def test_maxabs_codes_and_exact_round_trip():
    w = torch.tensor([0.7, -0.35, 0.1, 0.0, 2.0, -1.0]).view(2, 3)
    wq = qt._maxabs_weight(w, 7.0)
    m = w.abs().amax(dim=1)
    scale = qt._exact_scale(m / 7.0, 7.0).view(2, 1)
    assert torch.round(wq / scale).tolist() == [[7, -4, 1], [0, 7, -4]]
    assert torch.equal(qt._maxabs_weight(wq, 7.0), wq), "dequantize -> quantize must be exact"


def test_lsq_and_dsq_weights_clip_at_their_ranges():
    w = torch.tensor([[10.0, -10.0, 0.05]])
    lsq = qt._LsqWeight.apply(w, torch.tensor([0.1]))
    assert torch.round(lsq / 0.1).tolist() == [[7, -8, 0]]
    dsq = qt._dsq_weight(w, torch.tensor([0.7, 0.2]))
    assert torch.round(dsq / (0.7 / 7.0)).tolist() == [[7, -8, 0]]


def test_dsq_soft_gradients_match_finite_differences():
    # runtime/src/quant/dsq.rs soft_grad_matches_finite_differences, in f64
    for x0, d0, o, a0 in ((0.37, 0.2, 0.0, 0.2), (-0.55, 0.1, 8.0, 0.3), (1.01, 0.25, 0.0, 0.1)):
        x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
        d = torch.tensor(d0, dtype=torch.float64, requires_grad=True)
        a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
        qt._dsq_soft(x, d, o, a).backward()
        h = 1e-6

        def f(xx, dd, aa):
            return qt._dsq_soft(torch.tensor(xx, dtype=torch.float64), torch.tensor(dd, dtype=torch.float64),
                                o, torch.tensor(aa, dtype=torch.float64)).item()

        for got, fd in ((x.grad, (f(x0 + h, d0, a0) - f(x0 - h, d0, a0)) / (2 * h)),
                        (d.grad, (f(x0, d0 + h, a0) - f(x0, d0 - h, a0)) / (2 * h)),
                        (a.grad, (f(x0, d0, a0 + h) - f(x0, d0, a0 - h)) / (2 * h))):
            assert abs(got.item() - fd) < 1e-4 * max(1.0, abs(fd)), (x0, got.item(), fd)


def test_lsq_dsq_activation_ranges_set_from_first_batch():
    for scheme in ("lsq", "dsq"):
        net = qt.QResNet18(8, 1, 10, scheme).train()
        assert float(net.act1.q[0].detach()) == 0.0
        net(torch.rand(4, 1, 28, 28))
        assert all(float(m.q[0].detach()) > 0 for m in net.modules() if isinstance(m, qt.QAct))


def test_qmul_names_and_layout():
    net = qt.QResNet18(16, 1, 10, "dsq")
    names = {k: qt.qmul_name(k) for k in net.state_dict()}
    assert names["conv1.weight"] == "stem.conv.weight"
    assert names["bn1.weight"] == "stem.bn.gamma"
    assert names["act1.q"] == "stem.act.q"
    assert names["layer2.0.conv1.wq"] == "layer2.0.1.conv.wq"
    assert names["layer2.0.downsample.1.running_var"] == "layer2.0.down.bn.running_var"
    assert names["layer4.1.act2.q"] == "layer4.1.out.act.q"
    assert names["fc.bias"] == "fc.bias"
    assert names["bn1.num_batches_tracked"] is None
    assert len({v for v in names.values() if v}) == sum(v is not None for v in names.values())
    w = net.layer1[0].conv1.weight
    assert torch.equal(qt.from_qmul_layout(qt.to_qmul_layout(w), w.shape[1], 3), w)


if __name__ == "__main__":
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            fn()
            print("ok", name)
