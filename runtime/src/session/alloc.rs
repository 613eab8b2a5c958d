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
