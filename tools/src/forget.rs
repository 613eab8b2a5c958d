//! Forget specifications shared by every command: which training samples a
//! model must forget (and `qmul train --exclude` leaves out, which is how the
//! Retrain reference is made).
//!
//! * `random:FRAC:SEED`: a uniform random fraction of the training set;
//! * `class:K`: every sample of class K;
//! * `indices:FILE`: one training-set index per line.

use crate::data::{Dataset, Rng};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq)]
pub enum ForgetSpec {
    Random { frac: f64, seed: u64 },
    Class(usize),
    Indices(PathBuf),
}

impl ForgetSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["random", f, seed] => {
                let frac: f64 = f
                    .parse()
                    .map_err(|_| format!("bad fraction '{f}' in '{s}'"))?;
                if !(frac > 0.0 && frac < 1.0) {
                    return Err(format!("fraction must be in (0, 1), got {frac}"));
                }
                let seed = seed
                    .parse()
                    .map_err(|_| format!("bad seed '{seed}' in '{s}'"))?;
                Ok(ForgetSpec::Random { frac, seed })
            }
            ["class", k] => Ok(ForgetSpec::Class(
                k.parse().map_err(|_| format!("bad class '{k}' in '{s}'"))?,
            )),
            ["indices", rest @ ..] => {
                let file = rest.join(":");
                if file.is_empty() {
                    return Err(format!(
                        "'{s}': indices needs a file name (indices:FILE, one index per line)"
                    ));
                }
                Ok(ForgetSpec::Indices(PathBuf::from(file)))
            }
            _ => Err(format!(
                "unknown forget spec '{s}' (random:FRAC:SEED, class:K or indices:FILE)"
            )),
        }
    }

    /// The forget-set indices into `train`, sorted, without duplicates.
    pub fn indices(&self, train: &Dataset) -> Result<Vec<usize>, String> {
        let mut v = match self {
            ForgetSpec::Random { frac, seed } => {
                let mut order: Vec<usize> = (0..train.len()).collect();
                Rng::new(*seed).shuffle(&mut order);
                let k = ((train.len() as f64) * frac).round() as usize;
                order.truncate(k);
                order
            }
            ForgetSpec::Class(k) => {
                if *k >= train.classes {
                    return Err(format!(
                        "class {k} out of range ({} classes)",
                        train.classes
                    ));
                }
                (0..train.len())
                    .filter(|&i| train.label(i) as usize == *k)
                    .collect()
            }
            ForgetSpec::Indices(p) => {
                let text = read_index_file(p)?;
                let mut v = Vec::new();
                for (ln, line) in text.lines().enumerate() {
                    let t = line.trim();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    let i: usize = t
                        .parse()
                        .map_err(|_| format!("{}:{}: not an index: '{t}'", p.display(), ln + 1))?;
                    if i >= train.len() {
                        return Err(format!(
                            "{}:{}: index {i} out of range ({} samples)",
                            p.display(),
                            ln + 1,
                            train.len()
                        ));
                    }
                    v.push(i);
                }
                v
            }
        };
        v.sort_unstable();
        if let (ForgetSpec::Indices(p), Some(w)) = (self, v.windows(2).find(|w| w[0] == w[1])) {
            return Err(format!(
                "{}: index {} appears more than once (each sample is forgotten once)",
                p.display(),
                w[0]
            ));
        }
        if v.is_empty() {
            return Err("the forget set is empty".into());
        }
        Ok(v)
    }

    /// The class removed from the test set as well (class-wise forgetting).
    pub fn class(&self) -> Option<usize> {
        match self {
            ForgetSpec::Class(k) => Some(*k),
            _ => None,
        }
    }
}

/// Largest index file read (64 MiB: millions of indices).
const MAX_INDEX_FILE: u64 = 64 << 20;

/// An index file's text, read with a size cap (a link to an endless device is an error).
fn read_index_file(p: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_INDEX_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    if buf.len() as u64 > MAX_INDEX_FILE {
        return Err(format!(
            "{}: larger than {MAX_INDEX_FILE} bytes; not an index file",
            p.display()
        ));
    }
    String::from_utf8(buf).map_err(|_| format!("{}: not UTF-8 text", p.display()))
}

/// `0..n` minus the sorted `remove` list.
pub fn complement(n: usize, remove: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(n - remove.len().min(n));
    let mut r = remove.iter().peekable();
    for i in 0..n {
        if r.peek() == Some(&&i) {
            r.next();
        } else {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        assert_eq!(
            ForgetSpec::parse("random:0.1:7").unwrap(),
            ForgetSpec::Random { frac: 0.1, seed: 7 }
        );
        assert_eq!(ForgetSpec::parse("class:3").unwrap(), ForgetSpec::Class(3));
        assert!(ForgetSpec::parse("random:1.5:1").is_err());
        assert!(ForgetSpec::parse("bogus").is_err());
        assert!(ForgetSpec::parse("indices").is_err());
        assert!(ForgetSpec::parse("indices:").is_err());
        assert_eq!(
            ForgetSpec::parse("indices:a:b.txt").unwrap(),
            ForgetSpec::Indices(PathBuf::from("a:b.txt"))
        );
        assert!(ForgetSpec::parse("random:nan:1").is_err());
        assert_eq!(complement(5, &[1, 3]), vec![0, 2, 4]);
    }
}
