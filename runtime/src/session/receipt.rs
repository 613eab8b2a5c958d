//! Deletion receipts: an append-only log with one JSON line per committed
//! deletion, shared by the `qmul` command and the C ABI.
//!
//! A record says what was forgotten (the count and a SHA-256 of the samples'
//! contents, never the samples), how (method and parameters), the evidence (FA
//! and MIA on the forget set before and after), which model file it turned into
//! which (SHA-256 of both), when, and which library did it. Two fields make the
//! log tamper-evident:
//! * `checksum`: SHA-256 of the record's own JSON without this field, and the
//!   line must be exactly that JSON's canonical form, so an edited record
//!   (even one only reformatted) is detected;
//! * `prev`: SHA-256 of the previous line as stored (64 zeros for the first),
//!   with `seq` counting from 1, so a removed, reordered or inserted record is
//!   detected.
//!
//! A record is written with one `write` of the whole line and flushed; a crash
//! in the middle leaves a last line without its newline, which readers report
//! as a torn tail and ignore, and which the next append cuts off before it
//! writes. Appends hold an exclusive lock on the log. A log cannot prove that
//! its last records were not cut off; the model file's hash in the last
//! receipt, compared with the model on disk, shows that.

use crate::error::{Error, ErrorKind, Result};
use crate::model_file::write::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub const KIND: &str = "qmul-deletion-receipt";
pub const VERSION: u32 = 2;
/// Largest log read (a record is about 1 KB, so about a million deletions).
pub const MAX_LOG_BYTES: u64 = 1 << 30;
const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub use crate::metrics::Forgetting;

/// One committed deletion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub kind: String,
    pub version: u32,
    pub seq: u64,
    pub prev: String,
    pub forget_count: usize,
    pub forget_sha256: String,
    /// SHA-256 of the forget set's indices (little-endian u64s, in order) when
    /// it was chosen by index into a data file.
    pub forget_ids_sha256: Option<String>,
    pub forget_source: String,
    /// The caller's name for the request (a ticket id, a forget spec); never data.
    pub request: Option<String>,
    pub method: String,
    pub params: serde_json::Value,
    pub before: Forgetting,
    pub after: Forgetting,
    pub model_path: String,
    pub model_before_sha256: String,
    pub model_after_sha256: String,
    pub started_unix: u64,
    pub finished_unix: u64,
    pub unlearn_seconds: f64,
    /// Integer weight codes each epoch changed (empty in older records).
    #[serde(default)]
    pub codes_changed: Vec<u64>,
    /// The on-device deletion check (absent in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<super::Verdict>,
    pub library: String,
    pub checksum: String,
}

/// The library's name and version, as receipts record it.
pub fn library() -> String {
    format!("qmul-runtime {}", env!("CARGO_PKG_VERSION"))
}

/// SHA-256 of `indices` as little-endian u64s.
pub fn ids_sha256(indices: &[usize]) -> String {
    let mut h = Sha256::new();
    for &i in indices {
        h.update((i as u64).to_le_bytes());
    }
    hex(&h.finalize())
}

/// The record's checksum: SHA-256 of its JSON without the `checksum` field.
fn checksum_of(v: &serde_json::Value) -> Result<String> {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("checksum");
    }
    let text = serde_json::to_string(&v).map_err(|e| Error::internal(e.to_string()))?;
    Ok(hex(&Sha256::digest(text.as_bytes())))
}

fn line_hash(line: &[u8]) -> String {
    hex(&Sha256::digest(line))
}

/// What reading a log found.
#[derive(Clone, Debug, Default)]
pub struct LogReport {
    /// Every complete record, in order (including ones that failed a check).
    pub records: Vec<Receipt>,
    /// Each record's line as stored (for the C ABI's copy-out).
    pub lines: Vec<String>,
    /// Problems that mean the log was edited, cut or reordered.
    pub problems: Vec<String>,
    /// Bytes of a torn last record (a crash during its write), ignored.
    pub torn_tail: usize,
    /// Bytes of the log up to the end of its last complete record.
    pub valid_len: u64,
}

impl LogReport {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads and verifies the log at `path` (a missing file is an empty log).
pub fn read_log(path: &Path) -> Result<LogReport> {
    let mut text = Vec::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            f.take(MAX_LOG_BYTES + 1)
                .read_to_end(&mut text)
                .map_err(|e| Error::from(e).context(path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LogReport::default()),
        Err(e) => return Err(Error::from(e).context(path.display())),
    }
    if text.len() as u64 > MAX_LOG_BYTES {
        return Err(Error::new(
            ErrorKind::BadFile,
            format!(
                "{}: receipt log larger than {MAX_LOG_BYTES} bytes",
                path.display()
            ),
        ));
    }
    Ok(parse_log(&text))
}

/// Verifies the bytes of a log.
pub fn parse_log(text: &[u8]) -> LogReport {
    let mut r = LogReport::default();
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    r.valid_len = complete as u64;
    r.torn_tail = text.len() - complete;
    let mut prev = ZERO_HASH.to_string();
    let body = &text[..complete];
    let lines = body.iter().filter(|&&b| b == b'\n').count();
    for (k, line) in body.split(|&b| b == b'\n').take(lines).enumerate() {
        let n = k + 1;
        let parsed = std::str::from_utf8(line)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
        let Some(v) = parsed else {
            r.problems.push(format!(
                "record {n}: not a JSON receipt (edited or corrupted)"
            ));
            prev = line_hash(line);
            continue;
        };
        match (checksum_of(&v), v.get("checksum").and_then(|c| c.as_str())) {
            (Ok(want), Some(got)) if want == got => {}
            _ => r.problems.push(format!(
                "record {n}: checksum mismatch (the record was edited)"
            )),
        }
        if serde_json::to_string(&v).ok().as_deref().map(str::as_bytes) != Some(line) {
            r.problems.push(format!(
                "record {n}: not in the form qmul writes (the record was edited)"
            ));
        }
        match serde_json::from_value::<Receipt>(v) {
            Ok(rec) => {
                if rec.kind != KIND {
                    r.problems
                        .push(format!("record {n}: kind '{}' is not {KIND}", rec.kind));
                }
                if rec.seq != n as u64 {
                    r.problems.push(format!(
                        "record {n}: sequence number {} (a record was removed or inserted)",
                        rec.seq
                    ));
                }
                if rec.prev != prev {
                    r.problems.push(format!(
                        "record {n}: does not follow record {} (a record was removed, \
                         reordered or edited)",
                        n - 1
                    ));
                }
                r.records.push(rec);
                r.lines.push(String::from_utf8_lossy(line).into_owned());
            }
            Err(e) => r
                .problems
                .push(format!("record {n}: not a receipt of this version ({e})")),
        }
        prev = line_hash(line);
    }
    r
}

/// Appends `rec` to the log at `path`, filling in `kind`, `version`, `seq`,
/// `prev`, `library` and `checksum`. The log must verify; a torn last record
/// is cut off first. Returns the record as written.
pub fn append(path: &Path, mut rec: Receipt) -> Result<Receipt> {
    use std::fs::OpenOptions;
    let ctx = |e: std::io::Error| Error::from(e).context(path.display());
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(ctx)?;
    f.lock().map_err(ctx)?;
    let mut text = Vec::new();
    (&f).take(MAX_LOG_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(ctx)?;
    let report = parse_log(&text);
    if !report.is_valid() {
        return Err(Error::new(
            ErrorKind::BadFile,
            format!(
                "{}: the receipt log fails verification ({}); not appending",
                path.display(),
                report.problems.join("; ")
            ),
        ));
    }
    if report.torn_tail > 0 {
        f.set_len(report.valid_len).map_err(ctx)?;
        f.sync_all().map_err(ctx)?;
    }
    rec.kind = KIND.into();
    rec.version = VERSION;
    rec.library = library();
    rec.seq = report.records.len() as u64 + 1;
    rec.prev = report
        .lines
        .last()
        .map_or_else(|| ZERO_HASH.to_string(), |l| line_hash(l.as_bytes()));
    rec.checksum = String::new();
    let mut v = serde_json::to_value(&rec).map_err(|e| Error::internal(e.to_string()))?;
    rec.checksum = checksum_of(&v)?;
    v["checksum"] = rec.checksum.clone().into();
    // The line is the record's canonical JSON (the form readers re-serialize
    // to), so a change of formatting alone is detected as an edit too.
    let mut line = serde_json::to_string(&v).map_err(|e| Error::internal(e.to_string()))?;
    line.push('\n');
    f.seek(SeekFrom::End(0)).map_err(ctx)?;
    crate::durable::append_to(&mut f, line.as_bytes()).map_err(ctx)?;
    drop(f);
    if report.records.is_empty() && report.torn_tail == 0 && text.is_empty() {
        crate::durable::sync_dir(&crate::durable::dir_of(path)).map_err(ctx)?;
    }
    Ok(rec)
}

/// Checks, before a commit writes anything, that a receipt could be appended
/// to `path`: the log verifies (or does not exist yet) and is not the model.
pub fn preflight(path: &Path) -> Result<()> {
    let report = read_log(path)?;
    if !report.is_valid() {
        return Err(Error::new(
            ErrorKind::BadFile,
            format!(
                "{}: the receipt log fails verification ({}); nothing was committed",
                path.display(),
                report.problems.join("; ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(request: &str) -> Receipt {
        Receipt {
            kind: String::new(),
            version: 0,
            seq: 0,
            prev: String::new(),
            forget_count: 3,
            forget_sha256: "ab".repeat(32),
            forget_ids_sha256: None,
            forget_source: "3 samples from caller buffers".into(),
            request: Some(request.into()),
            method: "qmul".into(),
            params: serde_json::json!({"epochs": 2, "lr": 0.05}),
            before: Forgetting {
                fa: 99.5,
                mia: Some(2.25),
                ta: Some(90.5),
            },
            after: Forgetting {
                fa: 80.125,
                mia: None,
                ta: None,
            },
            model_path: "m.qmul".into(),
            model_before_sha256: "11".repeat(32),
            model_after_sha256: "22".repeat(32),
            started_unix: 1,
            finished_unix: 2,
            unlearn_seconds: 0.1 + 0.2,
            codes_changed: vec![12, 3],
            verdict: Some(super::super::Verdict {
                passed: true,
                scenario: "random".into(),
                detail: "test".into(),
                forced: false,
            }),
            library: String::new(),
            checksum: String::new(),
        }
    }

    #[test]
    fn chain_detects_edits_removals_and_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("receipts.jsonl");
        for k in 0..4 {
            let r = append(&p, sample(&format!("req{k}"))).unwrap();
            assert_eq!(r.seq, k + 1);
        }
        let good = std::fs::read(&p).unwrap();
        let rep = parse_log(&good);
        assert!(rep.is_valid(), "{:?}", rep.problems);
        assert_eq!(rep.records.len(), 4);
        assert_eq!(rep.records[1].request.as_deref(), Some("req1"));
        let lines: Vec<&[u8]> = good
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        // An edited value.
        let edited = String::from_utf8(good.clone())
            .unwrap()
            .replacen("80.125", "10.125", 1);
        assert!(!parse_log(edited.as_bytes()).is_valid());
        // A reformatted last record (same content, other bytes).
        let text = String::from_utf8(good.clone()).unwrap();
        let last_start = text[..text.len() - 1].rfind('\n').unwrap() + 1;
        let spaced = format!(
            "{}{}",
            &text[..last_start],
            text[last_start..].replacen(',', ", ", 1)
        );
        assert!(!parse_log(spaced.as_bytes()).is_valid());
        // A removed record in the middle, and a reordering.
        let removed = [lines[0], lines[2], lines[3]].join(&b'\n');
        let mut removed = removed.to_vec();
        removed.push(b'\n');
        assert!(!parse_log(&removed).is_valid());
        let mut swapped = [lines[1], lines[0], lines[2], lines[3]].join(&b'\n');
        swapped.push(b'\n');
        assert!(!parse_log(&swapped).is_valid());
        // A torn last record: ignored when reading, cut off when appending.
        let mut torn = good.clone();
        torn.extend_from_slice(&lines[1][..lines[1].len() / 2]);
        let rep = parse_log(&torn);
        assert!(rep.is_valid());
        assert_eq!(rep.records.len(), 4);
        assert!(rep.torn_tail > 0);
        std::fs::write(&p, &torn).unwrap();
        let r = append(&p, sample("after-crash")).unwrap();
        assert_eq!(r.seq, 5);
        let rep = read_log(&p).unwrap();
        assert!(rep.is_valid(), "{:?}", rep.problems);
        assert_eq!(rep.records.len(), 5);
        assert_eq!(rep.torn_tail, 0);
        // Appending to a tampered log is refused and changes nothing.
        std::fs::write(&p, edited.as_bytes()).unwrap();
        assert!(append(&p, sample("x")).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), edited.as_bytes());
        assert!(preflight(&p).is_err());
    }
}
