//! Crash-safe file updates: replacing a file so that the path always holds
//! either the old or the new bytes, whatever happens (a kill, a power cut),
//! and appending one record to a log in a single write.
//!
//! Replacement writes a temporary file in the same directory under a name no
//! other save can take (process id, a per-process counter and the time), flushes
//! it to disk, renames it over the target and flushes the directory entry.
//! Every step's error is reported; a failed save removes its temporary file.
//! A temporary file left by a killed process is removed by
//! [`remove_stale_temps`], which opening a model calls.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the names of temporary files start with, after `.{file name}`.
const TEMP_TAG: &str = ".qmul-tmp.";
/// The tag of temporary files written by earlier versions (`.{name}.tmp-{pid}`).
const LEGACY_TEMP_TAG: &str = ".tmp-";

/// The directory holding `path` (`.` for a bare file name).
pub fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> io::Result<String> {
    path.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{}' names no file", path.display()),
            )
        })
}

/// A temporary name beside `path` that no other save (in this process or
/// another) uses at the same time.
pub fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Ok(dir_of(path).join(format!(
        ".{}{TEMP_TAG}{}.{seq}.{nanos}",
        file_name(path)?,
        std::process::id()
    )))
}

/// Flushes a directory's entries to disk. Filesystems that cannot sync a
/// directory (they answer "invalid argument" or "unsupported") are not an error.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = File::open(dir)?;
    match d.sync_all() {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Replaces `path` by `bytes` crash-safely (see the module comment).
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    remove_stale_temps(path);
    let dir = dir_of(path);
    let tmp = temp_path(path)?;
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io::Error::new(
            e.kind(),
            format!("writing {}: {e}", path.display()),
        ));
    }
    sync_dir(&dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{} was replaced but its directory could not be flushed to disk: {e}",
                path.display()
            ),
        )
    })
}

/// Appends `record` (one complete line, newline included) to `path` in one
/// write and flushes it to disk; a new file's directory entry is flushed too.
pub fn append(path: &Path, record: &[u8]) -> io::Result<()> {
    let existed = path.exists();
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(record)?;
    f.sync_all()?;
    if !existed {
        sync_dir(&dir_of(path))?;
    }
    Ok(())
}

/// Writes `record` to the end of an open (append or seeked) file in one write
/// and flushes it to disk.
pub fn append_to(f: &mut File, record: &[u8]) -> io::Result<()> {
    f.write_all(record)?;
    f.sync_all()
}

/// Whether the process `pid` may still be running (and so may still be
/// writing its temporary file). Without `/proc`, every process counts as alive
/// and only temporary files older than a day are removed.
fn may_be_running(pid: u32) -> bool {
    let proc_root = Path::new("/proc/self");
    if !proc_root.exists() {
        return true;
    }
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes temporary files that saves of `path` left behind when their process
/// was killed. Returns how many were removed. Files of live processes are kept.
pub fn remove_stale_temps(path: &Path) -> usize {
    let (Ok(name), dir) = (file_name(path), dir_of(path)) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let prefix = format!(".{name}");
    let mut removed = 0;
    for e in entries.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = fname.strip_prefix(&prefix) else {
            continue;
        };
        let pid_text = if let Some(r) = rest.strip_prefix(TEMP_TAG) {
            r.split('.').next().unwrap_or("")
        } else if let Some(r) = rest.strip_prefix(LEGACY_TEMP_TAG) {
            r
        } else {
            continue;
        };
        let Ok(pid) = pid_text.parse::<u32>() else {
            continue;
        };
        let stale = if may_be_running(pid) {
            // Without /proc, only very old files are surely abandoned.
            !Path::new("/proc/self").exists()
                && e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 24 * 3600)
        } else {
            true
        };
        if stale && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_leaves_no_temp_and_names_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.qmul");
        let a = temp_path(&p).unwrap();
        let b = temp_path(&p).unwrap();
        assert_ne!(a, b);
        replace(&p, b"one").unwrap();
        replace(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "only the model remains");
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.qmul");
        std::fs::write(&p, b"model").unwrap();
        // A pid far above any the kernel hands out is never running.
        let dead = dir.path().join(".m.qmul.qmul-tmp.4000000000.0.1");
        let legacy = dir.path().join(".m.qmul.tmp-4000000001");
        let mine = temp_path(&p).unwrap();
        let other = dir.path().join(".other.qmul.qmul-tmp.4000000000.0.1");
        for f in [&dead, &legacy, &mine, &other] {
            std::fs::write(f, b"partial").unwrap();
        }
        if Path::new("/proc/self").exists() {
            assert_eq!(remove_stale_temps(&p), 2);
            assert!(!dead.exists() && !legacy.exists());
        }
        assert!(mine.exists(), "a live process's temp is kept");
        assert!(other.exists(), "another file's temps are not touched");
        assert!(p.exists());
    }

    #[test]
    fn a_failed_replace_removes_its_temp() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails.
        let p = dir.path().join("sub");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("x"), b"x").unwrap();
        assert!(replace(&p, b"bytes").is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the directory remains");
    }
}
