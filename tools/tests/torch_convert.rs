//! `qmul convert` without PyTorch: the round trips through the checkpoint
//! format on tiny networks of every scheme, and every kind of bad checkpoint.
//! (PyTorch's own numerics are checked in `torch_crosscheck.rs`.)

use qmul_models::{resnet, ResNetConfig};
use qmul_runtime::model::Model;
use qmul_runtime::model_file;
use qmul_runtime::model_file::write::{serialize, Out};
use qmul_runtime::rng::Rng;
use qmul_runtime::{InitOptions, QuantScheme};
use qmul_tools::torch::{self, LatentState, ReadOptions};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::BTreeMap;

const SCHEMES: [QuantScheme; 4] = [
    QuantScheme::Pact,
    QuantScheme::Lsq,
    QuantScheme::Dsq,
    QuantScheme::None,
];

/// A width-2 ResNet-18 on 8x8 grey images with every tensor away from its
/// initial value (as after training): BatchNorm statistics and affine
/// parameters, activation ranges, LSQ steps.
fn tiny(scheme: QuantScheme, seed: u64) -> Model {
    let g = resnet(&ResNetConfig::resnet18(2, 8, 8, 1, 10, scheme)).unwrap();
    let mut m = Model::new(
        g,
        InitOptions {
            seed,
            pact_init: 6.0,
        },
    )
    .unwrap();
    let mut r = Rng::new(seed ^ 0x5eed);
    for t in m.params.iter_mut() {
        let leaf = t.name.rsplit('.').next().unwrap();
        match (leaf, scheme) {
            ("gamma", _) => t
                .data
                .iter_mut()
                .for_each(|v| *v = 0.5 + r.uniform() as f32),
            ("beta", _) => t.data.iter_mut().for_each(|v| *v = 0.1 * r.normal() as f32),
            ("q", QuantScheme::Pact) => t.data = vec![2.0 + 4.0 * r.uniform() as f32],
            ("q", QuantScheme::Lsq) => t.data = vec![0.1 + 0.3 * r.uniform() as f32],
            ("q", QuantScheme::Dsq) => t.data = vec![2.0 + 4.0 * r.uniform() as f32, 0.25],
            ("wq", QuantScheme::Lsq) => t
                .data
                .iter_mut()
                .for_each(|v| *v *= 0.8 + 0.4 * r.uniform() as f32),
            _ => {}
        }
    }
    for t in m.buffers.iter_mut() {
        if t.name.ends_with("running_mean") {
            t.data.iter_mut().for_each(|v| *v = 0.2 * r.normal() as f32);
        } else {
            t.data
                .iter_mut()
                .for_each(|v| *v = 0.5 + r.uniform() as f32);
        }
    }
    m.clamp_quant_params();
    m
}

/// The tensors of a checkpoint, as (dtype, shape, bytes), and its metadata.
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn parse(bytes: &[u8]) -> (Tensors, BTreeMap<String, String>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    let (_, h) = SafeTensors::read_metadata(bytes).unwrap();
    let meta = h
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    (t, meta)
}

fn write(t: &Tensors, meta: &BTreeMap<String, String>) -> Vec<u8> {
    let meta: BTreeMap<&str, String> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let t: BTreeMap<String, Out> = t
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), Out(*d, s.clone(), b.clone())))
        .collect();
    serialize(&meta, &t)
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn opts() -> ReadOptions {
    ReadOptions::default()
}

/// The `.qmul` bytes a checkpoint converts to.
fn to_qmul(ckpt: &[u8], o: &ReadOptions) -> Result<Vec<u8>, String> {
    let c = torch::from_torch_bytes(ckpt, o)?;
    model_file::to_bytes_with(&c.model, c.latent.write_options()).map_err(|e| e.to_string())
}

/// qmul -> PyTorch -> qmul gives the same file, byte for byte, for every
/// scheme and every latent state a file can have.
#[test]
fn qmul_to_torch_to_qmul_is_byte_identical() {
    for scheme in SCHEMES {
        for state in [
            LatentState::Centres,
            LatentState::SubBin,
            LatentState::Exact,
        ] {
            let mut m = tiny(scheme, 3);
            m.exact_latent = state == LatentState::Exact;
            let file = model_file::to_bytes_with(&m, state.write_options()).unwrap();
            let loaded = model_file::from_bytes_checked(&file).unwrap();
            // A float model has no latent state to keep.
            let kept = if scheme == QuantScheme::None {
                LatentState::Centres
            } else {
                state
            };
            assert_eq!(LatentState::of_file(&loaded), kept, "{scheme:?}");
            let ckpt = torch::to_torch_bytes(&loaded.model, state).unwrap();
            let back = to_qmul(&ckpt, &opts()).unwrap();
            assert!(back == file, "{scheme:?} {state:?}: the .qmul file changed");
        }
    }
}

/// A checkpoint whose latent weights are arbitrary floats (as PyTorch
/// training leaves them, off qmul's residual grid): with `--latent exact`
/// every tensor comes back bit for bit; with the default sub-bin residuals
/// every tensor but the latent weights does, every code and scale is kept,
/// and each latent weight stays within one residual unit (1/65536 of its
/// channel's step, plus float rounding: half a unit of rounding, and the
/// residuals stop at +-32767 units, short of a bin's edge), except that a max-abs channel's
/// weights at the largest code come back on `qmax * scale` (the trimmed
/// scale's mantissa: at most 2^-16 of the weight).
#[test]
fn torch_to_qmul_to_torch_round_trip() {
    use qmul_runtime::model::Slots;
    use qmul_runtime::quant::weight::{self, WeightQuant};
    for scheme in SCHEMES {
        let m = tiny(scheme, 5);
        let (mut t, meta) = parse(&torch::to_torch_bytes(&m, LatentState::SubBin).unwrap());
        let mut r = Rng::new(9);
        for (name, (_, _, b)) in t.iter_mut() {
            if name.ends_with(".weight") && !name.contains("bn") {
                let v: Vec<f32> = f32s(b)
                    .iter()
                    .map(|x| x * (1.0 + 1e-3 * r.normal() as f32))
                    .collect();
                *b = bytes_of(&v);
            }
        }
        let ckpt = write(&t, &meta);
        let exact = torch::from_torch_bytes(&ckpt, &opts()).unwrap().model;
        for state in [LatentState::Exact, LatentState::SubBin] {
            let o = ReadOptions {
                latent: Some(state),
                ..opts()
            };
            let file = to_qmul(&ckpt, &o).unwrap();
            let loaded = model_file::from_bytes_checked(&file).unwrap();
            let (back, back_meta) = parse(
                &torch::to_torch_bytes(&loaded.model, LatentState::of_file(&loaded)).unwrap(),
            );
            assert_eq!(
                back.keys().collect::<Vec<_>>(),
                t.keys().collect::<Vec<_>>()
            );
            for (name, (d, s, b)) in &t {
                let (bd, bs, bb) = &back[name];
                assert_eq!((d, s), (bd, bs), "{name}");
                let latent = name.ends_with(".weight") && !name.contains("bn");
                if state == LatentState::Exact || !latent || scheme == QuantScheme::None {
                    assert!(b == bb, "{scheme:?} {state:?}: {name} changed");
                }
            }
            assert_eq!(loaded.model.weight_codes(), exact.weight_codes());
            for slot in &exact.slots {
                let (w, wq, kind) = match slot {
                    Slots::Conv { w, wq, kind, .. } | Slots::Linear { w, wq, kind, .. } => {
                        (*w, *wq, *kind)
                    }
                    _ => continue,
                };
                if kind == WeightQuant::None {
                    continue;
                }
                let rows = exact.params[w].shape[0];
                let q = weight::quantize(kind, &exact.params[wq].data, &exact.params[w].data, rows);
                let q2 = weight::quantize(
                    kind,
                    &loaded.model.params[wq].data,
                    &loaded.model.params[w].data,
                    rows,
                );
                assert_eq!(q, q2, "{}", exact.params[w].name);
                let k = q.codes.len() / rows;
                let a = &exact.params[w].data;
                let c = &loaded.model.params[w].data;
                for i in 0..a.len() {
                    let step = q.scale[i / k] as f64;
                    let d = (a[i] as f64 - c[i] as f64).abs();
                    let top = matches!(kind, WeightQuant::MaxAbs { qmax } if (q.codes[i] as f32).abs() == qmax);
                    let bound = if top {
                        (a[i] as f64).abs() * 2f64.powi(-16)
                    } else {
                        step / 65536.0 + (a[i] as f64).abs() * 2f64.powi(-23)
                    };
                    assert!(
                        d <= bound,
                        "{}[{i}]: {} -> {} (step {step})",
                        exact.params[w].name,
                        a[i],
                        c[i]
                    );
                }
            }
            for k in ["width", "scheme", "input_h", "info"] {
                assert_eq!(meta[k], back_meta[k], "{k}");
            }
        }
    }
}

/// The message a bad checkpoint gets.
fn err(ckpt: &[u8], o: &ReadOptions) -> String {
    match torch::from_torch_bytes(ckpt, o) {
        Ok(_) => panic!("accepted a bad checkpoint"),
        Err(e) => e,
    }
}

fn assert_says(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "'{msg}' does not say '{p}'");
    }
}

#[test]
fn bad_checkpoints_are_rejected_with_the_tensor_named() {
    let m = tiny(QuantScheme::Lsq, 1);
    let (t, meta) = parse(&torch::to_torch_bytes(&m, LatentState::SubBin).unwrap());
    let with = |f: &dyn Fn(&mut Tensors, &mut BTreeMap<String, String>)| {
        let (mut t, mut meta) = (t.clone(), meta.clone());
        f(&mut t, &mut meta);
        write(&t, &meta)
    };
    let name = "layer2.0.conv1.weight";

    let e = err(&with(&|t, _| drop(t.remove(name))), &opts());
    assert_says(&e, &[name, "missing"]);

    let e = err(
        &with(&|t, _| {
            let (_, s, b) = t.get_mut(name).unwrap();
            s[1] += 1;
            b.extend(std::iter::repeat_n(0u8, 4 * s[0] * s[2] * s[3]));
        }),
        &opts(),
    );
    assert_says(&e, &[name, "shape"]);

    let e = err(
        &with(&|t, _| {
            let (d, s, b) = t.get_mut(name).unwrap();
            *d = Dtype::F16;
            b.truncate(b.len() / 2);
            let _ = s;
        }),
        &opts(),
    );
    assert_says(&e, &[name, "F16", "float32"]);

    let e = err(
        &with(&|_, meta| drop(meta.insert("scheme".into(), "apot".into()))),
        &opts(),
    );
    assert_says(&e, &["'apot'", "pact, lsq, dsq or none"]);

    let e = err(
        &with(&|t, _| {
            let (_, _, b) = t.get_mut("bn1.running_var").unwrap();
            b[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        }),
        &opts(),
    );
    assert_says(&e, &["bn1.running_var[1]", "NaN"]);

    let e = err(
        &with(&|t, _| {
            let (_, _, b) = t.get_mut("layer1.0.act1.q").unwrap();
            b.copy_from_slice(&0f32.to_le_bytes());
        }),
        &opts(),
    );
    assert_says(&e, &["layer1.0.act1.q", "never set", "training step"]);

    let e = err(
        &with(&|t, _| {
            let (_, _, b) = t.get_mut("layer1.0.conv2.wq").unwrap();
            b[..4].copy_from_slice(&(-1f32).to_le_bytes());
        }),
        &opts(),
    );
    assert_says(&e, &["layer1.0.conv2.wq[0]", "valid range"]);

    let e = err(
        &with(&|t, _| {
            t.insert(
                "normalize.mean".into(),
                (Dtype::F32, vec![1], bytes_of(&[0.5])),
            );
        }),
        &opts(),
    );
    assert_says(&e, &["normalize.mean", "pixel / 255"]);

    // torch.save files: a zip archive (PyTorch >= 1.6) and a bare pickle.
    for bytes in [
        &b"PK\x03\x04archive/data.pkl"[..],
        &[0x80, 0x02, b'}', b'q'],
    ] {
        let e = err(bytes, &opts());
        assert_says(&e, &["torch.save", "safetensors", "qmul_torch.export"]);
    }
    let e = err(b"not a checkpoint at all", &opts());
    assert_says(&e, &["not a safetensors file"]);

    // A .qmul file is not a checkpoint.
    let q = model_file::to_bytes(&m).unwrap();
    assert_says(&err(&q, &opts()), &["'qmul'", "--to-torch"]);

    // Metadata and flags that disagree.
    let e = err(
        &with(&|_, _| {}),
        &ReadOptions {
            scheme: Some(QuantScheme::Pact),
            ..opts()
        },
    );
    assert_says(&e, &["scheme lsq", "pact"]);

    // A well-formed checkpoint still converts (the mutations above were the cause).
    assert!(torch::from_torch_bytes(&with(&|_, _| {}), &opts()).is_ok());
}

/// A plain state dict (no qmul-torch metadata, as `torch.save(state_dict)`
/// then `safetensors.torch.save_file` of a float CIFAR ResNet-18 gives):
/// the architecture comes from the shapes, the input size from `--input`,
/// and the result equals the model it was written from.
#[test]
fn plain_float_state_dict_converts_with_input_size() {
    let m = tiny(QuantScheme::None, 2);
    let (mut t, _) = parse(&torch::to_torch_bytes(&m, LatentState::SubBin).unwrap());
    t.insert(
        "bn1.num_batches_tracked".into(),
        (Dtype::I64, vec![], 7i64.to_le_bytes().to_vec()),
    );
    let plain = write(&t, &BTreeMap::new());
    assert_says(&err(&plain, &opts()), &["--input HxW"]);
    let c = torch::from_torch_bytes(
        &plain,
        &ReadOptions {
            input: Some((8, 8)),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(c.model.graph, m.graph);
    assert_eq!(c.model.params, m.params);
    assert_eq!(c.model.buffers, m.buffers);
    // Quantizer parameters without metadata need --scheme.
    let q = tiny(QuantScheme::Pact, 2);
    let (t, _) = parse(&torch::to_torch_bytes(&q, LatentState::SubBin).unwrap());
    let e = err(
        &write(&t, &BTreeMap::new()),
        &ReadOptions {
            input: Some((8, 8)),
            ..opts()
        },
    );
    assert_says(&e, &["--scheme"]);
}

/// 3,000 seeded mutations of a checkpoint (bytes flipped, the file cut,
/// metadata numbers changed): each is converted or refused with an error,
/// never a panic, and nothing is allocated beyond what the file describes.
#[test]
fn mutated_checkpoints_are_errors_never_panics() {
    let m = tiny(QuantScheme::Dsq, 4);
    let good = torch::to_torch_bytes(&m, LatentState::SubBin).unwrap();
    let (t, meta) = parse(&good);
    let mut r = Rng::new(77);
    let mut refused = 0;
    for trial in 0..3000 {
        let bytes = match trial % 3 {
            0 => {
                let mut b = good.clone();
                for _ in 0..1 + r.below(4) {
                    let i = r.below(b.len());
                    b[i] ^= 1 << r.below(8);
                }
                b
            }
            1 => good[..r.below(good.len())].to_vec(),
            _ => {
                let mut meta = meta.clone();
                let key = [
                    "width",
                    "classes",
                    "input_h",
                    "input_w",
                    "in_channels",
                    "blocks",
                ][r.below(6)];
                let v = [
                    "0",
                    "1",
                    "3",
                    "65536",
                    "4294967296",
                    "-1",
                    "x",
                    "2,2",
                    "64,64,64,64",
                ][r.below(9)];
                meta.insert(key.into(), v.into());
                write(&t, &meta)
            }
        };
        let out = std::panic::catch_unwind(|| torch::from_torch_bytes(&bytes, &opts()));
        match out {
            Ok(Err(_)) => refused += 1,
            Ok(Ok(_)) => {}
            Err(_) => panic!("trial {trial} panicked"),
        }
    }
    assert!(refused > 2000, "{refused} of 3000 refused");
}

/// Per-layer weight steps (LSQ `wq` of one value, DSQ `[u, alpha]`), as
/// quantization code that keeps one step per layer saves them, become
/// per-channel steps of equal value: the converted model computes what the
/// checkpoint does (the same codes and scales as the per-channel form).
#[test]
fn per_layer_weight_steps_become_equal_per_channel_steps() {
    for scheme in [QuantScheme::Lsq, QuantScheme::Dsq] {
        let m = tiny(scheme, 6);
        let (mut t, meta) = parse(&torch::to_torch_bytes(&m, LatentState::SubBin).unwrap());
        let (mut per_channel, mut layers) = (t.clone(), 0);
        for (name, (_, s, b)) in t.iter_mut() {
            if !name.ends_with(".wq") {
                continue;
            }
            layers += 1;
            let v = f32s(b);
            let cout = if scheme == QuantScheme::Lsq {
                v.len()
            } else {
                v.len() - 1
            };
            let step = v[..cout].iter().sum::<f32>() / cout as f32;
            let layer: Vec<f32> = if scheme == QuantScheme::Lsq {
                vec![step]
            } else {
                vec![step, v[cout]]
            };
            let mut expanded = vec![step; cout];
            expanded.extend_from_slice(&layer[1..]);
            *s = vec![layer.len()];
            *b = bytes_of(&layer);
            per_channel.get_mut(name).unwrap().2 = bytes_of(&expanded);
        }
        assert!(layers > 10);
        let a = torch::from_torch_bytes(&write(&t, &meta), &opts())
            .unwrap()
            .model;
        let b = torch::from_torch_bytes(&write(&per_channel, &meta), &opts())
            .unwrap()
            .model;
        assert_eq!(a.params, b.params, "{scheme:?}");
        let images: Vec<u8> = (0..2 * 64).map(|i| (i * 53 % 256) as u8).collect();
        assert_eq!(
            a.forward(&images, 2).unwrap(),
            b.forward(&images, 2).unwrap()
        );
    }
    // Other shapes are still errors.
    let m = tiny(QuantScheme::Lsq, 6);
    let (mut t, meta) = parse(&torch::to_torch_bytes(&m, LatentState::SubBin).unwrap());
    let (_, s, b) = t.get_mut("layer1.0.conv1.wq").unwrap();
    *s = vec![3];
    *b = bytes_of(&[0.1, 0.1, 0.1]);
    assert_says(
        &err(&write(&t, &meta), &opts()),
        &["layer1.0.conv1.wq", "shape"],
    );
}
