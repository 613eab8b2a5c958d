//! Builds `tests/c/client.c` with the system C compiler against
//! `include/qmul.h` and the runtime's static library, and runs the whole flow
//! on a copy of the shipped model. With `QMUL_C_CLIENT_VALGRIND=1` it runs under
//! valgrind too (no leak, no invalid access; `.ci/run` does this).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The C library (`qmul-capi`'s `libqmul.a`), built now in this test's
/// profile directory.
fn staticlib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = profile_dir.parent().unwrap();
    let o = Command::new(cargo)
        .args(["build", "-p", "qmul-capi", "--lib", "--target-dir"])
        .arg(target_dir)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "building the static library failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    profile_dir.join("libqmul.a")
}

fn build(dir: &Path) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if Command::new(&cc).arg("--version").output().is_err() {
        eprintln!("SKIPPED: no C compiler ({cc}) on this machine");
        return None;
    }
    let lib = staticlib();
    assert!(lib.exists(), "{} not built", lib.display());
    let exe = dir.join("client");
    let o = Command::new(&cc)
        .args([
            "-std=c11",
            "-D_DEFAULT_SOURCE",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O1",
            "-g",
        ])
        .arg("-I")
        .arg(repo().join("include"))
        .arg(repo().join("tests/c/client.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "compiling the C client failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(exe)
}

fn args(dir: &Path) -> Vec<PathBuf> {
    let model = dir.join("model.qmul");
    std::fs::copy(
        repo().join("models/checkpoints/fmnist-subset-r18w8-pact.qmul"),
        &model,
    )
    .unwrap();
    let _ = std::fs::remove_file(dir.join("receipts.jsonl"));
    let data = repo().join("data/fashion-mnist-subset");
    vec![
        model,
        data.join("train-images-idx3-ubyte.gz"),
        data.join("train-labels-idx1-ubyte.gz"),
        data.join("t10k-images-idx3-ubyte.gz"),
        data.join("t10k-labels-idx1-ubyte.gz"),
        dir.join("receipts.jsonl"),
    ]
}

fn run(mut cmd: Command, name: &str) -> String {
    let o = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    qmul_tests::figure!(name, out.trim_end());
    assert!(
        o.status.success() && out.contains("C CLIENT OK"),
        "the C client failed:\n{out}\n{err}"
    );
    err
}

#[test]
fn c_client_runs_the_whole_flow() {
    let dir = tempfile::tempdir().unwrap();
    let Some(exe) = build(dir.path()) else {
        return;
    };
    let mut c = Command::new(&exe);
    c.args(args(dir.path()));
    run(c, "c_client");
    if std::env::var_os("QMUL_C_CLIENT_VALGRIND").is_some() {
        let mut v = Command::new("valgrind");
        v.args([
            "--error-exitcode=3",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ])
        .arg(&exe)
        .args(args(dir.path()))
        .env("QMUL_CLIENT_QUICK", "1");
        let err = run(v, "c_client_valgrind_stdout");
        let summary: Vec<&str> = err
            .lines()
            .filter(|l| {
                [
                    "ERROR SUMMARY",
                    "definitely lost",
                    "indirectly lost",
                    "in use at exit",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect();
        qmul_tests::figure!("c_client_valgrind", &summary.join("\n"));
        assert!(
            err.contains("ERROR SUMMARY: 0 errors"),
            "valgrind found errors:\n{err}"
        );
    }
}
