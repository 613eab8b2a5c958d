//! The forgetting protocol on data sets: splitting a training set into forget
//! and retain sets (and, for class-wise forgetting, the test set without that
//! class), and FA, RA, TA and MIA-efficacy of a model through the runtime's
//! metrics (the same function the session and the C ABI use).

use crate::data::Dataset;
use crate::forget::{complement, ForgetSpec};
use qmul_runtime::metrics::{self, Scores};
use qmul_runtime::samples::{Samples, EVAL_BATCH};

/// Index sets of one forgetting scenario.
#[derive(Clone, Debug)]
pub struct Split {
    /// What this run unlearns.
    pub forget: Vec<usize>,
    /// What earlier requests of a sequence forgot (empty otherwise): not in
    /// the retain set, and part of the forget set the metrics measure.
    pub earlier: Vec<usize>,
    pub retain: Vec<usize>,
    /// Test images used for TA and as MIA non-members (all, or all but the forgotten class).
    pub test: Vec<usize>,
    pub class: Option<usize>,
}

pub fn split(spec: &ForgetSpec, train: &Dataset, test: &Dataset) -> Result<Split, String> {
    let forget = spec.indices(train)?;
    let earlier = spec.earlier(train);
    let retain = complement(train.len(), &union(&forget, &earlier));
    if retain.is_empty() {
        return Err(
            "the forget set is the whole training set: nothing is left to retain \
             (train a new model instead)"
                .into(),
        );
    }
    let class = spec.class();
    let test_idx: Vec<usize> = (0..test.len())
        .filter(|&i| Some(test.label(i) as usize) != class)
        .collect();
    if test_idx.is_empty() {
        return Err(format!(
            "{}: no test images (TA and the membership attack need some)",
            test.name
        ));
    }
    Ok(Split {
        forget,
        earlier,
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

/// Sorted union of two sorted, disjoint index lists.
pub fn union(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut v = [a, b].concat();
    v.sort_unstable();
    v
}

impl Split {
    /// Everything forgotten so far: this run's forget set and the earlier
    /// requests' (what FA and the attack measure, and what a Retrain leaves out).
    pub fn forgotten(&self) -> Vec<usize> {
        union(&self.forget, &self.earlier)
    }
}

/// FA, RA, TA and MIA-efficacy of `model`, in percent (FA and the attack on
/// [`Split::forgotten`]).
pub fn scores(
    model: &dyn qmul_runtime::samples::Forward,
    train: &Dataset,
    test: &Dataset,
    s: &Split,
) -> Result<Scores, String> {
    let (fi, fl) = samples(train, &s.forgotten());
    let (ri, rl) = samples(train, &s.retain);
    let (ti, tl) = samples(test, &s.test);
    let set = |images, labels| Samples { images, labels };
    metrics::scores(
        model,
        set(&fi, &fl),
        set(&ri, &rl),
        set(&ti, &tl),
        EVAL_BATCH,
    )
    .map_err(|e| e.to_string())
}
