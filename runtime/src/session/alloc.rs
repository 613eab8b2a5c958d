//! Measuring memory: a global allocator that counts the bytes the process holds
//! and the highest count since a probe started, so a session can report the
//! peak its work actually reached beside the peak it planned.
//!
//! It wraps the system allocator and adds two relaxed atomic updates per
//! allocation (a training step makes a few hundred). It is installed by the
//! `count-alloc` feature (on by default); a Rust program with its own global
//! allocator turns the feature off, and measured peaks are then reported as
//! unknown. The count is process-wide: allocations of other threads during an
//! operation are included, so a measured peak is never below the operation's own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The counting allocator (see the module comment).
pub struct Counting;

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters never influence what is returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's arguments.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[cfg(feature = "count-alloc")]
#[global_allocator]
static GLOBAL: Counting = Counting;

/// Whether allocations are being counted in this build.
pub fn counting() -> bool {
    cfg!(feature = "count-alloc")
}

/// Bytes currently allocated through the Rust allocator (0 when not counting).
pub fn current() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Measures the peak of one operation: the highest allocated total between
/// [`Probe::start`] and [`Probe::peak`], minus the total at the start.
pub struct Probe {
    base: usize,
}

impl Probe {
    pub fn start() -> Probe {
        let base = current();
        PEAK.store(base, Ordering::Relaxed);
        Probe { base }
    }

    /// Bytes above the starting total at the highest point so far, or `None`
    /// when this build does not count allocations.
    pub fn peak(&self) -> Option<u64> {
        counting().then(|| PEAK.load(Ordering::Relaxed).saturating_sub(self.base) as u64)
    }
}

/// Bytes up to which an allocation is served from the heap rather than its
/// own mapping, once [`keep_freed_memory`] ran.
pub const MMAP_THRESHOLD: usize = 256 << 20;
/// Free bytes at the top of a heap above which glibc returns memory to the
/// system, once [`keep_freed_memory`] ran.
pub const TRIM_THRESHOLD: usize = 512 << 20;

/// Lets a training step's large buffers be reused from the heap instead of
/// coming back from the kernel as fresh zero-filled pages every step: with
/// glibc's defaults, buffers above its mmap threshold (at most 32 MiB) are
/// unmapped when freed and the heap's top is trimmed, and the page faults of
/// remapping them cost 18,000 faults and 28 ms of system time per width-16
/// step at batch 128, 412,000 faults and 0.6 s per width-64 step (measured
/// with `bench::profile_step` in a program without this). Bounded: at most [`TRIM_THRESHOLD`] of freed memory stays
/// with the process. Runs once per process, when the first session opens or
/// when the CLI starts; `QMUL_MALLOC_DEFAULTS=1` keeps glibc's defaults. Does
/// nothing on other C libraries.
pub fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("QMUL_MALLOC_DEFAULTS").is_some_and(|v| v == "1") {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes the allocator's thresholds, which glibc
        // allows at any time from any thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
        }
    });
}
