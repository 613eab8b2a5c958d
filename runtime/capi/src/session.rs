//! Sessions: sets, prediction, unlearning with progress and cancellation,
//! verification, evaluation and the crash-safe commit with its receipt.
//!
//! A session is used by one thread at a time (a second thread's call while one
//! runs fails with `QMUL_ERR_INVALID_ARGUMENT` instead of waiting), except
//! `qmul_session_cancel`, which any thread may call at any time.

use super::data::qmul_dataset;
use super::model::qmul_model;
use super::{
    arg, fill_text, free_handle, give, guard, out, read_params, slice, slice_mut, text,
    write_result,
};
use qmul_runtime::data::Dataset;
use qmul_runtime::error::{Error, ErrorKind, Result};
use qmul_runtime::session::{pixels_from_f32, Canceller, CommitTarget, Session, Which};
use qmul_runtime::unlearn::{Config, Method, Phase, Relabel, Schedule, Variant};
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Mutex, MutexGuard, TryLockError};

/// A session (opaque).
pub struct qmul_session {
    inner: Mutex<Session>,
    cancel: Canceller,
}

/// Session settings; get them from `qmul_session_default_params`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct qmul_session_params {
    pub struct_size: u32,
    /// The most memory the session's work may plan to use, in bytes
    /// (`UINT64_MAX`: unlimited, the default).
    pub budget_bytes: u64,
}

/// Unlearning methods.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum qmul_method {
    /// Q-MUL: Similar Labels + Adaptive Gradient Reweighting.
    QMUL_METHOD_QMUL = 0,
    /// Random Labels.
    QMUL_METHOD_RL = 1,
    /// SalUn: Random Labels through a saliency mask.
    QMUL_METHOD_SALUN = 2,
    /// Fine-tuning on the retain set.
    QMUL_METHOD_FT = 3,
    /// Gradient ascent on the forget set.
    QMUL_METHOD_GA = 4,
    /// l1-sparse fine-tuning.
    QMUL_METHOD_L1 = 5,
    /// Ablation: Random Labels with Similar Labels instead.
    QMUL_METHOD_RL_SL = 6,
    /// Ablation: Random Labels with AGR.
    QMUL_METHOD_RL_AGR = 7,
}

/// One unlearning request; get defaults from `qmul_unlearn_default_params`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct qmul_unlearn_params {
    pub struct_size: u32,
    /// A `qmul_method` value.
    pub method: i32,
    pub epochs: u32,
    pub lr: f32,
    /// Batch size; 0 picks the largest (up to 256) that fits the budget.
    pub batch: u32,
    pub seed: u64,
    pub momentum: f32,
    pub weight_decay: f32,
    /// 0: the reference's choice (sequential for <= 10 classes, else mixed),
    /// 1 sequential, 2 mixed.
    pub variant: i32,
    /// SalUn: share of parameters the saliency mask freezes, in [0, 1).
    pub sparsity: f32,
    /// l1-sparse: initial penalty weight.
    pub l1_gamma: f32,
    /// Learning-rate schedule: 0 the reference code's cosine stepped once per
    /// epoch (`CosineAnnealingLR(T_max = epochs)`, the default), 1 cosine to
    /// zero updated every step. (Added after the first version: a caller whose
    /// `struct_size` ends before it gets 0.)
    pub schedule: i32,
}

/// Progress of an unlearning run, passed to the callback after every batch.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct qmul_progress {
    pub struct_size: u32,
    /// 0 training, 1 Similar Labels, 2 AGR gradient norms, 3 SalUn saliency.
    pub phase: i32,
    pub epoch: u32,
    pub epochs: u32,
    /// Training steps done and in all.
    pub step: u64,
    pub steps: u64,
    /// Batches done and in all of the current pass.
    pub batch: u64,
    pub batches: u64,
}

/// Called after every batch; return non-zero to cancel the run.
pub type qmul_progress_fn =
    Option<unsafe extern "C" fn(progress: *const qmul_progress, user_data: *mut c_void) -> c_int>;

/// What an unlearning run did. Set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct qmul_unlearn_result {
    pub struct_size: u32,
    /// The batch used (the automatic choice when 0 was asked for).
    pub batch: u32,
    pub epochs: u32,
    pub seconds: f64,
    /// Bytes the session held before the run.
    pub resident_bytes: u64,
    /// The run's planned peak above that.
    pub planned_bytes: u64,
    /// Its measured peak above that (`UINT64_MAX` when not measured).
    pub measured_bytes: u64,
    pub budget_bytes: u64,
}

/// FA and MIA-efficacy on the forget set before and after, in percent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct qmul_verification {
    pub struct_size: u32,
    /// 1 when MIA was computed (it needs retain and test sets); else the MIA fields are NaN.
    pub has_mia: i32,
    pub fa_before: f64,
    pub fa_after: f64,
    pub mia_before: f64,
    pub mia_after: f64,
    /// 1 when the deletion check passed (see docs/c-api.md for the criterion).
    /// (This and `verdict` were added after the first version; a caller whose
    /// `struct_size` ends before them does not get them.)
    pub passed: i32,
    /// The check's scenario and figures, NUL-terminated (cut to fit).
    pub verdict: [c_char; 256],
}

/// FA, RA, TA and MIA-efficacy, in percent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct qmul_scores {
    pub struct_size: u32,
    pub fa: f64,
    pub ra: f64,
    pub ta: f64,
    /// The confidence attack's MIA efficacy (the one of the Average Gap).
    pub mia: f64,
    /// The entropy, modified-entropy and loss-threshold attacks' efficacies
    /// (same shadow protocol). Added after the first version: a caller whose
    /// `struct_size` ends before them does not get them.
    pub mia_entropy: f64,
    pub mia_m_entropy: f64,
    pub mia_loss: f64,
}

/// Where a commit goes; get defaults from `qmul_commit_default_params`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct qmul_commit_params {
    pub struct_size: u32,
    /// Model path to replace; NULL: the path the model was opened from.
    pub model_path: *const c_char,
    /// Receipt log to append to; NULL: no receipt.
    pub receipts_path: *const c_char,
    /// The caller's name for the request (a ticket id), recorded in the receipt; may be NULL.
    pub request: *const c_char,
    /// 1: commit even if the deletion check fails (the receipt records that
    /// it was forced); 0: such a commit fails with `QMUL_ERR_NOT_FORGOTTEN`.
    /// (Added after the first version: a caller whose `struct_size` ends
    /// before it gets 0.)
    pub force: i32,
}

/// What a commit wrote. Set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct qmul_commit_result {
    pub struct_size: u32,
    /// Sequence number of the receipt written (0: none).
    pub receipt_seq: u64,
    pub model_before_sha256: [c_char; 65],
    pub model_after_sha256: [c_char; 65],
}

const SESSION_PARAMS_V1: usize = std::mem::size_of::<qmul_session_params>();
const UNLEARN_PARAMS_V1: usize = std::mem::size_of::<qmul_unlearn_params>();
const COMMIT_PARAMS_V1: usize = std::mem::offset_of!(qmul_commit_params, force);

/// Default session settings: no budget limit.
#[no_mangle]
pub extern "C" fn qmul_session_default_params() -> qmul_session_params {
    qmul_session_params {
        struct_size: SESSION_PARAMS_V1 as u32,
        budget_bytes: u64::MAX,
    }
}

fn method_of(code: i32, variant: Variant, sparsity: f32, l1_gamma: f32) -> Result<Method> {
    use qmul_method::*;
    let relabel = |relabel, agr| Method::Relabel {
        relabel,
        agr,
        variant,
    };
    Ok(match code {
        x if x == QMUL_METHOD_QMUL as i32 => relabel(Relabel::Similar, true),
        x if x == QMUL_METHOD_RL as i32 => relabel(Relabel::Random, false),
        x if x == QMUL_METHOD_SALUN as i32 => Method::Salun { sparsity, variant },
        x if x == QMUL_METHOD_FT as i32 => Method::Ft,
        x if x == QMUL_METHOD_GA as i32 => Method::Ga,
        x if x == QMUL_METHOD_L1 as i32 => Method::L1 { gamma: l1_gamma },
        x if x == QMUL_METHOD_RL_SL as i32 => relabel(Relabel::Similar, false),
        x if x == QMUL_METHOD_RL_AGR as i32 => relabel(Relabel::Random, true),
        m => {
            return Err(Error::invalid(format!(
                "unknown method {m} (see qmul_method)"
            )))
        }
    })
}

/// The default settings of `method` (a `qmul_method`): the reference code's
/// epochs, the learning rate qmul's tuned tables chose for the method (Q-MUL
/// 0.05; see `Method::default_schedule`), batch 64 (the tables' batch; 0
/// asks for the largest up to 256 that the budget allows), momentum 0.9,
/// weight decay 5e-4, the reference per-epoch cosine.
#[no_mangle]
pub extern "C" fn qmul_unlearn_default_params(method: i32) -> qmul_unlearn_params {
    let m = method_of(method, Variant::Sequential, 0.5, 5e-4).unwrap_or(Method::Ft);
    let p = Config::new(m);
    qmul_unlearn_params {
        struct_size: UNLEARN_PARAMS_V1 as u32,
        method,
        epochs: p.epochs as u32,
        lr: p.lr,
        batch: p.batch as u32,
        seed: p.seed,
        momentum: p.momentum,
        weight_decay: p.weight_decay,
        variant: 0,
        sparsity: 0.5,
        l1_gamma: 5e-4,
        schedule: 0,
    }
}

/// Default commit settings: the opened path, no receipt.
#[no_mangle]
pub extern "C" fn qmul_commit_default_params() -> qmul_commit_params {
    qmul_commit_params {
        struct_size: std::mem::size_of::<qmul_commit_params>() as u32,
        model_path: std::ptr::null(),
        receipts_path: std::ptr::null(),
        request: std::ptr::null(),
        force: 0,
    }
}

impl qmul_session {
    fn lock(&self) -> Result<MutexGuard<'_, Session>> {
        match self.inner.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::WouldBlock) => Err(Error::invalid(
                "the session is in use by another thread (a session is used by one thread at a time)",
            )),
            // A panic during an earlier call was caught and reported; the
            // session's state is still consistent (results replace state only
            // at the end of an operation).
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        }
    }
}

/// Opens a session on `model` (which it keeps a reference to). `params` may
/// be NULL for the defaults.
///
/// # Safety
/// `model` is a live handle; `params` is NULL or valid; `out_session` is writable.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_open(
    model: *const qmul_model,
    params: *const qmul_session_params,
    out_session: *mut *mut qmul_session,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let slot = unsafe { out(out_session, "out_session")? };
        *slot = std::ptr::null_mut();
        // SAFETY: the caller's contract.
        let m = unsafe { arg(model, "model")? };
        // SAFETY: the caller's contract.
        let p = unsafe { read_params(params, qmul_session_default_params(), 16, "params")? };
        let s = Session::new(m.0.clone(), p.budget_bytes)?;
        let cancel = s.canceller();
        give(
            slot,
            qmul_session {
                inner: Mutex::new(s),
                cancel,
            },
        );
        Ok(())
    })
}

/// Releases a session and sets `*session` to NULL. NULL is fine. Must not be
/// called while another thread uses the session.
///
/// # Safety
/// `session` is NULL, or points to NULL or to a handle from `qmul_session_open`.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_free(session: *mut *mut qmul_session) {
    // SAFETY: the caller's contract.
    let _ = std::panic::catch_unwind(|| unsafe { free_handle(session) });
}

/// Stores a set from buffers (`n` NHWC u8 images, `images_len` being
/// `n * h * w * c`, and `n` labels) with one of the session's setters.
///
/// # Safety
/// `session` is a live handle; `images` holds `images_len` bytes and `labels` `n` values.
unsafe fn set_buffers(
    session: *const qmul_session,
    images: *const u8,
    images_len: usize,
    labels: *const u32,
    n: usize,
    set: fn(&mut Session, &[u8], &[u32]) -> Result<()>,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let (s, i, l) = unsafe {
            (
                arg(session, "session")?,
                slice(images, images_len, "images")?,
                slice(labels, n, "labels")?,
            )
        };
        set(&mut *s.lock()?, i, l)
    })
}

/// The samples to forget, from buffers: `n` NHWC u8 images
/// (`images_len == n * h * w * c`) and `n` labels. The data are copied. A new
/// forget or retain set discards an uncommitted unlearning result.
///
/// # Safety
/// `session` is a live handle; `images` holds `images_len` bytes and `labels` `n` values.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_set_forget(
    session: *const qmul_session,
    images: *const u8,
    images_len: usize,
    labels: *const u32,
    n: usize,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe { set_buffers(session, images, images_len, labels, n, Session::set_forget) }
}

/// The data to keep, from buffers (as `qmul_session_set_forget`).
///
/// # Safety
/// As `qmul_session_set_forget`.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_set_retain(
    session: *const qmul_session,
    images: *const u8,
    images_len: usize,
    labels: *const u32,
    n: usize,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe { set_buffers(session, images, images_len, labels, n, Session::set_retain) }
}

/// Held-out data (TA, and the non-members of the membership attack), from buffers.
///
/// # Safety
/// As `qmul_session_set_forget`.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_set_test(
    session: *const qmul_session,
    images: *const u8,
    images_len: usize,
    labels: *const u32,
    n: usize,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe { set_buffers(session, images, images_len, labels, n, Session::set_test) }
}

/// Stores a set chosen by `n` indices into a data set (`indices` NULL and `n`
/// 0: no list, which the retain and test setters read as "all of it") with one
/// of the session's setters.
///
/// # Safety
/// `session` and `ds` are live handles; `indices` holds `n` values.
unsafe fn set_indices(
    session: *const qmul_session,
    ds: *const qmul_dataset,
    indices: *const usize,
    n: usize,
    set: impl FnOnce(&mut Session, &Dataset, Option<&[usize]>) -> Result<()>,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let (s, d, idx) = unsafe {
            (
                arg(session, "session")?,
                arg(ds, "ds")?,
                slice(indices, n, "indices")?,
            )
        };
        let list = (!indices.is_null() || n > 0).then_some(idx);
        set(&mut *s.lock()?, &d.0, list)
    })
}

/// The forget set as `n` distinct indices into a data set read from a file.
///
/// # Safety
/// `session` and `ds` are live handles; `indices` holds `n` values.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_set_forget_indices(
    session: *const qmul_session,
    ds: *const qmul_dataset,
    indices: *const usize,
    n: usize,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        set_indices(session, ds, indices, n, |s, d, i| {
            s.set_forget_indices(d, i.unwrap_or(&[]))
        })
    }
}

/// The retain set as indices into a data set (`indices` NULL and `n` 0: all of it).
///
/// # Safety
/// `session` and `ds` are live handles; `indices` holds `n` values.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_set_retain_indices(
    session: *const qmul_session,
    ds: *const qmul_dataset,
    indices: *const usize,
    n: usize,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe { set_indices(session, ds, indices, n, Session::set_retain_indices) }
}

/// The retain set as every sample of `ds` not in the forget set (which must
/// have been set by indices into `ds`). A forget set covering all of `ds` is
/// an error.
///
/// # Safety
/// `session` and `ds` are live handles.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_set_retain_rest(
    session: *const qmul_session,
    ds: *const qmul_dataset,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let (s, d) = unsafe { (arg(session, "session")?, arg(ds, "ds")?) };
        s.lock()?.set_retain_rest(&d.0)
    })
}

/// The test set as indices into a data set (`indices` NULL and `n` 0: all of it).
///
/// # Safety
/// `session` and `ds` are live handles; `indices` holds `n` values.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_set_test_indices(
    session: *const qmul_session,
    ds: *const qmul_dataset,
    indices: *const usize,
    n: usize,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe { set_indices(session, ds, indices, n, Session::set_test_indices) }
}

/// Predictions into caller memory: `logits` (`n * classes` floats; may be
/// NULL with length 0) and `classes` (`n` values; may be NULL with length 0).
fn predict_into(
    s: &qmul_session,
    pixels: &[u8],
    n: usize,
    logits: &mut [f32],
    classes: &mut [u32],
) -> Result<()> {
    let sess = s.lock()?;
    let k = sess.model().model().classes();
    let shape = sess.model().model().graph.input_shape();
    if n == 0 {
        return Err(Error::invalid("n is 0: nothing to predict"));
    }
    if n.checked_mul(shape.len()) != Some(pixels.len()) {
        return Err(Error::new(
            ErrorKind::BufferSize,
            format!(
                "{n} images of {}x{}x{} need {} values, the buffer has {}",
                shape.h,
                shape.w,
                shape.c,
                n.saturating_mul(shape.len()),
                pixels.len()
            ),
        ));
    }
    if !logits.is_empty() && logits.len() != n * k {
        return Err(Error::new(
            ErrorKind::BufferSize,
            format!(
                "logits holds {} floats; {n} images x {k} classes need {}",
                logits.len(),
                n * k
            ),
        ));
    }
    if !classes.is_empty() && classes.len() != n {
        return Err(Error::new(
            ErrorKind::BufferSize,
            format!("classes holds {} values; {n} are needed", classes.len()),
        ));
    }
    let (p, _) = sess.predict(pixels, n)?;
    if !logits.is_empty() {
        logits.copy_from_slice(&p.logits);
    }
    if !classes.is_empty() {
        classes.copy_from_slice(&p.classes);
    }
    Ok(())
}

/// Predicts `n` u8 images (NHWC, `images_len == n * h * w * c`).
///
/// # Safety
/// `session` is a live handle; each buffer holds its stated length.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_predict_u8(
    session: *const qmul_session,
    images: *const u8,
    images_len: usize,
    n: usize,
    logits: *mut f32,
    logits_len: usize,
    classes: *mut u32,
    classes_len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let (s, px, lg, cl) = unsafe {
            (
                arg(session, "session")?,
                slice(images, images_len, "images")?,
                slice_mut(logits, logits_len, "logits")?,
                slice_mut(classes, classes_len, "classes")?,
            )
        };
        predict_into(s, px, n, lg, cl)
    })
}

/// Predicts `n` f32 images whose values are pixels in [0, 1] (rounded to the
/// 256 levels the model takes); NaN, infinities and values outside are errors.
///
/// # Safety
/// `session` is a live handle; each buffer holds its stated length.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_predict_f32(
    session: *const qmul_session,
    images: *const f32,
    images_len: usize,
    n: usize,
    logits: *mut f32,
    logits_len: usize,
    classes: *mut u32,
    classes_len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let (s, px, lg, cl) = unsafe {
            (
                arg(session, "session")?,
                slice(images, images_len, "images")?,
                slice_mut(logits, logits_len, "logits")?,
                slice_mut(classes, classes_len, "classes")?,
            )
        };
        let pixels = pixels_from_f32(px)?;
        predict_into(s, &pixels, n, lg, cl)
    })
}

fn phase_code(p: Phase) -> i32 {
    match p {
        Phase::Train => 0,
        Phase::SimilarLabels => 1,
        Phase::GradientNorms => 2,
        Phase::Saliency => 3,
    }
}

/// Unlearns the forget set from the session's model. `progress` (may be NULL)
/// is called with `user_data` after every batch of every pass; a non-zero
/// return cancels, as does `qmul_session_cancel`. On any error (cancellation
/// included) the model, its file and the receipt log are unchanged. The result
/// waits in the session for `qmul_session_commit`; starting another run
/// discards it.
///
/// # Safety
/// `session` is a live handle; `params` is NULL or valid; `result` is NULL or
/// points to a struct of its `struct_size`; `progress` is NULL or callable.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_unlearn(
    session: *const qmul_session,
    params: *const qmul_unlearn_params,
    progress: qmul_progress_fn,
    user_data: *mut c_void,
    result: *mut qmul_unlearn_result,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { arg(session, "session")? };
        // SAFETY: the caller's contract.
        let p = unsafe {
            read_params(
                params,
                qmul_unlearn_default_params(qmul_method::QMUL_METHOD_QMUL as i32),
                16,
                "params",
            )?
        };
        let mut sess = s.lock()?;
        let classes = sess.model().model().classes();
        let variant = match p.variant {
            0 => Variant::default_for(classes),
            1 => Variant::Sequential,
            2 => Variant::Mixed,
            v => return Err(Error::invalid(format!("variant {v}: use 0, 1 or 2"))),
        };
        let method = method_of(p.method, variant, p.sparsity, p.l1_gamma)?;
        let mut up = Config::new(method);
        up.epochs = p.epochs as usize;
        up.lr = p.lr;
        up.batch = p.batch as usize;
        up.seed = p.seed;
        up.momentum = p.momentum;
        up.weight_decay = p.weight_decay;
        up.schedule = match p.schedule {
            0 => Schedule::CosinePerEpoch,
            1 => Schedule::CosinePerStep,
            s => {
                return Err(Error::invalid(format!(
                    "schedule {s}: use 0 (per epoch) or 1 (per step)"
                )))
            }
        };
        let mut cb = |pr: &qmul_runtime::session::Progress| match progress {
            None => true,
            Some(f) => {
                let c = qmul_progress {
                    struct_size: std::mem::size_of::<qmul_progress>() as u32,
                    phase: phase_code(pr.phase),
                    epoch: pr.epoch as u32,
                    epochs: pr.epochs as u32,
                    step: pr.step as u64,
                    steps: pr.steps as u64,
                    batch: pr.batch as u64,
                    batches: pr.batches as u64,
                };
                // SAFETY: the caller's callback, with a pointer valid for the call.
                unsafe { f(&c, user_data) == 0 }
            }
        };
        let r = sess.unlearn(&up, &mut cb)?;
        let v = qmul_unlearn_result {
            struct_size: std::mem::size_of::<qmul_unlearn_result>() as u32,
            batch: r.config.batch as u32,
            epochs: r.config.epochs as u32,
            seconds: r.seconds,
            resident_bytes: r.memory.resident,
            planned_bytes: r.memory.planned,
            measured_bytes: r.memory.measured.unwrap_or(u64::MAX),
            budget_bytes: r.memory.budget,
        };
        // SAFETY: the caller's contract.
        unsafe { write_result(result, v, 8, "result") }
    })
}

/// Devices a session's unlearning can train on.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum qmul_device {
    /// The CPU (the default).
    QMUL_DEVICE_CPU = 0,
    /// A GPU through wgpu (Vulkan, Metal, DX12).
    QMUL_DEVICE_WGPU = 1,
    /// An NVIDIA GPU through CUDA.
    QMUL_DEVICE_CUDA = 2,
}

/// Chooses where the session's unlearning trains (a `qmul_device`): the
/// model, gradients and optimiser state stay on that device for the whole
/// run; evaluation, verification and the memory plan stay on the CPU. A
/// library built without the `gpu` feature (`cuda` for CUDA), or a machine
/// without the device, gives `QMUL_ERR_UNSUPPORTED` and keeps the device
/// it had.
///
/// # Safety
/// `session` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_set_device(session: *const qmul_session, device: i32) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { arg(session, "session")? };
        let d = open_device(device)?;
        s.lock()?.set_device(d);
        Ok(())
    })
}

fn open_device(device: i32) -> Result<qmul_runtime::device::Device> {
    use qmul_runtime::device::Device;
    let name = match device {
        x if x == qmul_device::QMUL_DEVICE_CPU as i32 => return Ok(Device::Cpu),
        x if x == qmul_device::QMUL_DEVICE_WGPU as i32 => "wgpu",
        x if x == qmul_device::QMUL_DEVICE_CUDA as i32 => "cuda",
        x => {
            return Err(Error::invalid(format!(
                "unknown device {x} (see qmul_device)"
            )))
        }
    };
    open_gpu(name)
}

#[cfg(feature = "gpu")]
fn open_gpu(name: &str) -> Result<qmul_runtime::device::Device> {
    use qmul_kernels::gpu::{Backend, Gpu};
    let backend = Backend::parse(name).ok_or_else(|| Error::invalid("unknown backend"))?;
    Gpu::open(backend)
        .map(|g| qmul_runtime::device::Device::Gpu(std::sync::Arc::new(g)))
        .map_err(|e| Error::new(ErrorKind::Unsupported, format!("{name}: {e}")))
}

#[cfg(not(feature = "gpu"))]
fn open_gpu(name: &str) -> Result<qmul_runtime::device::Device> {
    Err(Error::new(
        ErrorKind::Unsupported,
        format!("{name}: this library was built without GPU support (the qmul-capi feature `gpu`, or `cuda`)"),
    ))
}

/// Asks the session's unlearning in progress to stop at its next batch. Any
/// thread may call it at any time; without a run in progress it has no effect.
///
/// # Safety
/// `session` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_cancel(session: *const qmul_session) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { arg(session, "session")? };
        s.cancel.cancel();
        Ok(())
    })
}

/// FA and MIA on the forget set before and after the uncommitted result.
///
/// # Safety
/// `session` is a live handle; `out_v` points to a struct of its `struct_size`.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_verify(
    session: *const qmul_session,
    out_v: *mut qmul_verification,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { arg(session, "session")? };
        if out_v.is_null() {
            return Err(super::null("out_v"));
        }
        let v = s.lock()?.verify()?;
        let mut r = qmul_verification {
            struct_size: std::mem::size_of::<qmul_verification>() as u32,
            has_mia: v.before.mia.is_some() as i32,
            fa_before: v.before.fa,
            fa_after: v.after.fa,
            mia_before: v.before.mia.unwrap_or(f64::NAN),
            mia_after: v.after.mia.unwrap_or(f64::NAN),
            passed: v.verdict.passed as i32,
            verdict: [0; 256],
        };
        fill_text(
            &mut r.verdict,
            &format!("{}: {}", v.verdict.scenario, v.verdict.detail),
        );
        // SAFETY: the caller's contract.
        unsafe { write_result(out_v, r, 8, "out_v") }
    })
}

/// FA, RA, TA and MIA of the current model (`which` 0) or the uncommitted
/// result (1), on the session's forget, retain and test sets.
///
/// # Safety
/// `session` is a live handle; `out_s` points to a struct of its `struct_size`.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_evaluate(
    session: *const qmul_session,
    which: i32,
    out_s: *mut qmul_scores,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { arg(session, "session")? };
        if out_s.is_null() {
            return Err(super::null("out_s"));
        }
        let w = match which {
            0 => Which::Current,
            1 => Which::Unlearned,
            o => {
                return Err(Error::invalid(format!(
                    "which {o}: use 0 (current) or 1 (unlearned)"
                )))
            }
        };
        let (sc, _) = s.lock()?.evaluate(w)?;
        let r = qmul_scores {
            struct_size: std::mem::size_of::<qmul_scores>() as u32,
            fa: sc.fa,
            ra: sc.ra,
            ta: sc.ta,
            mia: sc.mia,
            mia_entropy: sc.attacks.map_or(f64::NAN, |a| a.entropy),
            mia_m_entropy: sc.attacks.map_or(f64::NAN, |a| a.m_entropy),
            mia_loss: sc.attacks.map_or(f64::NAN, |a| a.loss),
        };
        // SAFETY: the caller's contract.
        unsafe { write_result(out_s, r, 8, "out_s") }
    })
}

/// Writes the uncommitted result to the model path crash-safely (temporary
/// file, flush, rename, directory flush) and, with a receipt log, appends its
/// deletion receipt (the log is verified first). Afterwards the session works
/// on the committed model. `params` may be NULL (the opened path, no receipt);
/// `result` may be NULL.
///
/// # Safety
/// `session` is a live handle; `params` is NULL or valid with NULL or
/// NUL-terminated strings; `result` is NULL or points to a struct of its `struct_size`.
#[no_mangle]
pub unsafe extern "C" fn qmul_session_commit(
    session: *const qmul_session,
    params: *const qmul_commit_params,
    result: *mut qmul_commit_result,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { arg(session, "session")? };
        // SAFETY: the caller's contract.
        let p = unsafe {
            read_params(
                params,
                qmul_commit_default_params(),
                COMMIT_PARAMS_V1,
                "params",
            )?
        };
        let opt = |ptr: *const c_char, what: &str| -> Result<Option<&str>> {
            if ptr.is_null() {
                Ok(None)
            } else {
                // SAFETY: the caller's contract.
                unsafe { text(ptr, what).map(Some) }
            }
        };
        let model_path = opt(p.model_path, "model_path")?.map(std::path::Path::new);
        let receipts = opt(p.receipts_path, "receipts_path")?.map(std::path::Path::new);
        let request = opt(p.request, "request")?;
        let force = match p.force {
            0 => false,
            1 => true,
            f => return Err(Error::invalid(format!("force {f}: use 0 or 1"))),
        };
        let c = s.lock()?.commit(&CommitTarget {
            model_path,
            receipts,
            request,
            force,
        })?;
        let mut r = qmul_commit_result {
            struct_size: std::mem::size_of::<qmul_commit_result>() as u32,
            receipt_seq: c.receipt.as_ref().map_or(0, |r| r.seq),
            model_before_sha256: [0; 65],
            model_after_sha256: [0; 65],
        };
        fill_text(&mut r.model_before_sha256, &c.model_before_sha256);
        fill_text(&mut r.model_after_sha256, &c.model_after_sha256);
        // SAFETY: the caller's contract.
        unsafe { write_result(result, r, 8, "result") }
    })
}
