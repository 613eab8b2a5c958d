//! End to end: the `qmul` command trains, saves, evaluates and inspects a model on
//! the shipped data subset.

use std::process::{Command, Output};

/// The command, with its progress lines off.
fn qmul() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qmul"));
    c.env("QMUL_NO_PROGRESS", "1");
    c
}

/// Runs the command; if it fails, so does the test, showing what it printed.
fn succeed(c: &mut Command) -> Output {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{:?} failed:\n{}{}",
        c.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Runs the command and expects it to fail with an error message holding `needle`.
fn fail_with(c: &mut Command, needle: &str) {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "{:?} should fail",
        c.get_args().collect::<Vec<_>>()
    );
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
}

#[test]
fn train_eval_inspect_on_the_shipped_subset() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.qmul");
    succeed(
        qmul()
            .args([
                "train", "--data", "subset", "--arch", "resnet10", "--width", "8", "--epochs", "2",
                "--limit", "2000", "--batch", "50", "--lr", "0.05",
            ])
            .arg("--out")
            .arg(&out),
    );
    assert!(out.exists());
    let ev = succeed(
        qmul()
            .args(["eval", "--data", "subset", "--json", "--model"])
            .arg(&out),
    );
    let v: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    let acc = v["test_acc"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&acc));
    assert!(
        acc > 35.0,
        "two epochs on 2,000 images should be well above chance (10%), got {acc}"
    );
    let ins = succeed(qmul().arg("inspect").arg(&out));
    let text = String::from_utf8_lossy(&ins.stdout);
    assert!(text.contains("pact") && text.contains("resnet10"), "{text}");
    // A malformed model file is a clean error.
    std::fs::write(dir.path().join("bad.qmul"), b"not a model").unwrap();
    fail_with(
        qmul()
            .args(["eval", "--data", "subset", "--model"])
            .arg(dir.path().join("bad.qmul")),
        "invalid model file",
    );
}

#[test]
fn unlearn_writes_model_and_receipt_and_eval_reports_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.qmul");
    succeed(
        qmul()
            .args([
                "train",
                "--data",
                "subset",
                "--train-subset",
                "1000:3",
                "--arch",
                "resnet10",
                "--width",
                "4",
            ])
            .args(["--epochs", "1", "--batch", "50", "--out"])
            .arg(&m),
    );
    let out = dir.path().join("u.qmul");
    let receipt = dir.path().join("r.jsonl");
    for method in ["qmul", "salun", "ga"] {
        let u = succeed(
            qmul()
                .args([
                    "unlearn",
                    "--data",
                    "subset",
                    "--train-subset",
                    "1000:3",
                    "--forget",
                    "random:0.1:1",
                    "--epochs",
                    "1",
                ])
                .args(["--method", method, "--model"])
                .arg(&m)
                .arg("--out")
                .arg(&out)
                .arg("--receipt")
                .arg(&receipt),
        );
        assert!(String::from_utf8_lossy(&u.stdout).contains("after"));
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&receipt)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "one receipt line per run, appended");
    let r = &lines[0];
    assert_eq!(r["forget_count"], 100);
    assert_eq!(r["method"], "qmul");
    assert_eq!(r["forget_sha256"].as_str().unwrap().len(), 64);
    assert_ne!(r["model_before_sha256"], r["model_after_sha256"]);
    assert!(r["before"]["fa"].is_number() && r["after"]["mia"].is_number());
    assert_eq!(
        lines[1]["forget_sha256"], r["forget_sha256"],
        "same forget set, same hash"
    );
    // A model's gap to itself is zero.
    let ev = succeed(
        qmul()
            .args([
                "eval",
                "--data",
                "subset",
                "--train-subset",
                "1000:3",
                "--forget",
                "class:2",
                "--json",
                "--model",
            ])
            .arg(&m)
            .arg("--retrain")
            .arg(&m),
    );
    let v: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert_eq!(v["avg_gap"], 0.0);
    assert_eq!(v["forget"], 100);
    assert_eq!(
        v["test"], 900,
        "class-wise forgetting removes the class from the test set"
    );
    for k in ["fa", "ra", "ta", "mia"] {
        let x = v[k].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&x), "{k} = {x}");
    }
    // Bad input is a clean error.
    fail_with(
        qmul()
            .args([
                "unlearn", "--data", "subset", "--forget", "class:42", "--model",
            ])
            .arg(&m)
            .arg("--out")
            .arg(&out),
        "class 42 out of range",
    );
}

#[test]
fn experiment_caches_models_and_resumes_from_its_results() {
    let dir = tempfile::tempdir().unwrap();
    let run_grid = |grid: &str| {
        qmul()
            .args([
                "experiment",
                "--data",
                "subset",
                "--train-subset",
                "600:1",
                "--arch",
                "resnet10",
                "--width",
                "4",
            ])
            .args([
                "--forget",
                "random:0.1:1",
                "--methods",
                "qmul,ga",
                "--seeds",
                "2",
                "--train-epochs",
                "1",
            ])
            .args([
                "--set",
                "qmul:epochs=1,ga:epochs=1",
                "--grid",
                grid,
                "--report",
            ])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let run = || {
        let o = run_grid("lr=0.01,0.02;epochs=1");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let first = run();
    assert!(first.contains("training original") && first.contains("training retrain"));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(results["runs"].as_array().unwrap().len(), 4);
    assert_eq!(
        results["tuning"].as_array().unwrap().len(),
        4,
        "2 methods x 2 grid points on the validation scenario"
    );
    let table = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
    assert!(
        table.contains("| original (no unlearning) |")
            && table.contains("| qmul |")
            && table.contains("| ga |")
    );
    assert!(std::fs::read_to_string(dir.path().join("avg_gap.svg"))
        .unwrap()
        .starts_with("<svg"));
    // A second invocation reuses both models and every finished run.
    let second = run();
    assert!(
        second.contains("reusing")
            && !second.contains("training original")
            && !second.contains("seed 0:"),
        "{second}"
    );
    // A wider grid reuses the trials already run, and any run whose method now
    // chooses another setting is made again with it.
    let wide = run_grid("lr=0.01,0.02,0.08;epochs=1");
    let err = String::from_utf8_lossy(&wide.stderr);
    assert!(wide.status.success(), "{err}");
    assert!(err.contains("reusing 4 tuning trials"), "{err}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
    let tuning = results["tuning"].as_array().unwrap();
    assert_eq!(tuning.len(), 6, "one new grid point for each method");
    assert_eq!(results["setting"]["grid"], "lr=0.01,0.02,0.08;epochs=1");
    let runs = results["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let order: Vec<_> = runs
        .iter()
        .map(|r| (r["method"].as_str().unwrap(), r["seed"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        order,
        [("qmul", 0), ("qmul", 1), ("ga", 0), ("ga", 1)],
        "runs stay in --methods order"
    );
    for r in runs {
        let m = r["method"].as_str().unwrap();
        let best = tuning
            .iter()
            .filter(|t| t["method"] == m)
            .min_by(|a, b| {
                a["avg_gap"]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&b["avg_gap"].as_f64().unwrap())
            })
            .unwrap();
        let (rl, tl) = (
            r["config"]["lr"].as_f64().unwrap(),
            best["lr"].as_f64().unwrap(),
        );
        assert!((rl - tl).abs() < 1e-6, "{m}: run lr {rl}, chosen {tl}");
    }
    // A grid that leaves out trials already run is refused: a grid only grows.
    let narrow = run_grid("lr=0.01;epochs=1");
    let err = String::from_utf8_lossy(&narrow.stderr);
    assert!(
        !narrow.status.success() && err.contains("a grid may only grow"),
        "{err}"
    );
    // Another report that shares the model cache trains nothing.
    let other = tempfile::tempdir().unwrap();
    let o = succeed(
        qmul()
            .args(["experiment", "--data", "subset", "--train-subset", "600:1"])
            .args([
                "--arch",
                "resnet10",
                "--width",
                "4",
                "--forget",
                "random:0.1:1",
            ])
            .args(["--methods", "ga", "--seeds", "1", "--train-epochs", "1"])
            .args(["--set", "ga:epochs=1", "--models"])
            .arg(dir.path())
            .arg("--report")
            .arg(other.path()),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("reusing") && !err.contains("training"),
        "{err}"
    );
    assert!(other.path().join("table.md").exists());
    // `qmul report` rebuilds the table and chart from results.json alone.
    let table = std::fs::read_to_string(other.path().join("table.md")).unwrap();
    std::fs::remove_file(other.path().join("table.md")).unwrap();
    std::fs::remove_file(other.path().join("avg_gap.svg")).unwrap();
    succeed(qmul().arg("report").arg(other.path()));
    assert_eq!(
        std::fs::read_to_string(other.path().join("table.md")).unwrap(),
        table
    );
    assert!(other.path().join("avg_gap.svg").exists());
    assert!(table.contains("## Gap to Retrain per metric"), "{table}");
    // A damaged results file is named in a clear error and left as it is.
    std::fs::write(other.path().join("results.json"), b"{\"runs\": [").unwrap();
    fail_with(qmul().arg("report").arg(other.path()), "results.json");
    assert_eq!(
        std::fs::read(other.path().join("results.json")).unwrap(),
        b"{\"runs\": ["
    );
}

#[test]
fn demo_runs_on_what_the_repository_ships() {
    let dir = tempfile::tempdir().unwrap();
    let o = succeed(
        qmul()
            .args(["demo", "--epochs", "1", "--out-dir"])
            .arg(dir.path()),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    // Two requests in a row on one file, then the class-wise run.
    assert_eq!(out.matches("before ").count(), 3, "{out}");
    assert_eq!(out.matches("deletion check (").count(), 3, "{out}");
    assert!(out.contains("metrics on all 500 forgotten so far"), "{out}");
    assert!(
        dir.path().join("model.qmul").exists() && dir.path().join("forget-class.qmul").exists()
    );
    // Every committed request has its receipt; a failed check commits nothing.
    let committed = out.matches("; committed ").count();
    let refused = out
        .matches("not committed: the deletion check failed")
        .count();
    assert_eq!(committed + refused, 3, "{out}");
    let receipts = std::fs::read_to_string(dir.path().join("receipts.jsonl")).unwrap();
    assert_eq!(receipts.lines().count(), committed);
    assert!(out.contains("receipt 1:"), "{out}");
    assert!(out.contains("chain verified"), "{out}");
    let v = succeed(
        qmul()
            .arg("receipts")
            .arg(dir.path().join("receipts.jsonl")),
    );
    assert!(String::from_utf8_lossy(&v.stdout).contains(&format!("{committed} records")));
}

/// `qmul experiment --forget sequence:...`: each request follows the file the
/// previous one committed, is measured on everything forgotten so far, and a
/// rerun resumes without redoing anything.
#[test]
fn a_sequence_of_requests_chains_commits_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        succeed(
            qmul()
                .args(["experiment", "--data", "subset", "--train-subset", "600:1"])
                .args(["--arch", "resnet10", "--width", "4", "--train-epochs", "1"])
                .args(["--forget", "sequence:2x0.05:3", "--methods", "qmul,ft"])
                .args([
                    "--seeds",
                    "1",
                    "--set",
                    "qmul:epochs=1,ft:epochs=1",
                    "--report",
                ])
                .arg(dir.path()),
        )
    };
    let first = String::from_utf8_lossy(&run().stderr).to_string();
    assert_eq!(first.matches("training retrain").count(), 2, "{first}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "2 methods x 2 requests");
    let req = r["requests"].as_array().unwrap();
    assert_eq!(req[0]["forgotten"], 30);
    assert_eq!(
        req[1]["forgotten"], 60,
        "the second request counts both parts"
    );
    for m in ["qmul", "ft"] {
        for k in 1..=2 {
            let p = dir.path().join(format!("chain/{m}-seed0-request{k}.qmul"));
            assert!(p.exists(), "{}", p.display());
        }
    }
    let table = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
    assert!(table.contains("| 2 | 60 | qmul |"), "{table}");
    let again = String::from_utf8_lossy(&run().stderr).to_string();
    assert!(
        !again.contains("request 1/2") && !again.contains("training"),
        "{again}"
    );
}

/// The careless and hostile inputs found by trying the command: each is a
/// clear error, exits non-zero, and writes nothing.
#[test]
fn careless_and_hostile_input_are_clean_errors_that_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/checkpoints/fmnist-subset-r18w8-pact.qmul"
    );
    let m = dir.path().join("m.qmul");
    std::fs::copy(shipped, &m).unwrap();
    let original = std::fs::read(&m).unwrap();
    let out = dir.path().join("out.qmul");
    let unlearn = |extra: &[&str]| {
        let mut c = qmul();
        c.args(["unlearn", "--data", "subset", "--epochs", "1", "--model"])
            .arg(&m)
            .arg("--out")
            .arg(&out)
            .args(extra);
        c
    };
    // `--forget indices` without a file name (used to panic).
    fail_with(&mut unlearn(&["--forget", "indices"]), "needs a file name");
    fail_with(
        qmul()
            .args(["eval", "--data", "subset", "--forget", "indices", "--model"])
            .arg(&m),
        "needs a file name",
    );
    // An index file with a repeated index, and one that is not text.
    let idx = dir.path().join("idx.txt");
    std::fs::write(&idx, "3\n7\n3\n").unwrap();
    let spec = format!("indices:{}", idx.display());
    fail_with(&mut unlearn(&["--forget", &spec]), "more than once");
    // The whole training set.
    let all: String = (0..5000).map(|i| format!("{i}\n")).collect();
    std::fs::write(&idx, all).unwrap();
    fail_with(&mut unlearn(&["--forget", &spec]), "whole training set");
    // Diverging settings.
    fail_with(
        &mut unlearn(&["--forget", "random:0.1:1", "--lr", "NaN"]),
        "learning rate",
    );
    // The receipt log may not be a model file.
    let out_s = out.display().to_string();
    let m_s = m.display().to_string();
    fail_with(
        &mut unlearn(&["--forget", "random:0.1:1", "--receipt", &out_s]),
        "receipts go in a file of their own",
    );
    fail_with(
        &mut unlearn(&["--forget", "random:0.1:1", "--receipt", &m_s]),
        "receipts go in a file of their own",
    );
    // A bogus kernel override is an error, not silently ignored.
    fail_with(
        qmul()
            .env("QMUL_KERNEL", "bogus")
            .args(["eval", "--data", "subset", "--model"])
            .arg(&m),
        "QMUL_KERNEL=bogus",
    );
    // Training: zero epochs, a NaN rate.
    fail_with(
        qmul()
            .args(["train", "--data", "subset", "--epochs", "0", "--out"])
            .arg(&out),
        "--epochs must be at least 1",
    );
    fail_with(
        qmul()
            .args(["train", "--data", "subset", "--lr", "NaN", "--out"])
            .arg(&out),
        "learning rate",
    );
    // A model whose graph declares a 65,536-channel conv (used to abort).
    let bytes = std::fs::read(&m).unwrap();
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + hlen].to_vec()).unwrap();
    let hostile_header = header.replacen(r#"\"cout\":8,"#, r#"\"cout\":65536,"#, 1);
    assert_ne!(hostile_header, header, "the graph has an 8-channel conv");
    let mut hb = hostile_header.into_bytes();
    hb.resize(hb.len().next_multiple_of(8), b' ');
    let mut hostile = (hb.len() as u64).to_le_bytes().to_vec();
    hostile.extend_from_slice(&hb);
    hostile.extend_from_slice(&bytes[8 + hlen..]);
    let hm = dir.path().join("hostile.qmul");
    std::fs::write(&hm, &hostile).unwrap();
    fail_with(qmul().arg("inspect").arg(&hm), "invalid model file");
    fail_with(
        qmul()
            .args(["eval", "--data", "subset", "--model"])
            .arg(&hm),
        "invalid model file",
    );
    // A raw data "file" that never ends.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    #[cfg(unix)]
    {
        for f in [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ] {
            std::os::unix::fs::symlink("/dev/zero", data.join(f)).unwrap();
        }
        let spec = format!("mnist:{}", data.display());
        let o = qmul()
            .args(["eval", "--data", &spec, "--model"])
            .arg(&m)
            .output()
            .unwrap();
        assert!(!o.status.success());
    }
    // Nothing was written, and the model is untouched.
    assert!(!out.exists(), "no output written");
    assert_eq!(std::fs::read(&m).unwrap(), original);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// `qmul quantize` turns a full-precision model into a 4-bit PACT file that
/// loads and predicts; `qmul experiment --quant none --quantize-after`
/// reports every result before and after that quantization.
#[test]
fn post_training_quantization_and_the_durability_table() {
    let dir = tempfile::tempdir().unwrap();
    let float = dir.path().join("float.qmul");
    succeed(
        qmul()
            .args([
                "train",
                "--data",
                "subset",
                "--train-subset",
                "600:1",
                "--arch",
                "resnet10",
            ])
            .args(["--width", "4", "--quant", "none", "--epochs", "1", "--out"])
            .arg(&float),
    );
    let q = dir.path().join("q.qmul");
    let o = succeed(
        qmul()
            .args(["quantize", "--data", "subset", "--calib", "64", "--model"])
            .arg(&float)
            .arg("--out")
            .arg(&q),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("(full precision) ->")
            && out.contains("MSE-optimal activation clips on 64 calibration images"),
        "{out}"
    );
    let i = succeed(qmul().arg("inspect").arg(&q));
    assert!(String::from_utf8_lossy(&i.stdout).contains("quantization  pact"));
    // A 4-bit model cannot be quantized again.
    fail_with(
        qmul()
            .args(["quantize", "--data", "subset", "--model"])
            .arg(&q)
            .arg("--out")
            .arg(dir.path().join("again.qmul")),
        "full-precision",
    );
    let report = dir.path().join("report");
    succeed(
        qmul()
            .args(["experiment", "--data", "subset", "--train-subset", "600:1"])
            .args([
                "--arch",
                "resnet10",
                "--width",
                "4",
                "--train-epochs",
                "1",
                "--quant",
                "none",
            ])
            .args([
                "--forget",
                "random:0.1:1",
                "--methods",
                "ft",
                "--seeds",
                "1",
            ])
            .args(["--set", "ft:epochs=1", "--quantize-after", "--report"])
            .arg(&report),
    );
    let table = std::fs::read_to_string(report.join("table.md")).unwrap();
    assert!(
        table.contains("## Durability under quantization") && table.contains("| ft |"),
        "{table}"
    );
}

/// `qmul experiment --plan`: every stage's jobs run two at a time with
/// `xargs -P 2`, a plain run merges them, and the table equals the one a
/// sequential run makes (every step is seeded).
#[test]
fn a_plan_run_in_parallel_gives_the_sequential_table() {
    let dir = tempfile::tempdir().unwrap();
    let args = |report: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "experiment",
            "--data",
            "subset",
            "--train-subset",
            "600:1",
            "--arch",
            "resnet10",
            "--width",
            "4",
            "--train-epochs",
            "1",
            "--forget",
            "random:0.1:1",
            "--methods",
            "qmul,ft",
            "--seeds",
            "2",
            "--grid",
            "lr=0.01,0.02;epochs=1",
            "--models",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(dir.path().join("models").display().to_string());
        v.push("--report".into());
        v.push(dir.path().join(report).display().to_string());
        v
    };
    let mut stages = Vec::new();
    for _ in 0..5 {
        let o = succeed(qmul().args(args("par")).arg("--plan"));
        let plan = String::from_utf8_lossy(&o.stdout).to_string();
        if plan.trim().is_empty() {
            break;
        }
        stages.push(plan.lines().count());
        let mut child = Command::new("sh")
            .args(["-c", "tr '\\n' '\\0' | xargs -0 -r -P 2 -n 1 sh -c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(plan.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(stages, vec![3, 4, 4], "models, trials, runs");
    let merged = succeed(qmul().args(args("par")));
    assert!(String::from_utf8_lossy(&merged.stderr).contains("merged 8 results"));
    succeed(qmul().args(args("seq")));
    let scores = |report: &str| {
        let r: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(report).join("results.json")).unwrap(),
        )
        .unwrap();
        let mut v: Vec<String> = r["runs"]
            .as_array()
            .unwrap()
            .iter()
            .chain(r["tuning"].as_array().unwrap())
            .map(|x| format!("{} {} {} {}", x["method"], x["seed"], x["lr"], x["scores"]))
            .collect();
        v.sort();
        v
    };
    assert_eq!(scores("par"), scores("seq"));
    assert_eq!(scores("par").len(), 8);
}

/// `--start`: unlearning from the file as saved, from the codes alone, or
/// from the training run's exact latent weights gives three different runs
/// of the same setting; each report records its start, and a report made
/// with one start refuses another.
#[test]
fn experiments_start_from_file_codes_or_latent_weights() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let run = |start: &str, report: &str| {
        qmul()
            .args(["experiment", "--data", "subset", "--train-subset", "600:1"])
            .args(["--arch", "resnet10", "--width", "4", "--train-epochs", "2"])
            .args([
                "--forget",
                "random:0.1:1",
                "--methods",
                "qmul",
                "--seeds",
                "1",
            ])
            .args([
                "--set",
                "qmul:epochs=1:lr=0.002",
                "--start",
                start,
                "--models",
            ])
            .arg(&models)
            .arg("--report")
            .arg(dir.path().join(report))
            .output()
            .unwrap()
    };
    let mut codes = Vec::new();
    for start in ["file", "codes", "latent"] {
        let o = run(start, start);
        assert!(
            o.status.success(),
            "{start}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(start).join("results.json")).unwrap(),
        )
        .unwrap();
        if start != "file" {
            assert_eq!(r["setting"]["start"], start);
        }
        codes.push(r["runs"][0]["epochs"][0]["codes_changed"].as_u64().unwrap());
    }
    eprintln!("codes changed from file, codes, latent: {codes:?}");
    // From the bins' centres a small step moves fewer codes than from the
    // saved positions; the exact latents are within 1/65536 step of those.
    assert!(codes[1] < codes[0], "{codes:?}");
    assert!(
        codes[2].abs_diff(codes[0]) * 10 <= codes[0].max(10),
        "{codes:?}"
    );
    let o = run("codes", "file");
    assert!(!o.status.success(), "a report of another start is refused");
    assert!(dir.path().join("models").read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".latent")));
}

/// `qmul bench` on tiny workloads: every section prints its table, a child
/// workload prints one JSON line with a positive speed and peak RSS, the
/// PyTorch side's failure is an error naming it, and bad options are errors.
#[test]
fn bench_prints_every_section_and_checks_its_options() {
    let o = succeed(qmul().args([
        "bench",
        "--nets",
        "4x1",
        "--batch",
        "2",
        "--steps",
        "1",
        "--only",
        "ceilings,layers,network,unlearn,profile",
    ]));
    let out = String::from_utf8_lossy(&o.stdout);
    for heading in [
        "## Ceilings",
        "## GEMMs of the convolutions",
        "## Whole network",
        "## One Q-MUL unlearning epoch",
        "## One training step by phase",
    ] {
        assert!(out.contains(heading), "missing '{heading}' in:\n{out}");
    }
    assert!(out.contains("f32 FMA"), "{out}");
    let o = succeed(qmul().args([
        "bench",
        "--child",
        "train:4:3",
        "--batch",
        "2",
        "--steps",
        "1",
    ]));
    let line = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["phase"], "train");
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0, "{line}");
    assert!(v["peak_rss_mb"].as_f64().unwrap() > 0.0, "{line}");
    fail_with(
        qmul().args([
            "bench",
            "--only",
            "network",
            "--nets",
            "4x1",
            "--batch",
            "2",
            "--steps",
            "1",
            "--torch",
            "/nonexistent/python",
        ]),
        "PyTorch train",
    );
    fail_with(qmul().args(["bench", "--only", "speed"]), "unknown section");
    fail_with(qmul().args(["bench", "--nets", "16x2"]), "channels 1 or 3");
    fail_with(qmul().args(["bench", "--steps", "0"]), "must be positive");
}

/// `--device`: the CPU evaluates as without it; a build without the `gpu`
/// feature refuses a GPU device with a message that says how to get one;
/// an unknown name is a usage error.
#[test]
fn the_device_flag_is_honoured_or_refused_clearly() {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/checkpoints/fmnist-subset-r18w8-pact.qmul"
    );
    let o = succeed(qmul().args([
        "--device", "cpu", "eval", "--model", model, "--data", "subset",
    ]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("test accuracy 87.70%"));
    if !cfg!(feature = "gpu") {
        fail_with(
            qmul().args([
                "--device",
                "wgpu",
                "train",
                "--data",
                "subset",
                "--out",
                "/nonexistent/m.qmul",
            ]),
            "built without GPU support",
        );
    }
    if !cfg!(feature = "gpu") {
        fail_with(
            qmul().args(["--device", "cuda", "demo"]),
            "built without GPU support",
        );
        fail_with(
            qmul().args([
                "--device", "wgpu", "eval", "--model", model, "--data", "subset",
            ]),
            "built without GPU support",
        );
    }
    fail_with(
        qmul().args(["--device", "tpu", "eval", "--model", model]),
        "invalid value",
    );
}

/// `qmul convert` both ways on the shipped model, and a converted model with
/// exact latent weights that stays exact through `qmul unlearn`'s commit
/// (format version 4 kept, `inspect` says so), then converts back; a
/// pickle is refused with advice.
#[test]
fn convert_round_trips_and_exact_latents_survive_unlearning() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/checkpoints/fmnist-subset-r18w8-pact.qmul");
    succeed(
        qmul()
            .args(["convert", "--to-torch"])
            .arg(&shipped)
            .arg("--out")
            .arg(p("m.safetensors")),
    );
    succeed(
        qmul()
            .args(["convert", "--from-torch"])
            .arg(p("m.safetensors"))
            .arg("--out")
            .arg(p("back.qmul")),
    );
    assert!(
        std::fs::read(&shipped).unwrap() == std::fs::read(p("back.qmul")).unwrap(),
        "qmul -> PyTorch -> qmul changed the shipped model's file"
    );
    succeed(
        qmul()
            .args(["convert", "--latent", "exact", "--from-torch"])
            .arg(p("m.safetensors"))
            .arg("--out")
            .arg(p("exact.qmul")),
    );
    succeed(
        qmul()
            .args(["unlearn", "--data", "subset", "--forget", "random:0.01:1"])
            .args(["--epochs", "1", "--force", "--model"])
            .arg(p("exact.qmul"))
            .arg("--out")
            .arg(p("unlearned.qmul")),
    );
    let i = succeed(qmul().arg("inspect").arg(p("unlearned.qmul")));
    let text = String::from_utf8_lossy(&i.stdout);
    assert!(text.contains("exact f32 latent weights kept"), "{text}");
    succeed(
        qmul()
            .args(["convert", "--to-torch"])
            .arg(p("unlearned.qmul"))
            .arg("--out")
            .arg(p("unlearned.safetensors")),
    );
    succeed(
        qmul()
            .args(["convert", "--from-torch"])
            .arg(p("unlearned.safetensors"))
            .arg("--out")
            .arg(p("unlearned2.qmul")),
    );
    assert!(
        std::fs::read(p("unlearned.qmul")).unwrap() == std::fs::read(p("unlearned2.qmul")).unwrap(),
        "the exact model changed through PyTorch"
    );
    std::fs::write(p("model.pt"), b"PK\x03\x04archive/data.pkl").unwrap();
    fail_with(
        qmul()
            .args(["convert", "--from-torch"])
            .arg(p("model.pt"))
            .arg("--out")
            .arg(p("x.qmul")),
        "torch.save",
    );
    assert!(!p("x.qmul").exists());
}
