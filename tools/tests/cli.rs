//! End to end: the `qmul` command trains, saves, evaluates and inspects a model on
//! the shipped data subset.

use std::process::Command;

fn qmul() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qmul"))
}

#[test]
fn train_eval_inspect_on_the_shipped_subset() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.qmul");
    let st = qmul()
        .args([
            "train", "--data", "subset", "--arch", "resnet10", "--width", "8", "--epochs", "2",
            "--limit", "2000", "--batch", "50", "--lr", "0.05",
        ])
        .arg("--out")
        .arg(&out)
        .env("QMUL_NO_PROGRESS", "1")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(out.exists());
    let ev = qmul()
        .args(["eval", "--data", "subset", "--json", "--model"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        ev.status.success(),
        "{}",
        String::from_utf8_lossy(&ev.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
    let acc = v["test_acc"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&acc));
    assert!(
        acc > 35.0,
        "two epochs on 2,000 images should be well above chance (10%), got {acc}"
    );
    let ins = qmul().arg("inspect").arg(&out).output().unwrap();
    let text = String::from_utf8_lossy(&ins.stdout);
    assert!(
        ins.status.success() && text.contains("pact") && text.contains("resnet10"),
        "{text}"
    );
    // A malformed model file is a clean error.
    std::fs::write(dir.path().join("bad.qmul"), b"not a model").unwrap();
    let bad = qmul()
        .args(["eval", "--data", "subset", "--model"])
        .arg(dir.path().join("bad.qmul"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid model file"));
}

#[test]
fn unlearn_writes_model_and_receipt_and_eval_reports_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.qmul");
    let st = qmul()
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
        .arg(&m)
        .env("QMUL_NO_PROGRESS", "1")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let out = dir.path().join("u.qmul");
    let receipt = dir.path().join("r.jsonl");
    for method in ["qmul", "salun", "ga"] {
        let u = qmul()
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
            .arg(&receipt)
            .env("QMUL_NO_PROGRESS", "1")
            .output()
            .unwrap();
        assert!(
            u.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&u.stderr)
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
    let ev = qmul()
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
        .arg(&m)
        .output()
        .unwrap();
    assert!(
        ev.status.success(),
        "{}",
        String::from_utf8_lossy(&ev.stderr)
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
    let bad = qmul()
        .args([
            "unlearn", "--data", "subset", "--forget", "class:42", "--model",
        ])
        .arg(&m)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("class 42 out of range"));
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
            .env("QMUL_NO_PROGRESS", "1")
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
    assert!(!narrow.status.success());
    assert!(String::from_utf8_lossy(&narrow.stderr).contains("a grid may only grow"));
    // Another report that shares the model cache trains nothing.
    let other = tempfile::tempdir().unwrap();
    let o = qmul()
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
        .arg(other.path())
        .env("QMUL_NO_PROGRESS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("reusing") && !err.contains("training"),
        "{err}"
    );
    assert!(other.path().join("table.md").exists());
    // `qmul report` rebuilds the table and chart from results.json alone.
    let table = std::fs::read_to_string(other.path().join("table.md")).unwrap();
    std::fs::remove_file(other.path().join("table.md")).unwrap();
    std::fs::remove_file(other.path().join("avg_gap.svg")).unwrap();
    let rep = qmul().arg("report").arg(other.path()).output().unwrap();
    assert!(
        rep.status.success(),
        "{}",
        String::from_utf8_lossy(&rep.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(other.path().join("table.md")).unwrap(),
        table
    );
    assert!(other.path().join("avg_gap.svg").exists());
    assert!(table.contains("## Gap to Retrain per metric"), "{table}");
    // A damaged results file is named in a clear error and left as it is.
    std::fs::write(other.path().join("results.json"), b"{\"runs\": [").unwrap();
    let bad = qmul().arg("report").arg(other.path()).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("results.json"));
    assert_eq!(
        std::fs::read(other.path().join("results.json")).unwrap(),
        b"{\"runs\": ["
    );
}

#[test]
fn demo_runs_on_what_the_repository_ships() {
    let dir = tempfile::tempdir().unwrap();
    let o = qmul()
        .args(["demo", "--epochs", "1", "--out-dir"])
        .arg(dir.path())
        .env("QMUL_NO_PROGRESS", "1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{}",
        out,
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(out.matches("before ").count(), 2, "{out}");
    assert!(
        dir.path().join("forget-random10.qmul").exists()
            && dir.path().join("forget-class.qmul").exists()
    );
    let receipts = std::fs::read_to_string(dir.path().join("receipts.jsonl")).unwrap();
    assert_eq!(receipts.lines().count(), 2);
}
