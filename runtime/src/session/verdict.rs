//! Whether a deletion happened, checked on the device, where there is no
//! Retrain model to compare with.
//!
//! The criterion uses only the session's own sets:
//! * **class-wise** (no class of the forget set occurs in the retain set): the
//!   forget accuracy must be at most chance, `100 / classes` percent. A model
//!   retrained without those classes can only hit them by accident (its FA is
//!   about 0), so anything above chance means the classes are still known.
//! * **random** (the forget set's classes are also retained): the forget
//!   accuracy must be no higher than the model's accuracy on held-out data
//!   (the test set) plus a margin, and the MIA efficacy must be higher than it
//!   was before the run (or stay at 100%, where it cannot rise). A retrained model treats forgotten samples like
//!   unseen ones, so it scores about its test accuracy on them; the margin is
//!   two binomial standard errors of an accuracy measured on `n` forget
//!   samples, `2 sqrt(TA (100 - TA) / n)`, plus one point, so that a small
//!   forget set is not failed by sampling noise alone.
//!
//! How well the verdict agrees with the Average Gap against a real Retrain is
//! measured on every run of the tables (`docs/results.md`).

use crate::metrics::Forgetting;

/// Which criterion applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Whole classes are forgotten; `classes` is the model's class count.
    ClassWise { classes: usize },
    /// Samples of classes the model keeps are forgotten.
    Random,
}

impl Scenario {
    /// The scenario of a forget set with `forget_labels` when the retain set
    /// has `retain_labels` (none: no retain set, judged as random).
    pub fn of(forget_labels: &[u32], retain_labels: Option<&[u32]>, classes: usize) -> Scenario {
        let Some(retain) = retain_labels.filter(|r| !r.is_empty()) else {
            return Scenario::Random;
        };
        let mut kept = vec![false; classes.max(1)];
        for &l in retain {
            if let Some(k) = kept.get_mut(l as usize) {
                *k = true;
            }
        }
        if forget_labels
            .iter()
            .any(|&l| kept.get(l as usize).copied().unwrap_or(false))
        {
            Scenario::Random
        } else {
            Scenario::ClassWise { classes }
        }
    }
}

/// The outcome, with the figures it was decided on.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub passed: bool,
    /// `class-wise` or `random`.
    pub scenario: String,
    /// What was compared, in words and figures.
    pub detail: String,
    /// A failed verdict committed anyway because the caller forced it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
}

/// The margin (percentage points) that forget accuracy may exceed held-out
/// accuracy `ta` by on a forget set of `n` samples.
pub fn random_margin(ta: f64, n: usize) -> f64 {
    let p = ta.clamp(0.0, 100.0);
    2.0 * (p * (100.0 - p) / n.max(1) as f64).sqrt() + 1.0
}

/// Judges a run from the forget set's figures before and after it.
pub fn judge(scenario: Scenario, before: &Forgetting, after: &Forgetting, n: usize) -> Verdict {
    match scenario {
        Scenario::ClassWise { classes } => {
            let chance = 100.0 / classes.max(1) as f64;
            let passed = after.fa <= chance;
            Verdict {
                passed,
                scenario: "class-wise".into(),
                detail: format!(
                    "forget accuracy {:.2}% {} chance {chance:.2}% (before: {:.2}%)",
                    after.fa,
                    if passed { "<=" } else { ">" },
                    before.fa
                ),
                forced: false,
            }
        }
        Scenario::Random => {
            let Some(ta) = after.ta else {
                return Verdict {
                    passed: false,
                    scenario: "random".into(),
                    detail: "cannot verify: no held-out data to compare the forget accuracy \
                             with (set a test set)"
                        .into(),
                    forced: false,
                };
            };
            let margin = random_margin(ta, n);
            let fa_ok = after.fa <= ta + margin;
            let mut detail = format!(
                "forget accuracy {:.2}% {} held-out accuracy {ta:.2}% + margin {margin:.2}",
                after.fa,
                if fa_ok { "<=" } else { ">" }
            );
            let mia_ok = match (before.mia, after.mia) {
                (Some(b), Some(a)) => {
                    // At 100% the attack already calls every forget sample a
                    // non-member: nothing higher can be asked for.
                    let ok = a > b || a >= 100.0;
                    detail += &format!(
                        "; MIA efficacy {a:.2}% {} {b:.2}% before",
                        if a > b {
                            ">"
                        } else if ok {
                            "= (saturated)"
                        } else {
                            "<="
                        }
                    );
                    ok
                }
                _ => {
                    detail += "; MIA efficacy not measured (set retain and test sets)";
                    false
                }
            };
            Verdict {
                passed: fa_ok && mia_ok,
                scenario: "random".into(),
                detail,
                forced: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(fa: f64, mia: Option<f64>, ta: Option<f64>) -> Forgetting {
        Forgetting { fa, mia, ta }
    }

    #[test]
    fn the_scenario_follows_the_retained_classes() {
        assert_eq!(
            Scenario::of(&[3, 3], Some(&[0, 1, 2]), 10),
            Scenario::ClassWise { classes: 10 }
        );
        assert_eq!(
            Scenario::of(&[3, 1], Some(&[0, 1, 2]), 10),
            Scenario::Random
        );
        assert_eq!(Scenario::of(&[3], None, 10), Scenario::Random);
    }

    #[test]
    fn class_wise_passes_at_or_below_chance() {
        let s = Scenario::ClassWise { classes: 10 };
        let before = f(99.0, None, None);
        assert!(judge(s, &before, &f(10.0, None, None), 100).passed);
        let v = judge(s, &before, &f(10.5, None, None), 100);
        assert!(
            !v.passed && v.detail.contains("> chance 10.00%"),
            "{}",
            v.detail
        );
    }

    #[test]
    fn random_needs_fa_near_held_out_accuracy_and_a_higher_mia() {
        // TA 90 on 100 forget samples: margin 2 * 3 + 1 = 7 points.
        assert!((random_margin(90.0, 100) - 7.0).abs() < 1e-12);
        let before = f(100.0, Some(2.0), Some(91.0));
        let s = Scenario::Random;
        assert!(judge(s, &before, &f(97.0, Some(5.0), Some(90.0)), 100).passed);
        assert!(!judge(s, &before, &f(97.1, Some(5.0), Some(90.0)), 100).passed);
        // FA low enough but the attack finds the forget set as member-like as before.
        assert!(!judge(s, &before, &f(90.0, Some(2.0), Some(90.0)), 100).passed);
        // An attack already at 100% cannot rise.
        let saturated = f(100.0, Some(100.0), Some(91.0));
        assert!(judge(s, &saturated, &f(90.0, Some(100.0), Some(90.0)), 100).passed);
        // No held-out data, or no attack: cannot verify.
        let v = judge(s, &before, &f(50.0, Some(5.0), None), 100);
        assert!(!v.passed && v.detail.contains("cannot verify"));
        assert!(
            !judge(
                s,
                &f(100.0, None, Some(91.0)),
                &f(50.0, None, Some(90.0)),
                100
            )
            .passed
        );
    }
}
