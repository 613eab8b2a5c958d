//! Forget specifications shared by every command: which training samples a
//! model must forget (and `qmul train --exclude` leaves out, which is how the
//! Retrain reference is made).
//!
//! * `random:FRAC:SEED`: a uniform random fraction of the training set;
//! * `class:K`: every sample of class K;
//! * `indices:FILE`: one training-set index per line;
//! * `sequence:NxFRAC:SEED:K`: request K (1 to N) of N successive deletion
//!   requests, each a disjoint uniform random FRAC of the training set. Request
//!   K forgets its own part; parts 1 to K-1 were forgotten by the earlier
//!   requests, so they are left out of the retain set and counted in the
//!   forget-set metrics (the cumulative forget set). `sequence:NxFRAC:SEED`
//!   names the whole sequence (`qmul experiment` runs every request).

use crate::data::{Dataset, Rng};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq)]
pub enum ForgetSpec {
    Random {
        frac: f64,
        seed: u64,
    },
    Class(usize),
    Indices(PathBuf),
    /// Request `request` (1-based; `None`: the whole sequence) of `count`
    /// disjoint random parts of `frac` each.
    Sequence {
        count: usize,
        frac: f64,
        seed: u64,
        request: Option<usize>,
    },
}

/// Parses a fraction in (0, 1).
fn fraction(f: &str, s: &str) -> Result<f64, String> {
    let frac: f64 = f
        .parse()
        .map_err(|_| format!("bad fraction '{f}' in '{s}'"))?;
    if !(frac > 0.0 && frac < 1.0) {
        return Err(format!("fraction must be in (0, 1), got {frac}"));
    }
    Ok(frac)
}

impl ForgetSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["sequence", nf, seed, rest @ ..] if rest.len() <= 1 => {
                let (n, f) = nf
                    .split_once('x')
                    .ok_or_else(|| format!("'{s}': write sequence:NxFRAC:SEED[:K]"))?;
                let count: usize = n
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("bad request count '{n}' in '{s}'"))?;
                let frac = fraction(f, s)?;
                if count as f64 * frac >= 1.0 {
                    return Err(format!(
                        "'{s}': {count} requests of {frac} would forget the whole training set"
                    ));
                }
                let seed = seed
                    .parse()
                    .map_err(|_| format!("bad seed '{seed}' in '{s}'"))?;
                let request = match rest.first() {
                    Some(k) => Some(
                        k.parse()
                            .ok()
                            .filter(|k| (1..=count).contains(k))
                            .ok_or_else(|| format!("bad request '{k}' in '{s}' (1 to {count})"))?,
                    ),
                    None => None,
                };
                Ok(ForgetSpec::Sequence {
                    count,
                    frac,
                    seed,
                    request,
                })
            }
            ["random", f, seed] => {
                let frac = fraction(f, s)?;
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
                "unknown forget spec '{s}' (random:FRAC:SEED, class:K, indices:FILE or \
                 sequence:NxFRAC:SEED:K)"
            )),
        }
    }

    /// Part `k` (1-based) of a sequence's disjoint random parts, unsorted.
    fn sequence_part(train: &Dataset, count: usize, frac: f64, seed: u64, k: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::new(seed).shuffle(&mut order);
        let n = ((train.len() as f64) * frac).round() as usize;
        let k = k.clamp(1, count);
        order[(k - 1) * n..k * n].to_vec()
    }

    /// This spec as request `k` of its sequence (`None` if it is not one).
    pub fn request(&self, k: usize) -> Option<ForgetSpec> {
        match *self {
            ForgetSpec::Sequence {
                count, frac, seed, ..
            } => Some(ForgetSpec::Sequence {
                count,
                frac,
                seed,
                request: Some(k),
            }),
            _ => None,
        }
    }

    /// The spelling that parses back to this spec.
    pub fn text(&self) -> String {
        match self {
            ForgetSpec::Random { frac, seed } => format!("random:{frac}:{seed}"),
            ForgetSpec::Class(k) => format!("class:{k}"),
            ForgetSpec::Indices(p) => format!("indices:{}", p.display()),
            ForgetSpec::Sequence {
                count,
                frac,
                seed,
                request,
            } => match request {
                Some(k) => format!("sequence:{count}x{frac}:{seed}:{k}"),
                None => format!("sequence:{count}x{frac}:{seed}"),
            },
        }
    }

    /// What earlier requests of a sequence already forgot (sorted; empty for
    /// every other spec): left out of the retain set, counted in the metrics.
    pub fn earlier(&self, train: &Dataset) -> Vec<usize> {
        let ForgetSpec::Sequence {
            count,
            frac,
            seed,
            request: Some(k),
        } = *self
        else {
            return Vec::new();
        };
        let mut v: Vec<usize> = (1..k)
            .flat_map(|j| Self::sequence_part(train, count, frac, seed, j))
            .collect();
        v.sort_unstable();
        v
    }

    /// The forget-set indices into `train`, sorted, without duplicates.
    pub fn indices(&self, train: &Dataset) -> Result<Vec<usize>, String> {
        let mut v = match self {
            ForgetSpec::Sequence { request: None, .. } => {
                return Err(format!(
                    "'{}' names a whole sequence of requests: add the request, {}:K",
                    self.text(),
                    self.text()
                ))
            }
            &ForgetSpec::Sequence {
                count,
                frac,
                seed,
                request: Some(k),
            } => Self::sequence_part(train, count, frac, seed, k),
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
        let seq = ForgetSpec::parse("sequence:5x0.02:7:3").unwrap();
        assert_eq!(
            seq,
            ForgetSpec::Sequence {
                count: 5,
                frac: 0.02,
                seed: 7,
                request: Some(3)
            }
        );
        assert_eq!(ForgetSpec::parse(&seq.text()).unwrap(), seq);
        for bad in [
            "sequence:5x0.02",
            "sequence:0x0.1:1",
            "sequence:5x0.2:1",
            "sequence:5x0.02:1:6",
            "sequence:5x0.02:1:0",
            "sequence:5:1:1",
        ] {
            assert!(ForgetSpec::parse(bad).is_err(), "{bad}");
        }
    }

    /// The parts of a sequence are disjoint, each request's earlier parts are
    /// the previous requests' forget sets, and the whole sequence has no
    /// forget set of its own.
    #[test]
    fn sequence_requests_are_disjoint_and_cumulative() {
        let n = 1000;
        let labels = (0..n).map(|i| (i % 10) as u16).collect();
        let ds = Dataset::new("t", vec![0; n], labels, n, 1, 1, 1, 10).unwrap();
        let whole = ForgetSpec::parse("sequence:4x0.05:3").unwrap();
        assert!(whole.indices(&ds).is_err());
        let mut seen = Vec::new();
        for k in 1..=4 {
            let r = whole.request(k).unwrap();
            let part = r.indices(&ds).unwrap();
            assert_eq!(part.len(), 50);
            assert_eq!(r.earlier(&ds), seen, "request {k}");
            assert!(part.iter().all(|i| seen.binary_search(i).is_err()));
            seen.extend(part);
            seen.sort_unstable();
        }
    }
}
