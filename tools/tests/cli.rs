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
