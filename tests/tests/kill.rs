//! Crash safety: a child process unlearns and commits three times in a row on
//! a model file (each commit with its receipt) and is killed with SIGKILL at a
//! random moment, 200 times (`QMUL_KILL_TRIALS` to change). After every kill
//! the file at the model path must load and be bit for bit one of the states
//! a commit can leave (the original or one of the three committed models),
//! the receipt log must verify (a torn last record is allowed and ignored),
//! and after the next open no temporary file may be left.

use qmul_runtime::rng::Rng;
use qmul_runtime::session::{receipt, CommitTarget, OpenModel, Session};
use qmul_runtime::unlearn::{Config, Method};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COMMITS: usize = 3;

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/checkpoints/fmnist-subset-r18w8-pact.qmul")
}

/// The child's work: three unlearn + commit rounds on `path`. With `record`,
/// a copy of the file after each commit is kept there.
fn child_work(path: &Path, receipts: &Path, record: Option<&Path>) {
    let mut r = Rng::new(7);
    let mut set = |n: usize| -> (Vec<u8>, Vec<u32>) {
        (
            (0..n * 784).map(|_| r.below(256) as u8).collect(),
            (0..n).map(|_| r.below(10) as u32).collect(),
        )
    };
    let (fi, fl) = set(16);
    let (ri, rl) = set(32);
    let (ti, tl) = set(16);
    for k in 1..=COMMITS {
        let open = OpenModel::open(path).unwrap();
        let mut s = Session::new(open, u64::MAX).unwrap();
        s.set_forget(&fi, &fl).unwrap();
        s.set_retain(&ri, &rl).unwrap();
        s.set_test(&ti, &tl).unwrap();
        let mut p = Config::new(Method::qmul(10));
        p.epochs = 1;
        p.batch = 16;
        p.lr = 0.05;
        p.seed = k as u64;
        s.unlearn(&p, &mut |_| true).unwrap();
        s.commit(&CommitTarget {
            model_path: None,
            receipts: Some(receipts),
            request: Some("kill-test"),
            // Random images and labels: no deletion check could pass on them.
            force: true,
        })
        .unwrap();
        if let Some(dir) = record {
            std::fs::copy(path, dir.join(format!("state{k}"))).unwrap();
        }
    }
}

/// Entry point of the child process (does nothing in a normal test run).
#[test]
fn child() {
    if let Ok(path) = std::env::var("QMUL_KILL_CHILD") {
        let receipts = std::env::var("QMUL_KILL_RECEIPTS").unwrap();
        let record = std::env::var("QMUL_KILL_RECORD").ok();
        child_work(
            Path::new(&path),
            Path::new(&receipts),
            record.as_deref().map(Path::new),
        );
    }
}

fn spawn_child(path: &Path, receipts: &Path, record: Option<&Path>) -> std::process::Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env("QMUL_KILL_CHILD", path)
        .env("QMUL_KILL_RECEIPTS", receipts)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(r) = record {
        c.env("QMUL_KILL_RECORD", r);
    }
    c.spawn().unwrap()
}

fn temps_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".qmul-tmp.") || n.contains(".tmp-"))
        .collect()
}

#[test]
fn sigkill_during_unlearning_and_commit_never_leaves_a_broken_model() {
    let trials: usize = std::env::var("QMUL_KILL_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let states_dir = dir.path().join("states");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&states_dir).unwrap();
    let model = work.join("model.qmul");
    let receipts = work.join("receipts.jsonl");
    let original = std::fs::read(shipped()).unwrap();

    // One uninterrupted run gives the states a commit may leave, and its time.
    std::fs::write(&model, &original).unwrap();
    let t0 = Instant::now();
    let status = spawn_child(&model, &receipts, Some(&states_dir))
        .wait()
        .unwrap();
    let full = t0.elapsed();
    assert!(status.success(), "the uninterrupted child failed");
    let mut states = vec![original.clone()];
    for k in 1..=COMMITS {
        states.push(std::fs::read(states_dir.join(format!("state{k}"))).unwrap());
    }
    assert_eq!(receipt::read_log(&receipts).unwrap().records.len(), COMMITS);

    let mut rng = Rng::new(2024);
    let mut seen = vec![0usize; states.len()];
    let mut torn = 0;
    for trial in 0..trials {
        std::fs::write(&model, &original).unwrap();
        let _ = std::fs::remove_file(&receipts);
        let mut child = spawn_child(&model, &receipts, None);
        let wait = Duration::from_secs_f64(full.as_secs_f64() * 1.05 * rng.uniform());
        std::thread::sleep(wait);
        let _ = child.kill(); // SIGKILL on Unix
        let _ = child.wait();
        let bytes = std::fs::read(&model).unwrap();
        let which = states.iter().position(|s| *s == bytes);
        assert!(
            which.is_some(),
            "trial {trial} (killed after {wait:?}): the model file is none of the states a commit leaves"
        );
        seen[which.unwrap_or(0)] += 1;
        qmul_runtime::model_file::from_bytes(&bytes).expect("the model file loads");
        let log = receipt::read_log(&receipts).unwrap();
        assert!(log.is_valid(), "trial {trial}: {:?}", log.problems);
        if log.torn_tail > 0 {
            torn += 1;
        }
        // The next open removes what the killed process left.
        OpenModel::open(&model).unwrap();
        let left = temps_in(&work);
        assert!(
            left.is_empty(),
            "trial {trial}: temporary files left: {left:?}"
        );
    }
    qmul_tests::figure!(
        "kill",
        &format!(
            "kill test: {trials} SIGKILL trials over {:.2}s runs: the file held the original model {} times, \
             commit 1/2/3 {:?} times; {torn} torn receipt tails ignored; always loadable, bit-exact, \
             no temporary file left",
            full.as_secs_f64(),
            seen[0],
            &seen[1..]
        ),
    );
    assert!(
        seen[0] > 0 && seen[1..].iter().sum::<usize>() > 0,
        "kills landed before and after commits"
    );
}
