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

/// The header (as JSON) and data block of a model file.
fn split(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hlen]).unwrap();
    (h.as_object().unwrap().clone(), bytes[8 + hlen..].to_vec())
}

/// A file from a header and a data block, with the data checksum recomputed
/// so that tests reach the checks behind it.
fn join(mut h: serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let sum: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(m) = h.get_mut("__metadata__").and_then(|m| m.as_object_mut()) {
        if m.contains_key("data_sha256") {
            m.insert("data_sha256".into(), sum.into());
        }
    }
    raw_join(&serde_json::Value::Object(h).to_string(), data)
}

fn raw_join(header: &str, data: &[u8]) -> Vec<u8> {
    let mut hb = header.as_bytes().to_vec();
    hb.resize(hb.len().next_multiple_of(8), b' ');
    let mut b = (hb.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&hb);
    b.extend_from_slice(data);
    b
}

fn set_meta(h: &mut serde_json::Map<String, serde_json::Value>, key: &str, value: &str) {
    h["__metadata__"]
        .as_object_mut()
        .unwrap()
        .insert(key.into(), value.into());
}

/// Byte offset in the data block of tensor `name`.
fn data_offset(h: &serde_json::Map<String, serde_json::Value>, name: &str) -> usize {
    h[name]["data_offsets"][0].as_u64().unwrap() as usize
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
    // A diverged model is not written at all...
    let e = model_file::to_bytes(&bad).unwrap_err().to_string();
    assert!(e.contains("diverged"), "{e}");
    // ...and a file with a NaN in it does not load.
    let good = model_file::to_bytes(&m).unwrap();
    let (h, mut data) = split(&good);
    let o = data_offset(&h, "c1.bn.gamma");
    data[o..o + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let e = model_file::from_bytes(&join(h.clone(), &data))
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite"), "{e}");
    // A set nibble in the row padding of the 4-bit codes.
    let (_, mut data) = split(&good);
    let row_bytes = h["c1.codes"]["shape"][1].as_u64().unwrap() as usize;
    let start = data_offset(&h, "c1.codes");
    data[start + row_bytes - 1] |= 0x10; // last byte of row 0: beyond k = 45 codes
    let e = model_file::from_bytes(&join(h, &data))
        .unwrap_err()
        .to_string();
    assert!(e.contains("padding"), "{e}");
}

#[test]
fn a_flipped_bit_in_the_weights_fails_the_checksum() {
    let good = model_file::to_bytes(&trained(QuantScheme::Pact)).unwrap();
    let loaded = model_file::from_bytes_checked(&good).unwrap();
    assert_eq!(loaded.integrity, model_file::Integrity::Verified);
    let hlen = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut r = qmul_runtime::rng::Rng::new(11);
    for _ in 0..200 {
        let mut b = good.clone();
        let i = 8 + hlen + r.below(good.len() - 8 - hlen);
        b[i] ^= 1 << r.below(8);
        let e = model_file::from_bytes(&b).unwrap_err();
        assert!(
            matches!(e, model_file::ModelFileError::Checksum(_)),
            "byte {i}: {e}"
        );
    }
}

#[test]
fn version_1_files_without_a_checksum_still_load() {
    let m = trained(QuantScheme::Lsq);
    let good = model_file::to_bytes_with(&m, PLAIN).unwrap();
    let (mut h, data) = split(&good);
    h["__metadata__"]
        .as_object_mut()
        .unwrap()
        .remove("data_sha256");
    set_meta(&mut h, "format_version", "1");
    let old = join(h, &data);
    let loaded = model_file::from_bytes_checked(&old).unwrap();
    assert_eq!(loaded.integrity, model_file::Integrity::Unchecked);
    assert_eq!(loaded.format_version, 1);
    assert!(!loaded.sub_bin);
    // Saving it again writes the current version, with a checksum.
    assert_eq!(
        model_file::to_bytes_with(&loaded.model, PLAIN).unwrap(),
        good
    );
    // A version-2 file must carry its checksum.
    let (mut h, data) = split(&good);
    h["__metadata__"]
        .as_object_mut()
        .unwrap()
        .remove("data_sha256");
    let e = model_file::from_bytes(&join(h, &data))
        .unwrap_err()
        .to_string();
    assert!(e.contains("data_sha256"), "{e}");
}

/// A file without the sub-bin residuals.
const PLAIN: model_file::WriteOptions = model_file::WriteOptions::CENTRES;

/// The latent weights of every quantized layer, with their layer's scales.
fn latents(m: &Model) -> Vec<(Vec<f32>, Vec<f32>)> {
    use qmul_runtime::quant::weight;
    m.slots
        .iter()
        .filter_map(|s| s.conv().or(s.linear().map(|l| (l.0, l.2, l.3))))
        .filter(|&(_, _, kind)| kind != weight::WeightQuant::None)
        .map(|(w, wq, kind)| {
            let cout = m.params[w].shape[0];
            let q = weight::quantize(kind, &m.params[wq].data, &m.params[w].data, cout);
            (m.params[w].data.clone(), q.scale)
        })
        .collect()
}

/// Each latent weight comes back within 1/131072 of its step from a file with the
/// residuals (weights clipped by LSQ / DSQ excepted), the file re-saves byte
/// for byte, predictions are unchanged; without the residuals the weights load
/// at their bins' centres and predict the same too.
#[test]
fn sub_bin_residuals_round_trip_bit_exactly() {
    for scheme in [QuantScheme::Pact, QuantScheme::Lsq, QuantScheme::Dsq] {
        let m = trained(scheme);
        let bytes = model_file::to_bytes(&m).unwrap();
        let loaded = model_file::from_bytes_checked(&bytes).unwrap();
        assert!(loaded.sub_bin, "{scheme:?}");
        assert_eq!(loaded.format_version, 3);
        assert_eq!(model_file::to_bytes(&loaded.model).unwrap(), bytes);
        let (mut near, mut total) = (0usize, 0usize);
        for ((a, s), (b, _)) in latents(&m).iter().zip(latents(&loaded.model)) {
            let k = a.len() / s.len();
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                total += 1;
                let tol = s[i / k] / 131072.0 + 4.0 * f32::EPSILON * x.abs().max(s[i / k]);
                near += ((x - y).abs() <= tol) as usize;
            }
        }
        // Only clipped weights may be further away; the small test model has few.
        assert!(
            near as f64 >= 0.95 * total as f64,
            "{scheme:?}: {near}/{total}"
        );
        let images: Vec<u8> = (0..3 * 64).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(
            m.forward(&images, 3).unwrap(),
            loaded.model.forward(&images, 3).unwrap()
        );
        let plain = model_file::to_bytes_with(&m, PLAIN).unwrap();
        assert!(plain.len() < bytes.len());
        let centred = model_file::from_bytes_checked(&plain).unwrap();
        assert!(!centred.sub_bin);
        assert_eq!(
            m.forward(&images, 3).unwrap(),
            centred.model.forward(&images, 3).unwrap()
        );
        assert_ne!(latents(&centred.model), latents(&loaded.model));
    }
}

#[test]
fn bad_residuals_are_rejected() {
    let good = model_file::to_bytes(&trained(QuantScheme::Pact)).unwrap();
    let (h, data) = split(&good);
    let o = data_offset(&h, "c1.residual");
    let check = |h: &serde_json::Map<String, serde_json::Value>, data: &[u8], want: &str| {
        let e = model_file::from_bytes(&join(h.clone(), data))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
    };
    let mut d = data.clone();
    d[o] = 0x00;
    d[o + 1] = 0x80;
    check(&h, &d, "-32768");
    // A residual that pushes every weight of channel 0 outwards changes its
    // max-abs scale.
    let mut d = data.clone();
    let k = h["c1.residual"]["shape"][1].as_u64().unwrap() as usize;
    d[o..o + 2 * k]
        .chunks_mut(2)
        .for_each(|b| b.copy_from_slice(&20000i16.to_le_bytes()));
    check(&h, &d, "scales disagree");
    // Residuals on some layers only.
    let mut partial = h.clone();
    let entry = partial.remove("fc.residual").unwrap();
    partial.insert("fc.spare".into(), entry);
    check(&partial, &data, "fc.residual");
    // Residuals in a version-2 file.
    let mut v2 = h.clone();
    set_meta(&mut v2, "format_version", "2");
    check(&v2, &data, "format_version 3");
    // The wrong dtype.
    let mut f = h.clone();
    f["c1.residual"]["dtype"] = "U16".into();
    check(&f, &data, "c1.residual");
}

#[test]
fn contradicting_metadata_and_repeated_keys_are_rejected() {
    let good = model_file::to_bytes(&trained(QuantScheme::Pact)).unwrap();
    let (h, data) = split(&good);
    let mut lie = h.clone();
    set_meta(&mut lie, "scheme", "lsq");
    let e = model_file::from_bytes(&join(lie, &data))
        .unwrap_err()
        .to_string();
    assert!(e.contains("scheme"), "{e}");
    // The same tensor entry twice (the JSON parsers would keep the last one).
    let text = serde_json::Value::Object(h.clone()).to_string();
    let entry = format!("\"fc.bias\":{}", h["fc.bias"]);
    let twice = text.replacen(&entry, &format!("{entry},{entry}"), 1);
    assert_ne!(twice, text);
    let e = model_file::from_bytes(&raw_join(&twice, &data))
        .unwrap_err()
        .to_string();
    assert!(e.contains("appears twice"), "{e}");
    // A repeated key inside the graph's own JSON.
    let mut g = h.clone();
    let graph = g["__metadata__"]["graph"].as_str().unwrap().to_string();
    let dup = graph.replacen("\"classes\":4", "\"classes\":4,\"classes\":4", 1);
    set_meta(&mut g, "graph", &dup);
    let e = model_file::from_bytes(&join(g, &data))
        .unwrap_err()
        .to_string();
    assert!(e.contains("appears twice"), "{e}");
}

#[test]
fn quantizer_parameters_outside_their_range_are_rejected() {
    let good = model_file::to_bytes(&trained(QuantScheme::Dsq)).unwrap();
    let (h, data) = split(&good);
    for alpha in [0.0f32, 0.5, 0.7, -0.1] {
        let mut d = data.clone();
        // DSQ activation parameters are [u, alpha].
        let o = data_offset(&h, "c1.act.q") + 4;
        d[o..o + 4].copy_from_slice(&alpha.to_le_bytes());
        let e = model_file::from_bytes(&join(h.clone(), &d))
            .unwrap_err()
            .to_string();
        assert!(e.contains("valid range"), "alpha {alpha}: {e}");
    }
}

#[test]
fn a_hostile_graph_cannot_make_the_loader_allocate() {
    // A small file whose graph declares enormous layers: rejected from the
    // header alone, before any weight memory is allocated.
    let good = model_file::to_bytes(&trained(QuantScheme::Pact)).unwrap();
    let (h, data) = split(&good);
    let graph = h["__metadata__"]["graph"].as_str().unwrap().to_string();
    for (from, to) in [
        ("\"cout\":7", "\"cout\":65536"),
        ("\"cout\":5", "\"cout\":65536"),
        ("\"out\":4", "\"out\":65536"),
        ("\"h\":8,\"w\":8", "\"h\":8192,\"w\":8192"),
    ] {
        let mut g = h.clone();
        set_meta(&mut g, "graph", &graph.replacen(from, to, 1));
        let t = std::time::Instant::now();
        let e = model_file::from_bytes(&join(g, &data))
            .unwrap_err()
            .to_string();
        assert!(t.elapsed().as_secs_f64() < 1.0, "{to}: slow rejection");
        assert!(!e.is_empty());
    }
    // Too many nodes, and too deep a graph.
    let mut nodes = vec![Op::Input { h: 4, w: 4, c: 1 }];
    for i in 0..5000 {
        nodes.push(Op::Act {
            name: format!("a{i}"),
            input: i,
        });
    }
    let g = Graph {
        nodes,
        scheme: QuantScheme::None,
        classes: 2,
    };
    assert!(g.shapes().unwrap_err().to_string().contains("nodes"));
    let mut nodes = vec![Op::Input { h: 4, w: 4, c: 1 }];
    for i in 0..2000 {
        nodes.push(Op::Act {
            name: format!("a{i}"),
            input: i,
        });
    }
    let g = Graph {
        nodes,
        scheme: QuantScheme::None,
        classes: 2,
    };
    assert!(g.shapes().unwrap_err().to_string().contains("deeper"));
}

/// Format version 4 keeps the exact f32 latent weights (a model converted
/// from PyTorch): every weight comes back bit for bit, the file re-saves byte
/// for byte and stays version 4 through a session-style save; a latent
/// weight that no longer quantizes to the stored code is an error, and so is
/// a version-3 file with latent tensors.
#[test]
fn exact_latent_weights_round_trip_and_are_checked() {
    for scheme in [QuantScheme::Pact, QuantScheme::Lsq, QuantScheme::Dsq] {
        let mut m = trained(scheme);
        m.exact_latent = true;
        let bytes = model_file::to_bytes(&m).unwrap();
        let loaded = model_file::from_bytes_checked(&bytes).unwrap();
        assert_eq!(loaded.format_version, 4);
        assert!(loaded.exact_latent && loaded.sub_bin && loaded.model.exact_latent);
        assert_eq!(loaded.model.params, m.params, "{scheme:?}");
        assert_eq!(model_file::to_bytes(&loaded.model).unwrap(), bytes);
        // Without the flag the same model is an ordinary version-3 file.
        m.exact_latent = false;
        let v3 = model_file::from_bytes_checked(&model_file::to_bytes(&m).unwrap()).unwrap();
        assert_eq!((v3.format_version, v3.exact_latent), (3, false));

        // Move one latent weight by a step and a half: its code no longer matches.
        let (w, wq, kind) = m.slots.iter().find_map(|s| s.conv()).unwrap();
        let name = m.params[w].name.replace(".weight", ".latent");
        let cout = m.params[w].shape[0];
        let s = qmul_runtime::quant::weight::quantize(
            kind,
            &loaded.model.params[wq].data,
            &loaded.model.params[w].data,
            cout,
        )
        .scale[0];
        let text = retensor(&bytes, &name, |d| {
            let v = f32::from_le_bytes([d[0], d[1], d[2], d[3]]) + 1.5 * s;
            d[..4].copy_from_slice(&v.to_le_bytes());
        });
        let e = model_file::from_bytes(&text).unwrap_err().to_string();
        assert!(
            e.contains("do not quantize to these codes") || e.contains("scales disagree"),
            "{scheme:?}: {e}"
        );
    }
}

/// The file with tensor `name`'s data changed by `f` and the checksum
/// recomputed (so that only the content check can catch it).
fn retensor(bytes: &[u8], name: &str, f: impl Fn(&mut [u8])) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let off = header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    let mut out = bytes.to_vec();
    f(&mut out[8 + n + off..]);
    let sha = {
        use sha2::Digest;
        qmul_runtime::model_file::write::hex(&sha2::Sha256::digest(&out[8 + n..]))
    };
    let old = header["__metadata__"]["data_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let text = String::from_utf8(out[8..8 + n].to_vec())
        .unwrap()
        .replace(&old, &sha);
    out[8..8 + n].copy_from_slice(text.as_bytes());
    out
}
