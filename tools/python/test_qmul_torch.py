"""Checks of qmul_torch against the expectations of qmul's own Rust unit tests
(`runtime/src/quant/{act,weight,dsq}.rs`, `models/src/resnet.rs`) and the
parameter counts `qmul inspect` reports for the shipped width-16 models.

Run: `python tools/python/test_qmul_torch.py` (or pytest). CPU, one thread, seconds.
"""

import math
import os
import struct
import sys
import tempfile

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


_TMP = tempfile.TemporaryDirectory(prefix="qmul-torch-test-")  # removed at exit


def _tmp(name):
    """A path in a fresh directory under `_TMP`, so tests never share files."""
    return os.path.join(tempfile.mkdtemp(dir=_TMP.name), name)


def _bits_equal(a, b):
    """Bit-identical, not merely ==: -0.0 vs 0.0 and NaN payloads count."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                       b.contiguous().reshape(-1).view(torch.uint8))


def test_safetensors_round_trip_every_dtype_deterministic():
    g = torch.Generator().manual_seed(1)
    tensors = {
        "f32": torch.randn(3, 4, generator=g), "f64": torch.randn(2, generator=g, dtype=torch.float64),
        "f16": torch.randn(5, generator=g).half(), "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.tensor([-(2 ** 40), 7]), "i32": torch.tensor([[1, -2]], dtype=torch.int32),
        "i16": torch.tensor([-3], dtype=torch.int16), "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.arange(256, dtype=torch.uint8).view(16, 16), "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "negzero": torch.tensor([-0.0]),
        "strided": torch.randn(4, 4, generator=g).t(),
    }
    meta = {"b": "2", "a": "\u00e9 text"}
    p1, p2 = _tmp("a.safetensors"), _tmp("b.safetensors")
    qt.save_safetensors(tensors, meta, p1)
    qt.save_safetensors(dict(reversed(list(tensors.items()))), dict(reversed(list(meta.items()))), p2)
    b1 = open(p1, "rb").read()
    assert b1 == open(p2, "rb").read(), "same tensors must give the same bytes"
    n = struct.unpack("<Q", b1[:8])[0]
    assert n % 8 == 0 and b1[8:9] == b"{"
    got, got_meta = qt.load_safetensors(p1)
    assert got_meta == meta and sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        assert _bits_equal(got[k], v.contiguous()), k


def test_safetensors_header_of_128_bytes_is_not_taken_for_a_pickle():
    # A header length of 128 makes the file start with byte 0x80, like a pickle.
    t = {"x": torch.ones(1)}
    for pad in range(0, 200):
        p = _tmp("h.safetensors")
        qt.save_safetensors(t, {"k": "v" * pad}, p)
        if open(p, "rb").read(1) == b"\x80":
            break
    else:
        raise AssertionError("no padding gave a 128-byte header")
    got, meta = qt.load_safetensors(p)
    assert torch.equal(got["x"], t["x"]) and meta["k"] == "v" * pad


def test_safetensors_rejects_malformed_files():
    p = _tmp("bad.safetensors")
    qt.save_safetensors({"x": torch.ones(4)}, {}, p)
    blob = open(p, "rb").read()
    for broken, words in ((blob[:-4], "outside"), (blob + b"\0\0\0\0", "after the last"),
                          (b"abc", "too short"), (struct.pack("<Q", 10 ** 12) + b"{}", "not a safetensors")):
        with open(p, "wb") as f:
            f.write(broken)
        try:
            qt.load_safetensors(p)
        except ValueError as e:
            assert words in str(e), (words, str(e))
        else:
            raise AssertionError(f"accepted a broken file ({words})")


def test_torch_save_pickles_are_refused_with_advice():
    net = qt.QResNet18(4, 1, 10, "pact")
    for zipped in (True, False):
        p = _tmp("model.pt")
        torch.save(net.state_dict(), p, _use_new_zipfile_serialization=zipped)
        for reader in (qt.load_safetensors, qt.load):
            try:
                reader(p)
            except ValueError as e:
                msg = str(e)
                assert "torch.save" in msg and "export" in msg, msg
            else:
                raise AssertionError("a pickle was accepted")


def _realistic(net, seed=0):
    """Moves BatchNorm and quantizer parameters away from their init so that
    a round trip that dropped or mixed up tensors would change the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
        net.train()(torch.rand(8, net.in_ch, 28, 28, generator=g))
    net.clamp_quant_params()
    return net.eval()


def test_export_load_round_trip_is_bit_identical():
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    for scheme in qt.SCHEMES:
        net = _realistic(qt.QResNet18(4, 1, 10, scheme))
        p = _tmp(f"{scheme}.safetensors")
        qt.export(net, p, input_hw=(28, 28), info={"trained": "test"})
        tensors, meta = qt.load_safetensors(p)
        assert not any("num_batches_tracked" in k for k in tensors)
        state = {k: v for k, v in net.state_dict().items() if "num_batches_tracked" not in k}
        assert sorted(tensors) == sorted(state)
        assert tensors["conv1.weight"].shape == (4, 1, 3, 3)
        assert meta == {
            "format": "qmul-torch", "format_version": "1", "arch": "resnet18", "blocks": "2,2,2,2",
            "width": "4", "in_channels": "1", "classes": "10", "input_h": "28", "input_w": "28",
            "scheme": scheme, "edge_precision": "f32" if scheme == "none" else "int8",
            "input": "NCHW float32 = u8 pixel / 255", "info": '{"trained": "test"}'}, meta
        back = qt.load(p)
        assert not back.training and back.scheme == scheme and back.input_hw == (28, 28)
        assert back.info == {"trained": "test"}
        for k, v in back.state_dict().items():
            if "num_batches_tracked" not in k:
                assert _bits_equal(v, state[k]), (scheme, k)
        assert all(not m._pending for m in back.modules() if isinstance(m, qt.QAct))
        with torch.no_grad():
            assert _bits_equal(back(x), net(x)), scheme
        # load -> export writes the same bytes (defaults come from the file).
        p2 = _tmp("again.safetensors")
        qt.export(back, p2)
        assert open(p, "rb").read() == open(p2, "rb").read(), scheme


def test_load_keeps_converter_metadata_and_tolerates_counters():
    net = _realistic(qt.QResNet18(4, 1, 10, "lsq"))
    p = _tmp("conv.safetensors")
    qt.export(net, p, input_hw=(32, 30))
    tensors, meta = qt.load_safetensors(p)
    meta.update({"graph": "{\"nodes\": []}", "latent": "none", "qmul_version": "0.1"})
    tensors["bn1.num_batches_tracked"] = torch.tensor(5)
    qt.save_safetensors(tensors, meta, p)
    back = qt.load(p)
    assert back.torch_metadata == meta and back.input_hw == (32, 30) and back.info == {}
    p2 = _tmp("re.safetensors")
    qt.export(back, p2)
    _, meta2 = qt.load_safetensors(p2)
    for k in ("graph", "latent", "qmul_version"):
        assert meta2[k] == meta[k], k
    assert meta2["input_h"] == "32" and meta2["input_w"] == "30"


def test_load_is_strict_and_names_the_tensor():
    net = qt.QResNet18(4, 1, 10, "dsq")
    p = _tmp("s.safetensors")
    qt.export(net, p)
    tensors, meta = qt.load_safetensors(p)
    cases = [
        ({k: v for k, v in tensors.items() if k != "layer2.0.conv1.wq"}, meta, "layer2.0.conv1.wq"),
        ({**tensors, "fc.weight": torch.zeros(10, 3)}, meta, "fc.weight"),
        ({**tensors, "fc.bias": tensors["fc.bias"].double()}, meta, "fc.bias"),
        ({**tensors, "extra.weight": torch.zeros(1)}, meta, "extra.weight"),
        (tensors, {**meta, "format": "other"}, "format"),
        (tensors, {**meta, "width": "8"}, "shape"),
        (tensors, {k: v for k, v in meta.items() if k != "classes"}, "classes"),
    ]
    for t, m, words in cases:
        qt.save_safetensors(t, m, p)
        try:
            qt.load(p)
        except ValueError as e:
            assert words in str(e), (words, str(e))
        else:
            raise AssertionError(f"accepted a bad file ({words})")


if __name__ == "__main__":
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            fn()
            print("ok", name)
