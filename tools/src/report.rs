//! Experiment reports: the results file, the markdown table in the layout of the
//! paper's (FA, RA, TA, MIA, Average Gap, time; mean +- std over seeds), and an
//! SVG bar chart of the Average Gap per method.

use qmul_runtime::metrics::Scores;
use qmul_runtime::model_file;
use qmul_runtime::session::Verdict;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One finished run of one method with one seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub method: String,
    pub seed: u64,
    pub scores: Scores,
    pub avg_gap: f64,
    pub seconds: f64,
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(default)]
    pub epochs: Vec<qmul_runtime::unlearn::EpochLog>,
    /// The on-device deletion check of the result (absent in older results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Verdict>,
    /// Which request of a sequence this run is (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<usize>,
    /// The unlearned full-precision model's scores after post-training
    /// quantization to 4 bits (`--quantize-after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized: Option<Scores>,
}

impl RunResult {
    /// The `(epochs, lr)` the run used, read from its recorded config.
    pub fn setting(&self) -> Option<(usize, f32)> {
        let epochs = self.config.get("epochs")?.as_u64()? as usize;
        let lr = self.config.get("lr")?.as_f64()? as f32;
        Some((epochs, lr))
    }
}

/// Whether two learning rates are the same setting (within f32 rounding, so
/// results written by an older rounding still count).
pub fn same_lr(a: f32, b: f32) -> bool {
    (a - b).abs() <= 4.0 * f32::EPSILON * a.abs().max(b.abs())
}

/// Everything an experiment has produced so far; rewritten after every run so
/// an interrupted experiment resumes from it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub setting: serde_json::Value,
    pub original: Option<Scores>,
    pub retrain: Option<Scores>,
    pub retrain_seconds: Option<f64>,
    pub runs: Vec<RunResult>,
    /// Grid-search trials on the validation scenario (one per method x setting).
    #[serde(default)]
    pub tuning: Vec<TuneTrial>,
    /// A sequence of deletion requests: the original's and each request's
    /// Retrain's scores on everything forgotten up to that request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<RequestRef>,
    /// The original and Retrain after post-training quantization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_quantized: Option<Scores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrain_quantized: Option<Scores>,
}

/// Durability under quantization: FA and MIA of each full-precision result
/// before and after post-training quantization to 4 bits, and the Average
/// Gap of the quantized model to the quantized Retrain.
pub fn durability_table(r: &Results) -> String {
    let (Some(oq), Some(rq), Some(o), Some(rt)) = (
        &r.original_quantized,
        &r.retrain_quantized,
        &r.original,
        &r.retrain,
    ) else {
        return String::new();
    };
    let mut s = String::from(
        "\n## Durability under quantization (full precision, then post-training 4-bit PACT)\n\n\
         | method | FA | FA after quantization | MIA | MIA after quantization | AG to Retrain | AG after quantization (to quantized Retrain) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let ag = qmul_runtime::metrics::avg_gap;
    s += &format!(
        "| original | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        o.fa,
        oq.fa,
        o.mia,
        oq.mia,
        ag(o, rt),
        ag(oq, rq)
    );
    s += &format!(
        "| retrain | {:.2} | {:.2} | {:.2} | {:.2} | 0.00 | 0.00 |\n",
        rt.fa, rq.fa, rt.mia, rq.mia
    );
    for m in methods(r) {
        let runs: Vec<&RunResult> = r
            .runs
            .iter()
            .filter(|x| x.method == m && x.quantized.is_some())
            .collect();
        if runs.is_empty() {
            continue;
        }
        let col =
            |f: &dyn Fn(&RunResult) -> f64| cell(&runs.iter().map(|x| f(x)).collect::<Vec<_>>());
        let q = |x: &RunResult| x.quantized.unwrap_or(x.scores);
        s += &format!(
            "| {m} | {} | {} | {} | {} | {} | {} |\n",
            col(&|x| x.scores.fa),
            col(&|x| q(x).fa),
            col(&|x| x.scores.mia),
            col(&|x| q(x).mia),
            col(&|x| x.avg_gap),
            col(&|x| ag(&q(x), rq))
        );
    }
    s
}

/// The reference points of request `request` of a sequence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestRef {
    pub request: usize,
    /// Samples forgotten by this and every earlier request.
    pub forgotten: usize,
    pub original: Scores,
    pub retrain: Scores,
    pub retrain_seconds: Option<f64>,
}

/// A sequence's table: per request, the original, its Retrain and every
/// method (mean over seeds), measured on everything forgotten so far.
pub fn sequence_table(r: &Results) -> String {
    if r.requests.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "| request | forgotten | method | FA | RA | TA | MIA | Avg. Gap | check passed | time (s) | entropy / m-entropy / loss attacks |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let attacks = |sc: &[&Scores]| {
        let v: Vec<_> = sc.iter().filter_map(|x| x.attacks).collect();
        if v.is_empty() {
            return "-".to_string();
        }
        let mean = |f: &dyn Fn(&qmul_runtime::metrics::Attacks) -> f64| {
            mean_std(&v.iter().map(f).collect::<Vec<_>>()).0
        };
        format!(
            "{:.2} / {:.2} / {:.2}",
            mean(&|a| a.entropy),
            mean(&|a| a.m_entropy),
            mean(&|a| a.loss)
        )
    };
    for q in &r.requests {
        let og = qmul_runtime::metrics::avg_gap(&q.original, &q.retrain);
        let (o, t) = (&q.original, &q.retrain);
        s += &format!(
            "| {} | {} | original | {:.2} | {:.2} | {:.2} | {:.2} | {og:.2} | - | - | {} |\n",
            q.request,
            q.forgotten,
            o.fa,
            o.ra,
            o.ta,
            o.mia,
            attacks(&[o])
        );
        s += &format!(
            "| {} | {} | retrain | {:.2} | {:.2} | {:.2} | {:.2} | 0.00 | - | {} | {} |\n",
            q.request,
            q.forgotten,
            t.fa,
            t.ra,
            t.ta,
            t.mia,
            q.retrain_seconds.map_or("-".into(), |x| format!("{x:.0}")),
            attacks(&[t])
        );
        for m in methods(r) {
            let runs: Vec<&RunResult> = r
                .runs
                .iter()
                .filter(|x| x.method == m && x.request == Some(q.request))
                .collect();
            if runs.is_empty() {
                continue;
            }
            let col = |f: &dyn Fn(&RunResult) -> f64| {
                cell(&runs.iter().map(|x| f(x)).collect::<Vec<_>>())
            };
            let pass = runs
                .iter()
                .filter(|x| x.check.as_ref().is_some_and(|v| v.passed))
                .count();
            let sc: Vec<&Scores> = runs.iter().map(|x| &x.scores).collect();
            s += &format!(
                "| {} | {} | {m} | {} | {} | {} | {} | {} | {pass}/{} | {} | {} |\n",
                q.request,
                q.forgotten,
                col(&|x| x.scores.fa),
                col(&|x| x.scores.ra),
                col(&|x| x.scores.ta),
                col(&|x| x.scores.mia),
                col(&|x| x.avg_gap),
                runs.len(),
                col(&|x| x.seconds),
                attacks(&sc)
            );
        }
    }
    s
}

/// One setting of one method tried on the validation scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TuneTrial {
    pub method: String,
    pub epochs: usize,
    pub lr: f32,
    pub scores: Scores,
    pub avg_gap: f64,
    pub seconds: f64,
    /// The on-device deletion check of the trial's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Verdict>,
}

/// The setting with the lowest validation Average Gap of each method.
pub fn chosen(r: &Results, method: &str) -> Option<(usize, f32)> {
    r.tuning
        .iter()
        .filter(|t| t.method == method)
        .min_by(|a, b| a.avg_gap.total_cmp(&b.avg_gap))
        .map(|t| (t.epochs, t.lr))
}

/// A learning rate as a person writes it (an f32 0.049999997 prints as 0.05).
pub fn lr_text(lr: f32) -> String {
    format!("{}", (lr as f64 * 1e8).round() / 1e8)
}

/// The tuning table: every trial, the chosen one marked.
pub fn tuning_table(r: &Results) -> String {
    if r.tuning.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n## Tuning on the validation scenario\n\n| method | epochs | lr | FA | RA | TA | MIA | Avg. Gap | chosen |\n|---|---|---|---|---|---|---|---|---|\n");
    for t in &r.tuning {
        let mark = if chosen(r, &t.method) == Some((t.epochs, t.lr)) {
            "yes"
        } else {
            ""
        };
        s += &format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {mark} |\n",
            t.method,
            t.epochs,
            lr_text(t.lr),
            t.scores.fa,
            t.scores.ra,
            t.scores.ta,
            t.scores.mia,
            t.avg_gap
        );
    }
    s
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn cell(v: &[f64]) -> String {
    let (m, s) = mean_std(v);
    if v.len() > 1 {
        format!("{m:.2} ± {s:.2}")
    } else {
        format!("{m:.2}")
    }
}

/// Methods in first-seen order.
pub fn methods(r: &Results) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for run in &r.runs {
        if !out.contains(&run.method) {
            out.push(run.method.clone());
        }
    }
    out
}

/// Mean Average Gap per method.
pub fn mean_gaps(r: &Results) -> Vec<(String, f64)> {
    methods(r)
        .into_iter()
        .map(|m| {
            let g: Vec<f64> = r
                .runs
                .iter()
                .filter(|x| x.method == m)
                .map(|x| x.avg_gap)
                .collect();
            (m, mean_std(&g).0)
        })
        .collect()
}

/// The markdown table.
pub fn table(r: &Results) -> String {
    let mut s = String::from("| method | FA | RA | TA | MIA | Avg. Gap | time (s) | time / Retrain | runs |\n|---|---|---|---|---|---|---|---|---|\n");
    if let (Some(o), Some(rt)) = (&r.original, &r.retrain) {
        let g = qmul_runtime::metrics::avg_gap(o, rt);
        s += &format!(
            "| original (no unlearning) | {:.2} | {:.2} | {:.2} | {:.2} | {g:.2} | - | - | 1 |\n",
            o.fa, o.ra, o.ta, o.mia
        );
        let t = r
            .retrain_seconds
            .map(|t| format!("{t:.0}"))
            .unwrap_or_else(|| "-".into());
        s += &format!(
            "| retrain | {:.2} | {:.2} | {:.2} | {:.2} | 0.00 | {t} | 1 | 1 |\n",
            rt.fa, rt.ra, rt.ta, rt.mia
        );
    }
    for m in methods(r) {
        let runs: Vec<&RunResult> = r.runs.iter().filter(|x| x.method == m).collect();
        let col =
            |f: &dyn Fn(&RunResult) -> f64| cell(&runs.iter().map(|x| f(x)).collect::<Vec<_>>());
        let ratio = match r.retrain_seconds {
            Some(t) if t > 0.0 => format!(
                "1/{:.1}",
                t / mean_std(&runs.iter().map(|x| x.seconds).collect::<Vec<_>>()).0
            ),
            _ => "-".into(),
        };
        s += &format!(
            "| {m} | {} | {} | {} | {} | {} | {} | {ratio} | {} |\n",
            col(&|x| x.scores.fa),
            col(&|x| x.scores.ra),
            col(&|x| x.scores.ta),
            col(&|x| x.scores.mia),
            col(&|x| x.avg_gap),
            col(&|x| x.seconds),
            runs.len()
        );
    }
    s += &verdict(r);
    s
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    model_file::write_atomic(&dir.join(name), bytes)
        .map_err(|e| format!("{}: {e}", dir.join(name).display()))
}

/// Writes `results.json`, `table.md` and `avg_gap.svg` into `dir`, each
/// atomically, so an interrupted write never leaves a torn results file.
pub fn save(dir: &Path, r: &Results) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?;
    write(dir, "results.json", &json)?;
    render(dir, r)
}

/// Writes only the views of the results, `table.md` and `avg_gap.svg`.
pub fn render(dir: &Path, r: &Results) -> Result<(), String> {
    write(dir, "table.md", markdown(r).as_bytes())?;
    write(dir, "avg_gap.svg", gap_chart(r).as_bytes())
}

/// Reads `dir/results.json`.
pub fn load(dir: &Path) -> Result<Results, String> {
    let path = dir.join("results.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The whole report: the method table, each metric's gap to Retrain, AGR's
/// per-epoch figures, the tuning trials.
pub fn markdown(r: &Results) -> String {
    if !r.requests.is_empty() {
        return sequence_table(r) + &codes_table(r);
    }
    table(r)
        + &gap_table(r)
        + &attack_table(r)
        + &codes_table(r)
        + &check_table(r)
        + &durability_table(r)
        + &agr_table(r)
        + &tuning_table(r)
}

/// Every membership attack's efficacy (mean over seeds) where the results
/// have them: the confidence attack of the Average Gap, then the entropy,
/// modified-entropy and loss-threshold attacks (`qmul_runtime::metrics::attacks`).
pub fn attack_table(r: &Results) -> String {
    if !r.runs.iter().any(|x| x.scores.attacks.is_some()) {
        return String::new();
    }
    let mut s = String::from(
        "\n## Membership attacks (efficacy %: forget samples called non-members; mean over seeds)\n\n\
         | method | confidence (MIA) | entropy | modified entropy | loss threshold |\n|---|---|---|---|---|\n",
    );
    let row = |name: &str, sc: &[&Scores]| {
        let col = |f: &dyn Fn(&Scores) -> Option<f64>| {
            let v: Vec<f64> = sc.iter().filter_map(|x| f(x)).collect();
            if v.is_empty() {
                "-".to_string()
            } else {
                cell(&v)
            }
        };
        format!(
            "| {name} | {} | {} | {} | {} |\n",
            col(&|x| Some(x.mia)),
            col(&|x| x.attacks.map(|a| a.entropy)),
            col(&|x| x.attacks.map(|a| a.m_entropy)),
            col(&|x| x.attacks.map(|a| a.loss))
        )
    };
    if let Some(o) = &r.original {
        s += &row("original", &[o]);
    }
    if let Some(rt) = &r.retrain {
        s += &row("retrain", &[rt]);
    }
    for m in methods(r) {
        let sc: Vec<&Scores> = r
            .runs
            .iter()
            .filter(|x| x.method == m)
            .map(|x| &x.scores)
            .collect();
        s += &row(&m, &sc);
    }
    s
}

/// Weight codes each epoch changed (mean over seeds).
pub fn codes_table(r: &Results) -> String {
    let mut s = String::new();
    for m in methods(r) {
        let runs: Vec<&RunResult> = r.runs.iter().filter(|x| x.method == m).collect();
        let n = runs.iter().map(|x| x.epochs.len()).max().unwrap_or(0);
        let per: Vec<String> = (0..n)
            .filter_map(|e| {
                let v: Vec<f64> = runs
                    .iter()
                    .filter_map(|x| x.epochs.get(e)?.codes_changed.map(|c| c as f64))
                    .collect();
                (!v.is_empty()).then(|| format!("{:.0}", mean_std(&v).0))
            })
            .collect();
        if per.is_empty() {
            continue;
        }
        if s.is_empty() {
            s += "\n## Weight codes changed per epoch (mean over seeds)\n\n| method | epoch 1, 2, ... |\n|---|---|\n";
        }
        s += &format!("| {m} | {} |\n", per.join(", "));
    }
    s
}

/// How the on-device deletion check (no Retrain) agrees with the Average Gap
/// (with a Retrain), over every run and tuning trial that recorded it. A gap
/// is "low" when the run closed at least half of the original's distance to
/// Retrain (AG at most half the original's AG), else "high".
pub fn check_table(r: &Results) -> String {
    let (Some(o), Some(rt)) = (&r.original, &r.retrain) else {
        return String::new();
    };
    let bar = qmul_runtime::metrics::avg_gap(o, rt) / 2.0;
    let all: Vec<(f64, &Verdict)> = r
        .runs
        .iter()
        .filter_map(|x| Some((x.avg_gap, x.check.as_ref()?)))
        .chain(
            r.tuning
                .iter()
                .filter_map(|t| Some((t.avg_gap, t.check.as_ref()?))),
        )
        .collect();
    if all.is_empty() {
        return String::new();
    }
    let count = |low: bool, pass: bool| {
        all.iter()
            .filter(|(g, v)| (*g <= bar) == low && v.passed == pass)
            .count()
    };
    let mut s = format!(
        "\n## Deletion check against the Average Gap ({} runs and trials; low gap: AG <= {bar:.2}, half the original's)\n\n\
         | | check passed | check failed |\n|---|---|---|\n",
        all.len()
    );
    s += &format!(
        "| low gap | {} | {} |\n",
        count(true, true),
        count(true, false)
    );
    s += &format!(
        "| high gap | {} | {} |\n",
        count(false, true),
        count(false, false)
    );
    for m in methods(r) {
        let runs: Vec<&RunResult> = r
            .runs
            .iter()
            .filter(|x| x.method == m && x.check.is_some())
            .collect();
        if !runs.is_empty() {
            let pass = runs
                .iter()
                .filter(|x| x.check.as_ref().is_some_and(|v| v.passed))
                .count();
            s += &format!("\n{m}: {pass} of {} runs pass", runs.len());
        }
    }
    s + "\n"
}

/// Each metric's distance to Retrain (mean over seeds) beside the setting each
/// method ran with and that setting's validation Average Gap: the table that
/// says *why* a method ranks where it does (under-forgetting shows in FA and
/// MIA, damage in RA and TA).
pub fn gap_table(r: &Results) -> String {
    let Some(rt) = &r.retrain else {
        return String::new();
    };
    let gaps = |s: &Scores| {
        [
            (s.fa - rt.fa).abs(),
            (s.ra - rt.ra).abs(),
            (s.ta - rt.ta).abs(),
            (s.mia - rt.mia).abs(),
        ]
    };
    let row = |g: [f64; 4]| format!("{:.2} | {:.2} | {:.2} | {:.2} |", g[0], g[1], g[2], g[3]);
    let mut s = String::from("\n## Gap to Retrain per metric (mean over seeds)\n\n| method | epochs, lr | validation AG | FA gap | RA gap | TA gap | MIA gap |\n|---|---|---|---|---|---|---|\n");
    if let Some(o) = &r.original {
        s += &format!("| original | - | - | {}\n", row(gaps(o)));
    }
    for m in methods(r) {
        let runs: Vec<&RunResult> = r.runs.iter().filter(|x| x.method == m).collect();
        let mut mean = [0.0; 4];
        for run in &runs {
            for (acc, g) in mean.iter_mut().zip(gaps(&run.scores)) {
                *acc += g / runs.len() as f64;
            }
        }
        let setting = runs.first().and_then(|x| x.setting());
        let (set, val) = match setting {
            Some((e, lr)) => {
                let trial = r
                    .tuning
                    .iter()
                    .find(|t| t.method == m && t.epochs == e && same_lr(t.lr, lr));
                (
                    format!("{e}, {}", lr_text(lr)),
                    trial.map_or("-".into(), |t| format!("{:.2}", t.avg_gap)),
                )
            }
            None => ("-".into(), "-".into()),
        };
        s += &format!("| {m} | {set} | {val} | {}\n", row(mean));
    }
    s
}

/// One line that reads the table: which approximate method has the lowest mean
/// Average Gap, whether it beats doing nothing, and where Q-MUL stands.
pub fn verdict(r: &Results) -> String {
    let gaps = mean_gaps(r);
    let Some((best, g)) = gaps.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
        return String::new();
    };
    let mut s = format!("\nLowest mean Average Gap: **{best}** ({g:.2})");
    if let (Some(o), Some(rt)) = (&r.original, &r.retrain) {
        let og = qmul_runtime::metrics::avg_gap(o, rt);
        let beats = if *g < og { "below" } else { "not below" };
        s += &format!(", {beats} the original model's {og:.2}");
    }
    if let Some((_, q)) = gaps.iter().find(|(m, _)| m == "qmul") {
        if best != "qmul" {
            s += &format!("; Q-MUL does not win this setting ({q:.2}, {:+.2})", q - g);
        }
    }
    s + ".\n"
}

/// AGR's per-epoch forget/retain gradient-norm ratio `G_f / G_r` and the forget
/// weight `w_f`, mean over seeds, for every method that used AGR: the numbers
/// that explain how hard the forget side was pushed.
pub fn agr_table(r: &Results) -> String {
    let mut s = String::new();
    for m in methods(r) {
        let runs: Vec<&RunResult> = r
            .runs
            .iter()
            .filter(|x| x.method == m && x.epochs.iter().any(|e| e.g_forget.is_some()))
            .collect();
        let Some(n) = runs.iter().map(|x| x.epochs.len()).max() else {
            continue;
        };
        if s.is_empty() {
            s += "\n## Adaptive Gradient Reweighting per epoch (mean over seeds)\n\n| method | epoch | G_f / G_r | w_f | w_r |\n|---|---|---|---|---|\n";
        }
        for e in 0..n {
            let at: Vec<&qmul_runtime::unlearn::EpochLog> =
                runs.iter().filter_map(|x| x.epochs.get(e)).collect();
            let ratio: Vec<f64> = at
                .iter()
                .filter_map(|l| Some(l.g_forget? / l.g_retain?))
                .collect();
            let wf: Vec<f64> = at.iter().map(|l| l.w_forget as f64).collect();
            let wr: Vec<f64> = at.iter().map(|l| l.w_retain as f64).collect();
            s += &format!(
                "| {m} | {} | {:.2} | {:.3} | {:.3} |\n",
                e + 1,
                mean_std(&ratio).0,
                mean_std(&wf).0,
                mean_std(&wr).0
            );
        }
    }
    s
}

/// A bar chart of the mean Average Gap per method (plus the original model), as SVG.
pub fn gap_chart(r: &Results) -> String {
    let mut bars = mean_gaps(r);
    if let (Some(o), Some(rt)) = (&r.original, &r.retrain) {
        bars.insert(
            0,
            ("original".into(), qmul_runtime::metrics::avg_gap(o, rt)),
        );
    }
    let (w, bar_h, gap, left) = (640.0, 26.0, 10.0, 110.0);
    let h = 50.0 + bars.len() as f64 * (bar_h + gap);
    let max = bars.iter().map(|b| b.1).fold(1e-9, f64::max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <text x=\"{left}\" y=\"20\" font-weight=\"bold\">Average Gap to Retrain (lower is better)</text>\n"
    );
    for (i, (name, v)) in bars.iter().enumerate() {
        let y = 35.0 + i as f64 * (bar_h + gap);
        let len = (w - left - 80.0) * v / max;
        let color = if name == "qmul" {
            "#2b6cb0"
        } else if name == "original" {
            "#a0a0a0"
        } else {
            "#e07b39"
        };
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text>\n<rect x=\"{left}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bar_h}\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"{}\">{v:.2}</text>\n",
            left - 8.0,
            y + bar_h * 0.7,
            left + len + 6.0,
            y + bar_h * 0.7
        );
    }
    s + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack, code-change and deletion-check tables from hand-made runs.
    #[test]
    fn attack_codes_and_check_tables() {
        let sc = |fa, e| Scores {
            fa,
            ra: 99.0,
            ta: 90.0,
            mia: 10.0,
            attacks: Some(qmul_runtime::metrics::Attacks {
                entropy: e,
                m_entropy: 2.0 * e,
                loss: 3.0 * e,
            }),
        };
        let v = |passed| Verdict {
            passed,
            scenario: "random".into(),
            detail: String::new(),
            forced: false,
        };
        let mut r = Results {
            original: Some(sc(100.0, 1.0)),
            retrain: Some(sc(90.0, 5.0)),
            ..Default::default()
        };
        // Original AG 2.5: the low-gap bar is 1.25.
        for (seed, fa, e, pass) in [(0, 92.0, 4.0, true), (1, 98.0, 6.0, false)] {
            r.runs.push(RunResult {
                method: "qmul".into(),
                seed,
                scores: sc(fa, e),
                avg_gap: (fa - 90.0) / 4.0,
                seconds: 1.0,
                config: Default::default(),
                epochs: vec![qmul_runtime::unlearn::EpochLog {
                    codes_changed: Some(100 * (seed + 1)),
                    ..Default::default()
                }],
                check: Some(v(pass)),
                request: None,
                quantized: None,
            });
        }
        let a = attack_table(&r);
        assert!(
            a.contains("| retrain | 10.00 | 5.00 | 10.00 | 15.00 |"),
            "{a}"
        );
        assert!(a.contains("| qmul | 10.00 ± 0.00 | 5.00 ± 1.41 |"), "{a}");
        let c = codes_table(&r);
        assert!(c.contains("| qmul | 150 |"), "{c}");
        let k = check_table(&r);
        assert!(
            k.contains("| low gap | 1 | 0 |") && k.contains("| high gap | 0 | 1 |"),
            "{k}"
        );
        assert!(k.contains("qmul: 1 of 2 runs pass"), "{k}");
    }

    #[test]
    fn table_has_mean_and_std_over_seeds() {
        let sc = |fa| Scores {
            fa,
            ra: 99.0,
            ta: 90.0,
            mia: 10.0,
            attacks: None,
        };
        let mut r = Results {
            original: Some(sc(100.0)),
            retrain: Some(sc(90.0)),
            ..Default::default()
        };
        for (seed, fa) in [(0, 92.0), (1, 94.0)] {
            r.runs.push(RunResult {
                method: "qmul".into(),
                seed,
                scores: sc(fa),
                avg_gap: (fa - 90.0) / 4.0,
                seconds: 10.0,
                config: Default::default(),
                epochs: vec![],
                check: None,
                request: None,
                quantized: None,
            });
        }
        let t = table(&r);
        assert!(t.contains("| qmul | 93.00 ± 1.41 |"), "{t}");
        assert!(
            t.contains("| original (no unlearning) | 100.00 | 99.00 | 90.00 | 10.00 | 2.50 |"),
            "{t}"
        );
        assert!(gap_chart(&r).contains("<svg") && gap_chart(&r).contains("qmul"));
        assert!(
            t.contains(
                "Lowest mean Average Gap: **qmul** (0.75), below the original model's 2.50."
            ),
            "{t}"
        );
        assert!(agr_table(&r).is_empty());
        assert_eq!(lr_text(0.049999997), "0.05");
        assert_eq!(lr_text(5e-4 * 0.99999994), "0.0005");
        r.retrain_seconds = Some(50.0);
        r.runs[0].epochs = vec![qmul_runtime::unlearn::EpochLog {
            epoch: 0,
            g_forget: Some(6.0),
            g_retain: Some(2.0),
            w_forget: 0.25,
            w_retain: 0.75,
            ..Default::default()
        }];
        assert!(
            table(&r).contains("| 10.00 ± 0.00 | 1/5.0 | 2 |"),
            "{}",
            table(&r)
        );
        assert!(
            agr_table(&r).contains("| qmul | 1 | 3.00 | 0.250 | 0.750 |"),
            "{}",
            agr_table(&r)
        );
        assert_eq!(mean_gaps(&r), vec![("qmul".to_string(), 0.75)]);
        // Per-metric gaps: FA 92 and 94 against Retrain's 90 average to 3.
        r.runs[0].config = serde_json::json!({"epochs": 2, "lr": 0.05f32});
        r.tuning.push(TuneTrial {
            method: "qmul".into(),
            epochs: 2,
            lr: 0.05,
            scores: sc(91.0),
            avg_gap: 0.25,
            seconds: 1.0,
            check: None,
        });
        let g = gap_table(&r);
        assert!(
            g.contains("| original | - | - | 10.00 | 0.00 | 0.00 | 0.00 |"),
            "{g}"
        );
        assert!(
            g.contains("| qmul | 2, 0.05 | 0.25 | 3.00 | 0.00 | 0.00 | 0.00 |"),
            "{g}"
        );
        assert!(markdown(&r).contains("## Gap to Retrain per metric"));
        // A results file read back and rewritten keeps every figure bit for bit.
        r.runs[0].scores.ra = 98.91666666666667;
        let json = serde_json::to_string(&r).unwrap();
        let back: Results = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }
}
