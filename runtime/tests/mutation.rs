//! Seeded mutation testing of everything that parses untrusted bytes: 12,000
//! mutated model files (byte flips, insertions, deletions, truncations,
//! repeated chunks, and edits of the header's JSON numbers and strings, half
//! of them with the data checksum recomputed so the deeper checks are
//! reached), and 3,000 each of idx image and label files, CIFAR batches and
//! receipt logs. Every one must parse or fail with an error: no panic, no
//! abort, no unbounded allocation. `cargo fuzz` (tests/fuzz) runs the same
//! parsers coverage-guided for much longer.

use qmul_runtime::data::{cifar, idx, CifarKind};
use qmul_runtime::graph::{Graph, Op, Precision, QuantScheme};
use qmul_runtime::rng::Rng;
use qmul_runtime::session::receipt;
use qmul_runtime::{model_file, InitOptions, Model, Targets};
use sha2::Digest;
use std::path::Path;

fn small_model(scheme: QuantScheme) -> Vec<u8> {
    let q = scheme != QuantScheme::None;
    let (body, edge) = if q {
        (Precision::Int4, Precision::Int8)
    } else {
        (Precision::F32, Precision::F32)
    };
    let g = Graph {
        nodes: vec![
            Op::Input { h: 6, w: 6, c: 1 },
            Op::Conv {
                name: "stem".into(),
                input: 0,
                cout: 4,
                k: 3,
                stride: 1,
                pad: 1,
                prec: edge,
            },
            Op::BatchNorm {
                name: "bn".into(),
                input: 1,
            },
            Op::Act {
                name: "act".into(),
                input: 2,
            },
            Op::Conv {
                name: "c1".into(),
                input: 3,
                cout: 5,
                k: 3,
                stride: 2,
                pad: 1,
                prec: body,
            },
            Op::Act {
                name: "act1".into(),
                input: 4,
            },
            Op::Add { a: 5, b: 5 },
            Op::GlobalAvgPool { input: 6 },
            Op::Linear {
                name: "fc".into(),
                input: 7,
                out: 3,
                prec: edge,
            },
        ],
        scheme,
        classes: 3,
    };
    let mut m = Model::new(g, InitOptions::default()).unwrap();
    let images = vec![120u8; 4 * 36];
    let (labels, w) = (vec![1u32; 4], vec![1.0f32; 4]);
    m.train_pass(
        &images,
        4,
        Targets {
            labels: &labels,
            weights: &w,
        },
        true,
    )
    .unwrap();
    model_file::to_bytes(&m).unwrap()
}

/// Prints a figure and keeps it in `target/tmp/figures/` for `.ci/run` to show.
fn figure(text: &str, name: &str) {
    println!("{text}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("figures");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{name}.txt")), format!("{text}\n"));
    }
}

/// Recomputes the data checksum of a (mutated) file whose header still parses.
fn reseal(bytes: &[u8]) -> Option<Vec<u8>> {
    let hlen = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(hlen)?)?;
    let mut h: serde_json::Value = serde_json::from_slice(header).ok()?;
    let data = &bytes[8 + hlen..];
    let sum: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    h.get_mut("__metadata__")?
        .as_object_mut()?
        .insert("data_sha256".into(), sum.into());
    let mut hb = h.to_string().into_bytes();
    hb.resize(hb.len().next_multiple_of(8), b' ');
    let mut out = (hb.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&hb);
    out.extend_from_slice(data);
    Some(out)
}

/// One random mutation of `b`.
fn mutate(b: &[u8], r: &mut Rng) -> Vec<u8> {
    let mut v = b.to_vec();
    if v.is_empty() {
        return vec![r.below(256) as u8];
    }
    for _ in 0..1 + r.below(3) {
        let i = r.below(v.len().max(1));
        match r.below(7) {
            0 => v[i] ^= 1 << r.below(8),
            1 => v[i] = r.below(256) as u8,
            2 => v.insert(i, r.below(256) as u8),
            3 => {
                v.remove(i);
            }
            4 => v.truncate(i),
            5 => {
                let len = r.below(64).min(v.len() - i);
                let chunk = v[i..i + len].to_vec();
                let at = r.below(v.len());
                v.splice(at..at, chunk);
            }
            _ => {
                // Overwrite 8 bytes with an extreme little-endian number.
                let x: u64 = [0, 1, u64::MAX, 1 << 40, u32::MAX as u64][r.below(5)];
                for (k, byte) in x.to_le_bytes().iter().enumerate() {
                    if let Some(d) = v.get_mut(i + k) {
                        *d = *byte;
                    }
                }
            }
        }
        if v.is_empty() {
            break;
        }
    }
    v
}

/// Edits one number or string of the header's JSON text.
fn mutate_header(b: &[u8], r: &mut Rng) -> Option<Vec<u8>> {
    let hlen = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    let text = std::str::from_utf8(b.get(8..8 + hlen)?).ok()?.to_string();
    let picks = [
        "0",
        "1",
        "2",
        "7",
        "15",
        "16",
        "65536",
        "4294967296",
        "-1",
        "1e30",
        "null",
        "\"x\"",
    ];
    let digits: Vec<usize> = text
        .char_indices()
        .filter(|(_, c)| c.is_ascii_digit())
        .map(|(i, _)| i)
        .collect();
    let edited = if !digits.is_empty() && r.below(3) > 0 {
        let at = digits[r.below(digits.len())];
        let end = text[at..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(text.len(), |e| at + e);
        format!(
            "{}{}{}",
            &text[..at],
            picks[r.below(picks.len())],
            &text[end..]
        )
    } else {
        let words = [
            "int4", "int8", "f32", "pact", "lsq", "dsq", "none", "conv", "linear", "add",
        ];
        let w = words[r.below(words.len())];
        let to = words[r.below(words.len())];
        text.replacen(w, to, 1)
    };
    let mut hb = edited.into_bytes();
    hb.resize(hb.len().next_multiple_of(8), b' ');
    let mut out = (hb.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&hb);
    out.extend_from_slice(&b[8 + hlen..]);
    Some(out)
}

/// Writes the small seed models into `$QMUL_FUZZ_SEEDS` (used by
/// `tests/fuzz/run.sh` to seed the model-file fuzzer); does nothing otherwise.
#[test]
fn write_fuzz_seeds() {
    if let Ok(dir) = std::env::var("QMUL_FUZZ_SEEDS") {
        for s in [
            QuantScheme::Pact,
            QuantScheme::Lsq,
            QuantScheme::Dsq,
            QuantScheme::None,
        ] {
            let p = Path::new(&dir).join(format!("small-{}.qmul", s.name()));
            std::fs::write(p, small_model(s)).unwrap();
        }
    }
}

#[test]
fn mutated_model_files_are_errors_never_panics() {
    let seeds: Vec<Vec<u8>> = [
        QuantScheme::Pact,
        QuantScheme::Lsq,
        QuantScheme::Dsq,
        QuantScheme::None,
    ]
    .into_iter()
    .map(small_model)
    .collect();
    let mut r = Rng::new(20261201);
    let (mut files, mut accepted, mut deep) = (0usize, 0usize, 0usize);
    while files < 12_000 {
        let seed = &seeds[files % seeds.len()];
        let mut m = if r.below(3) == 0 {
            mutate_header(seed, &mut r).unwrap_or_else(|| mutate(seed, &mut r))
        } else {
            mutate(seed, &mut r)
        };
        if r.below(2) == 0 {
            if let Some(s) = reseal(&m) {
                m = s;
                deep += 1;
            }
        }
        files += 1;
        if let Ok(model) = model_file::from_bytes(&m) {
            accepted += 1;
            // Whatever loads must also run and save again.
            let s = model.graph.input_shape();
            let _ = model.forward(&vec![9u8; s.len()], 1);
            model_file::to_bytes(&model).unwrap();
        }
    }
    figure(&format!(
        "mutation: {files} mutated model files ({deep} resealed past the checksum): {accepted} loaded, {} rejected, no panic",
        files - accepted
    ), "mutation_models");
    assert!(accepted < files / 2, "most mutations must be rejected");
}

#[test]
fn mutated_data_files_and_receipt_logs_are_errors_never_panics() {
    let mut r = Rng::new(7);
    let images = idx::encode_idx_images(3, 4, 4, &[5u8; 3 * 4 * 4]).unwrap();
    let labels = idx::encode_idx_labels(&[1, 2, 3]).unwrap();
    let cifar10 = [cifar::synthetic_record(&[3]), cifar::synthetic_record(&[9])].concat();
    let cifar100 = cifar::synthetic_record(&[1, 77]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("r.jsonl");
    for k in 0..3 {
        let rec = receipt::Receipt {
            kind: String::new(),
            version: 0,
            seq: 0,
            prev: String::new(),
            forget_count: k,
            forget_sha256: "aa".repeat(32),
            forget_ids_sha256: None,
            forget_source: "test".into(),
            request: None,
            method: "qmul".into(),
            params: serde_json::json!({}),
            before: receipt::Forgetting {
                fa: 1.0,
                mia: None,
                ta: None,
            },
            after: receipt::Forgetting {
                fa: 0.5,
                mia: Some(2.0),
                ta: Some(0.25),
            },
            model_path: "m".into(),
            model_before_sha256: String::new(),
            model_after_sha256: String::new(),
            started_unix: 0,
            finished_unix: 0,
            unlearn_seconds: 0.0,
            codes_changed: Vec::new(),
            verdict: None,
            library: String::new(),
            checksum: String::new(),
        };
        receipt::append(&log, rec).unwrap();
    }
    let log_bytes = std::fs::read(&log).unwrap();
    assert!(receipt::parse_log(&log_bytes).is_valid());
    let p = Path::new("mutated");
    let mut counts = [0usize; 4];
    for i in 0..12_000 {
        match i % 4 {
            0 => {
                let m = mutate(&images, &mut r);
                let _ = idx::parse_idx_images(&m, p);
                let _ = idx::parse_idx_labels(&mutate(&labels, &mut r), p);
            }
            1 => {
                let (mut im, mut lb) = (Vec::new(), Vec::new());
                let _ = cifar::parse_cifar(
                    &mutate(&cifar10, &mut r),
                    CifarKind::Cifar10,
                    p,
                    &mut im,
                    &mut lb,
                );
                let _ = cifar::parse_cifar(
                    &mutate(&cifar100, &mut r),
                    CifarKind::Cifar100,
                    p,
                    &mut im,
                    &mut lb,
                );
            }
            2 => {
                let m = mutate(&log_bytes, &mut r);
                let rep = receipt::parse_log(&m);
                // A changed complete record is never accepted as valid.
                let complete = m.iter().rposition(|&b| b == b'\n').map_or(0, |e| e + 1);
                if rep.is_valid() && m[..complete] != log_bytes[..complete.min(log_bytes.len())] {
                    panic!("a mutated receipt log verified");
                }
            }
            _ => {
                let gz = qmul_runtime::data::file::gunzip(&mutate(&images, &mut r), p);
                let _ = gz;
            }
        }
        counts[i % 4] += 1;
    }
    figure(&format!(
        "mutation: {} idx image+label pairs, {} CIFAR-10+100 batches, {} receipt logs, {} gzip streams; no panic",
        counts[0], counts[1], counts[2], counts[3]
    ), "mutation_data");
}
