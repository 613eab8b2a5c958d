//! The forgetting protocol on data sets: splitting a training set into forget
//! and retain sets (and, for class-wise forgetting, the test set without that
//! class), computing FA, RA, TA and MIA-efficacy for a model, and hashing a
//! forget set for deletion receipts.

use crate::data::Dataset;
use crate::eval;
use crate::forget::{complement, ForgetSpec};
use qmul_runtime::metrics::{self, Scores};
use qmul_runtime::Model;
use sha2::{Digest, Sha256};

/// Index sets of one forgetting scenario.
#[derive(Clone, Debug)]
pub struct Split {
    pub forget: Vec<usize>,
    pub retain: Vec<usize>,
    /// Test images used for TA and as MIA non-members (all, or all but the forgotten class).
    pub test: Vec<usize>,
    pub class: Option<usize>,
}

pub fn split(spec: &ForgetSpec, train: &Dataset, test: &Dataset) -> Result<Split, String> {
    let forget = spec.indices(train)?;
    let retain = complement(train.len(), &forget);
    if retain.is_empty() {
        return Err("the retain set is empty".into());
    }
    let class = spec.class();
    let test_idx: Vec<usize> = (0..test.len())
        .filter(|&i| Some(test.label(i) as usize) != class)
        .collect();
    Ok(Split {
        forget,
        retain,
        test: test_idx,
        class,
    })
}

/// Images and labels of `idx` as the runtime takes them.
pub fn samples(ds: &Dataset, idx: &[usize]) -> (Vec<u8>, Vec<u32>) {
    let mut images = Vec::with_capacity(idx.len() * ds.image_len());
    let mut labels = Vec::with_capacity(idx.len());
    for &i in idx {
        images.extend_from_slice(ds.image(i));
        labels.push(ds.label(i) as u32);
    }
    (images, labels)
}

/// FA, RA, TA and MIA-efficacy of `model`, in percent.
pub fn scores(model: &Model, train: &Dataset, test: &Dataset, s: &Split) -> Result<Scores, String> {
    let k = model.classes();
    let eval_set = |ds: &Dataset, idx: &[usize]| -> Result<(f64, Vec<f64>), String> {
        let p = eval::probabilities(model, ds, Some(idx)).map_err(|e| e.to_string())?;
        let labels: Vec<u32> = idx.iter().map(|&i| ds.label(i) as u32).collect();
        let acc = metrics::accuracy(&eval::argmax_rows(&p, k), &labels);
        Ok((acc, metrics::confidence(&p, k, &labels)))
    };
    let (fa, f_conf) = eval_set(train, &s.forget)?;
    let (ra, r_conf) = eval_set(train, &s.retain)?;
    let (ta, t_conf) = eval_set(test, &s.test)?;
    let members = &r_conf[..t_conf.len().min(r_conf.len())];
    let mia = metrics::mia_efficacy(members, &t_conf, &f_conf).map_err(|e| e.to_string())?;
    Ok(Scores { fa, ra, ta, mia })
}

/// SHA-256 over the forget set's content: each sample's image bytes and label,
/// in index order. Identifies what was forgotten without revealing it.
pub fn forget_set_hash(ds: &Dataset, idx: &[usize]) -> String {
    let mut h = Sha256::new();
    for &i in idx {
        h.update(ds.image(i));
        h.update((ds.label(i) as u32).to_le_bytes());
    }
    hex(&h.finalize())
}

/// SHA-256 of a file's bytes.
pub fn file_hash(path: &std::path::Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
