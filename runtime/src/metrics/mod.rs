//! Forgetting metrics, exactly as in `reference/qmul-method.md`: accuracies on
//! the forget set (FA), the retain set (RA) and the test set (TA), MIA-efficacy
//! (confidence attack with an RBF SVC), and the Average Gap to a retrained model.

pub mod attacks;
pub mod svm;

use crate::error::{Error, Result};
use crate::samples::{argmax_rows, probabilities, Forward, Samples};
pub use attacks::Attacks;
use svm::{Svc, SvcParams, SvmError};

/// The four numbers of one model, in percent, and the extra attacks.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scores {
    pub fa: f64,
    pub ra: f64,
    pub ta: f64,
    /// The confidence attack (the MIA-efficacy of the Average Gap).
    pub mia: f64,
    /// Entropy, modified-entropy and loss-threshold attacks (see [`attacks`]);
    /// absent in results written before they were measured. Not part of the
    /// Average Gap, so that older tables stay comparable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attacks: Option<Attacks>,
}

/// Average Gap: mean absolute difference over FA, RA, TA and MIA.
pub fn avg_gap(a: &Scores, retrain: &Scores) -> f64 {
    ((a.fa - retrain.fa).abs()
        + (a.ra - retrain.ra).abs()
        + (a.ta - retrain.ta).abs()
        + (a.mia - retrain.mia).abs())
        / 4.0
}

/// Percentage of `pred[i] == labels[i]`.
pub fn accuracy(pred: &[usize], labels: &[u32]) -> f64 {
    if pred.is_empty() {
        return 0.0;
    }
    100.0
        * pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == **l as usize)
            .count() as f64
        / pred.len() as f64
}

/// Softmax probability of each sample's own label (`probs` is `n x classes`):
/// the confidence feature of the attack.
pub fn confidence(probs: &[f32], classes: usize, labels: &[u32]) -> Vec<f64> {
    probs
        .chunks(classes)
        .zip(labels)
        .map(|(p, &l)| p[l as usize] as f64)
        .collect()
}

/// MIA-efficacy in percent: an RBF SVC (C = 3, gamma = 1/n_features = 1) is
/// trained to tell members (`member_conf`: the first len(test) retain samples)
/// from non-members (`nonmember_conf`: the test set); the efficacy is the share
/// of forget samples (`forget_conf`) it predicts as non-members.
pub fn mia_efficacy(
    member_conf: &[f64],
    nonmember_conf: &[f64],
    forget_conf: &[f64],
) -> Result<f64, SvmError> {
    if forget_conf.is_empty() {
        return Err(SvmError("empty forget set".into()));
    }
    let mut x = member_conf.to_vec();
    x.extend_from_slice(nonmember_conf);
    let y: Vec<bool> = (0..x.len()).map(|i| i < member_conf.len()).collect();
    let svc = Svc::train(
        &x,
        1,
        &y,
        SvcParams {
            c: 3.0,
            gamma: 1.0,
            ..Default::default()
        },
    )?;
    let non_members = forget_conf.iter().filter(|&&v| !svc.predict(&[v])).count();
    Ok(100.0 * non_members as f64 / forget_conf.len() as f64)
}

/// FA and MIA-efficacy on the forget set, in percent (MIA needs retain and
/// test data: its members and non-members).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Forgetting {
    pub fa: f64,
    pub mia: Option<f64>,
    /// Accuracy on the held-out (test) set, when one was given: what a
    /// forget accuracy is compared with where no Retrain model exists
    /// (absent in receipts written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ta: Option<f64>,
}

impl From<&Scores> for Forgetting {
    /// The forget-set figures of a full evaluation (the same sets give the
    /// same numbers as [`forgetting`]).
    fn from(s: &Scores) -> Self {
        Forgetting {
            fa: s.fa,
            mia: Some(s.mia),
            ta: Some(s.ta),
        }
    }
}

/// Accuracy (percent) and confidence features of `model` on a set.
fn accuracy_and_confidence(
    model: &dyn Forward,
    s: Samples,
    batch: usize,
) -> Result<(f64, Vec<f64>)> {
    let (acc, f) = accuracy_and_features(model, s, batch, usize::MAX, false)?;
    Ok((acc, f.confidence))
}

/// The attacks' features of a set's samples.
#[derive(Default)]
struct Features {
    confidence: Vec<f64>,
    entropy: Vec<f64>,
    m_entropy: Vec<f64>,
    loss: Vec<f64>,
}

/// Accuracy (percent) of `model` on a set, and the attack features of its
/// first `keep` samples (all four with `all`, else the confidence only).
fn accuracy_and_features(
    model: &dyn Forward,
    s: Samples,
    batch: usize,
    keep: usize,
    all: bool,
) -> Result<(f64, Features)> {
    let k = model.classes();
    let p = probabilities(model, s.images, s.len(), batch, &mut |_| true)?
        .ok_or_else(|| Error::internal("probabilities stopped without a cancel"))?;
    let acc = accuracy(&argmax_rows(&p, k), s.labels);
    let n = keep.min(s.len());
    let (p, labels) = (&p[..n * k], &s.labels[..n]);
    let mut f = Features {
        confidence: confidence(p, k, labels),
        ..Default::default()
    };
    if all {
        f.entropy = attacks::entropy(p, k);
        f.m_entropy = attacks::m_entropy(p, k, labels);
        f.loss = attacks::loss(p, k, labels);
    }
    Ok((acc, f))
}

fn nonempty(s: &Samples, what: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(format!("the {what} set is empty")));
    }
    Ok(())
}

/// FA, RA, TA and MIA-efficacy of `model`, in percent, exactly as in
/// `reference/qmul-method.md`: the attack's members are the first len(test)
/// retain samples, its non-members the test set.
pub fn scores(
    model: &dyn Forward,
    forget: Samples,
    retain: Samples,
    test: Samples,
    batch: usize,
) -> Result<Scores> {
    for (s, what) in [(&forget, "forget"), (&retain, "retain"), (&test, "test")] {
        nonempty(s, what)?;
        s.check(model, what)?;
    }
    let (fa, f) = accuracy_and_features(model, forget, batch, usize::MAX, true)?;
    let (ra, r) = accuracy_and_features(model, retain, batch, test.len(), true)?;
    let (ta, t) = accuracy_and_features(model, test, batch, usize::MAX, true)?;
    let mia = mia_efficacy(&r.confidence, &t.confidence, &f.confidence)?;
    let attacks = Attacks {
        entropy: mia_efficacy(&r.entropy, &t.entropy, &f.entropy)?,
        m_entropy: mia_efficacy(&r.m_entropy, &t.m_entropy, &f.m_entropy)?,
        loss: attacks::loss_efficacy(&r.loss, &t.loss, &f.loss)?,
    };
    Ok(Scores {
        fa,
        ra,
        ta,
        mia,
        attacks: Some(attacks),
    })
}

/// FA, with a test set TA, and with retain and test sets MIA-efficacy on the
/// forget set: what a deletion receipt records. Only the attack's members (the first
/// len(test) retain samples) are evaluated, not the whole retain set.
pub fn forgetting(
    model: &dyn Forward,
    forget: Samples,
    retain: Option<Samples>,
    test: Option<Samples>,
    batch: usize,
) -> Result<Forgetting> {
    nonempty(&forget, "forget")?;
    forget.check(model, "forget set")?;
    let (fa, f_conf) = accuracy_and_confidence(model, forget, batch)?;
    let test = match test.filter(|t| !t.is_empty()) {
        Some(t) => {
            t.check(model, "test set")?;
            Some(accuracy_and_confidence(model, t, batch)?)
        }
        None => None,
    };
    let mia = match (retain, &test) {
        (Some(r), Some((_, t_conf))) if !r.is_empty() => {
            r.check(model, "retain set")?;
            let m = t_conf.len().min(r.len());
            let il = model.input_shape().len();
            let members = Samples {
                images: &r.images[..m * il],
                labels: &r.labels[..m],
            };
            let (_, m_conf) = accuracy_and_confidence(model, members, batch)?;
            Some(mia_efficacy(&m_conf, t_conf, &f_conf)?)
        }
        _ => None,
    };
    Ok(Forgetting {
        fa,
        mia,
        ta: test.map(|(ta, _)| ta),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avg_gap_and_accuracy_on_known_inputs() {
        let a = Scores {
            fa: 100.0,
            ra: 99.0,
            ta: 92.0,
            mia: 2.0,
            attacks: None,
        };
        let r = Scores {
            fa: 92.0,
            ra: 100.0,
            ta: 91.0,
            mia: 10.0,
            attacks: None,
        };
        assert!((avg_gap(&a, &r) - (8.0 + 1.0 + 1.0 + 8.0) / 4.0).abs() < 1e-12);
        assert_eq!(avg_gap(&r, &r), 0.0);
        assert_eq!(accuracy(&[1, 2, 3, 0], &[1, 2, 0, 0]), 75.0);
    }

    #[test]
    fn mia_separates_confident_members_from_unsure_non_members() {
        // Members are confident (~1), non-members spread lower: a forget set that
        // looks like members is mostly "member", one like the test set mostly not.
        let mut r = crate::rng::Rng::new(1);
        let members: Vec<f64> = (0..400).map(|_| 1.0 - 0.02 * r.uniform()).collect();
        let non: Vec<f64> = (0..400).map(|_| 0.3 + 0.5 * r.uniform()).collect();
        let like_members: Vec<f64> = (0..100).map(|_| 1.0 - 0.02 * r.uniform()).collect();
        let like_test: Vec<f64> = (0..100).map(|_| 0.3 + 0.5 * r.uniform()).collect();
        assert!(mia_efficacy(&members, &non, &like_members).unwrap() < 5.0);
        assert!(mia_efficacy(&members, &non, &like_test).unwrap() > 95.0);
    }
}
