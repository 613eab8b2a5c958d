//! Membership-inference attacks beyond the confidence attack of the headline
//! MIA-efficacy, all with the same shadow protocol: the attack learns members
//! from the first len(test) retain samples and non-members from the test set,
//! and its efficacy is the share of forget samples it calls non-members
//! (higher: the forget set looks less like training data).
//!
//! * **entropy**: feature `H(p) = -sum_i p_i log p_i` of the softmax output,
//!   an RBF SVC on it (C = 3, gamma = 1), as the SalUn code base's
//!   evaluation does. It needs no label: a member's prediction is peaked.
//! * **modified entropy** (Song and Mittal, 2021):
//!   `-(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)`, the same SVC. It
//!   uses the label, so a confidently wrong prediction scores high (unlike
//!   plain entropy), and it is monotone in the true-label probability.
//! * **loss threshold** (Yeom et al., 2018): a sample is a member when its
//!   cross-entropy `-log p_y` is at most a threshold; the threshold is the one
//!   with the best balanced accuracy on the shadow data. One number per
//!   sample and no model: the simplest attack a deployer can run.
//!
//! Logarithms of probabilities are taken with `p` clamped to at least 1e-30,
//! as the reference code does.

use super::svm::SvmError;

/// Efficacies of the extra attacks, in percent.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attacks {
    pub entropy: f64,
    pub m_entropy: f64,
    pub loss: f64,
}

fn ln(p: f64) -> f64 {
    p.max(1e-30).ln()
}

/// Entropy of each row of `probs` (`n x classes`).
pub fn entropy(probs: &[f32], classes: usize) -> Vec<f64> {
    probs
        .chunks(classes)
        .map(|row| {
            -row.iter()
                .map(|&p| p as f64)
                .filter(|&p| p > 0.0)
                .map(|p| p * p.ln())
                .sum::<f64>()
        })
        .collect()
}

/// Modified entropy of each row against its label.
pub fn m_entropy(probs: &[f32], classes: usize, labels: &[u32]) -> Vec<f64> {
    probs
        .chunks(classes)
        .zip(labels)
        .map(|(row, &y)| {
            -row.iter()
                .enumerate()
                .map(|(i, &p)| {
                    let p = p as f64;
                    if i == y as usize {
                        (1.0 - p) * ln(p)
                    } else {
                        p * ln(1.0 - p)
                    }
                })
                .sum::<f64>()
        })
        .collect()
}

/// Cross-entropy loss `-log p_y` of each row.
pub fn loss(probs: &[f32], classes: usize, labels: &[u32]) -> Vec<f64> {
    probs
        .chunks(classes)
        .zip(labels)
        .map(|(row, &y)| -ln(row[y as usize] as f64))
        .collect()
}

/// The loss threshold with the best balanced accuracy on the shadow data
/// (members: loss at most the threshold). Candidates are the midpoints
/// between consecutive distinct shadow losses and both ends.
pub fn loss_threshold(member: &[f64], nonmember: &[f64]) -> Result<f64, SvmError> {
    if member.is_empty() || nonmember.is_empty() {
        return Err(SvmError(
            "the loss attack needs member and non-member shadow samples".into(),
        ));
    }
    let mut all: Vec<(f64, bool)> = member
        .iter()
        .map(|&v| (v, true))
        .chain(nonmember.iter().map(|&v| (v, false)))
        .collect();
    if all.iter().any(|(v, _)| !v.is_finite()) {
        return Err(SvmError("a shadow loss is not finite".into()));
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (nm, nn) = (member.len() as f64, nonmember.len() as f64);
    // Threshold below everything: no member found, every non-member right.
    let (mut best, mut best_t) = (0.5, all[0].0 - 1.0);
    let (mut tp, mut fp) = (0.0, 0.0);
    for i in 0..all.len() {
        if all[i].1 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if i + 1 < all.len() && all[i + 1].0 == all[i].0 {
            continue;
        }
        let bal = 0.5 * (tp / nm + (nn - fp) / nn);
        if bal > best {
            best = bal;
            best_t = match all.get(i + 1) {
                Some(next) => 0.5 * (all[i].0 + next.0),
                None => all[i].0 + 1.0,
            };
        }
    }
    Ok(best_t)
}

/// Efficacy (percent) of the loss attack: forget samples whose loss is above
/// the threshold calibrated on the shadow data.
pub fn loss_efficacy(member: &[f64], nonmember: &[f64], forget: &[f64]) -> Result<f64, SvmError> {
    if forget.is_empty() {
        return Err(SvmError("empty forget set".into()));
    }
    let t = loss_threshold(member, nonmember)?;
    Ok(100.0 * forget.iter().filter(|&&l| l > t).count() as f64 / forget.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::mia_efficacy;

    #[test]
    fn features_on_known_rows() {
        // Uniform over 4: entropy ln 4; one-hot: 0.
        let e = entropy(&[0.25, 0.25, 0.25, 0.25, 1.0, 0.0, 0.0, 0.0], 4);
        assert!((e[0] - 4f64.ln()).abs() < 1e-12 && e[1] == 0.0);
        // [0.5, 0.5] with label 0: -(0.5 ln 0.5 + 0.5 ln 0.5) = ln 2.
        let m = m_entropy(&[0.5, 0.5], 2, &[0]);
        assert!((m[0] - 2f64.ln()).abs() < 1e-12);
        // Confidently right scores ~0; confidently wrong scores large (plain
        // entropy cannot tell the two apart).
        let m = m_entropy(&[0.999, 0.001, 0.001, 0.999], 2, &[0, 0]);
        assert!(m[0] < 0.01 && m[1] > 5.0, "{m:?}");
        let e = entropy(&[0.999, 0.001, 0.001, 0.999], 2);
        assert!((e[0] - e[1]).abs() < 1e-9);
        let l = loss(&[0.5, 0.5, 0.25, 0.75], 2, &[0, 1]);
        assert!((l[0] - 2f64.ln()).abs() < 1e-12 && (l[1] - (4.0f64 / 3.0).ln()).abs() < 1e-12);
        // A zero probability is clamped, not infinite.
        assert!(loss(&[0.0, 1.0], 2, &[0])[0].is_finite());
    }

    #[test]
    fn loss_threshold_separates_and_counts() {
        // Members have losses 0.1..0.4, non-members 1.0..1.3: the threshold
        // lies between, so forget losses 0.2 and 2.0 give 50% efficacy.
        let member = [0.1, 0.2, 0.3, 0.4];
        let non = [1.0, 1.1, 1.2, 1.3];
        let t = loss_threshold(&member, &non).unwrap();
        assert!((t - 0.7).abs() < 1e-12, "{t}");
        assert_eq!(loss_efficacy(&member, &non, &[0.2, 2.0]).unwrap(), 50.0);
        // Overlap: the best balanced accuracy wins (0.875, at 0.95).
        let t = loss_threshold(&[0.1, 0.2, 0.5, 0.9], &[0.4, 1.0, 1.1, 1.2]).unwrap();
        assert!((t - 0.95).abs() < 1e-12, "{t}");
        assert!(loss_efficacy(&[], &non, &[1.0]).is_err());
        assert!(loss_efficacy(&member, &non, &[]).is_err());
    }

    /// The entropy attack through the SVC: members peaked, non-members
    /// spread; a forget set like the test set is called non-member.
    #[test]
    fn entropy_attack_tells_peaked_from_spread() {
        let peaked: Vec<f32> = (0..200).flat_map(|_| [0.98f32, 0.01, 0.01]).collect();
        let spread: Vec<f32> = (0..200).flat_map(|_| [0.5f32, 0.3, 0.2]).collect();
        let (m, n) = (entropy(&peaked, 3), entropy(&spread, 3));
        assert!(mia_efficacy(&m, &n, &n[..50]).unwrap() > 95.0);
        assert!(mia_efficacy(&m, &n, &m[..50]).unwrap() < 5.0);
    }
}
