//! The .qmul model file: bit-exact round trips for every scheme, and malformed
//! or hostile files rejected with an error, never a panic.

use qmul_runtime::graph::{Graph, Op, Precision, QuantScheme};
use qmul_runtime::{model_file, InitOptions, Model, Targets};

fn small(scheme: QuantScheme) -> Graph {
    let q = scheme != QuantScheme::None;
    let body = if q { Precision::Int4 } else { Precision::F32 };
    let edge = if q { Precision::Int8 } else { Precision::F32 };
    Graph {
        nodes: vec![
            Op::Input { h: 8, w: 8, c: 1 },
            Op::Conv {
                name: "stem".into(),
                input: 0,
                cout: 5,
                k: 3,
                stride: 1,
                pad: 1,
                prec: edge,
            },
            Op::BatchNorm {
                name: "stem.bn".into(),
                input: 1,
            },
            Op::Act {
                name: "stem.act".into(),
                input: 2,
            },
            Op::Conv {
                name: "c1".into(),
                input: 3,
                cout: 7,
                k: 3,
                stride: 2,
                pad: 1,
                prec: body,
            },
            Op::BatchNorm {
                name: "c1.bn".into(),
                input: 4,
            },
            Op::Act {
                name: "c1.act".into(),
                input: 5,
            },
            Op::GlobalAvgPool { input: 6 },
            Op::Linear {
                name: "fc".into(),
                input: 7,
                out: 4,
                prec: edge,
            },
        ],
        scheme,
        classes: 4,
    }
}

/// A model after a few training steps, so nothing is at its initial value.
fn trained(scheme: QuantScheme) -> Model {
    let mut m = Model::new(
        small(scheme),
        InitOptions {
            seed: 1,
            pact_init: 3.0,
        },
    )
    .unwrap();
    let mut r = qmul_runtime::rng::Rng::new(9);
    let images: Vec<u8> = (0..6 * 64).map(|_| r.below(256) as u8).collect();
    let labels: Vec<u32> = (0..6).map(|i| i % 4).collect();
    let w = vec![1.0f32; 6];
    let mut sgd = qmul_runtime::optim::Sgd::new(&m, 0.05, 0.9, 5e-4);
    for _ in 0..3 {
        let p = m
            .train_pass(
                &images,
                6,
                Targets {
                    labels: &labels,
                    weights: &w,
                },
                true,
            )
            .unwrap();
        sgd.step(&mut m, &p.grads, None);
    }
    m.info.insert("note".into(), "test".into());
    m
}

#[test]
fn save_load_save_is_bit_exact_and_predicts_the_same() {
    let dir = tempfile::tempdir().unwrap();
    for scheme in [
        QuantScheme::Pact,
        QuantScheme::Lsq,
        QuantScheme::Dsq,
        QuantScheme::None,
    ] {
        let m = trained(scheme);
        let path = dir.path().join(format!("{}.qmul", scheme.name()));
        model_file::save(&m, &path).unwrap();
        let bytes1 = std::fs::read(&path).unwrap();
        let loaded = model_file::load(&path).unwrap();
        assert!(
            model_file::to_bytes(&loaded).unwrap() == bytes1,
            "{scheme:?}: re-saved file differs"
        );
        let images: Vec<u8> = (0..3 * 64).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(
            m.forward(&images, 3).unwrap(),
            loaded.forward(&images, 3).unwrap(),
            "{scheme:?}: predictions differ"
        );
        assert_eq!(loaded.info.get("note").map(String::as_str), Some("test"));
    }
}

#[test]
fn every_truncation_and_many_corruptions_are_errors() {
    let bytes = model_file::to_bytes(&trained(QuantScheme::Lsq)).unwrap();
    for len in (0..bytes.len()).step_by(7) {
        assert!(
            model_file::from_bytes(&bytes[..len]).is_err(),
            "truncated to {len} bytes was accepted"
        );
    }
    // Flip bytes all over the file: must never panic; header damage must be caught.
    let mut r = qmul_runtime::rng::Rng::new(4);
    for _ in 0..3000 {
        let mut b = bytes.clone();
        let i = r.below(b.len());
        b[i] ^= 1 << r.below(8);
        let _ = model_file::from_bytes(&b);
    }
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&(u64::MAX).to_le_bytes());
    assert!(model_file::from_bytes(&b).is_err());
    let header = String::from_utf8_lossy(&bytes[8..8 + hlen]).to_string();
    let tamper = |from: &str, to: &str| {
        let h = header.replacen(from, to, 1);
        assert_eq!(h.len(), header.len(), "tamper must keep the header length");
        let mut b = (hlen as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&bytes[8 + hlen..]);
        model_file::from_bytes(&b)
    };
    assert!(
        tamper("\"qmul\"", "\"qmuX\"").is_err(),
        "wrong format accepted"
    );
    assert!(
        tamper("\"cout\\\":7", "\"cout\\\":9").is_err(),
        "graph/tensor shape mismatch accepted"
    );
}

#[test]
fn non_finite_and_bad_padding_are_rejected() {
    let m = trained(QuantScheme::Pact);
    let mut bad = m.clone();
    let gi = bad
        .params
        .iter()
        .position(|t| t.name == "c1.bn.gamma")
        .unwrap();
    bad.params[gi].data[0] = f32::NAN;
    let bytes = model_file::to_bytes(&bad).unwrap();
    let e = model_file::from_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("non-finite"), "{e}");
    // A set nibble in the row padding of the 4-bit codes.
    let good = model_file::to_bytes(&m).unwrap();
    let (hlen, meta) = safetensors::SafeTensors::read_metadata(&good).unwrap();
    let info = meta.info("c1.codes").unwrap();
    let row_bytes = info.shape[1];
    let start = 8 + hlen + info.data_offsets.0;
    let mut b = good.clone();
    b[start + row_bytes - 1] |= 0x10; // last byte of row 0: beyond k = 45 codes
    let e = model_file::from_bytes(&b).unwrap_err().to_string();
    assert!(e.contains("padding"), "{e}");
}
