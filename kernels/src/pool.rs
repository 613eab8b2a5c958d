//! A persistent pool of worker threads for the parallel parts of a pass.
//!
//! A training step makes a few hundred parallel calls (every GEMM, quantizer,
//! BatchNorm and im2col), most of them a millisecond or less. Spawning OS
//! threads for each (`std::thread::scope`) costs tens of microseconds per
//! call in `clone`, stack mapping and joining; the pool's workers stay alive
//! and wait on a condition variable instead, so a call costs one wake-up.
//!
//! [`run`] executes `f(0) .. f(tasks - 1)` on the workers and the calling
//! thread and returns when every task has finished, so `f` may borrow from
//! the caller's stack. One call uses the pool at a time: a call made while the
//! pool is busy (another thread's, or a task's own nested call) runs its tasks
//! on its own thread, so nothing ever waits on itself. A panicking task is
//! caught on the worker and resumed on the caller once all tasks are done
//! (where the C ABI's boundary catches it).

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// The borrowed task function of the call in flight, with its lifetime
/// erased. Sound because [`run`] does not return before every task that
/// could call it has finished (`pending` reached zero).
#[derive(Clone, Copy)]
struct TaskFn(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointee is `Sync`, and it outlives every use (see `TaskFn`).
unsafe impl Send for TaskFn {}
unsafe impl Sync for TaskFn {}

struct Job {
    f: TaskFn,
    tasks: usize,
    next: AtomicUsize,
    pending: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job {
    /// Claims and runs tasks until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.tasks {
                return;
            }
            // SAFETY: task `i < tasks` has not finished, so the caller of
            // `run` is still waiting and the function is alive.
            let f = unsafe { &*self.f.0 };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
                if let Ok(mut slot) = self.panic.lock() {
                    slot.get_or_insert(p);
                }
            }
            if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                let pool = pool();
                // Take the lock so the notification cannot slip between the
                // caller's check and its wait.
                let _g = pool.state.lock();
                pool.done.notify_all();
            }
        }
    }
}

struct State {
    job: Option<Arc<Job>>,
    generation: u64,
}

struct Pool {
    workers: usize,
    /// Held by the call using the pool.
    busy: Mutex<()>,
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        workers: crate::par::threads().saturating_sub(1),
        busy: Mutex::new(()),
        state: Mutex::new(State {
            job: None,
            generation: 0,
        }),
        wake: Condvar::new(),
        done: Condvar::new(),
    })
}

/// Starts the workers once; returns how many run.
fn started() -> usize {
    static STARTED: OnceLock<usize> = OnceLock::new();
    *STARTED.get_or_init(|| {
        let p = pool();
        let mut n = 0;
        for i in 0..p.workers {
            let ok = std::thread::Builder::new()
                .name(format!("qmul-worker-{i}"))
                .spawn(worker)
                .is_ok();
            n += ok as usize;
        }
        n
    })
}

fn worker() {
    let p = pool();
    let mut seen = 0u64;
    loop {
        let job = {
            let Ok(mut s) = p.state.lock() else { return };
            while s.generation == seen {
                s = match p.wake.wait(s) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            seen = s.generation;
            s.job.clone()
        };
        if let Some(job) = job {
            job.work();
        }
    }
}

/// Runs `f(i)` for every `i` in `0..tasks` across the pool and the calling
/// thread; returns when all have run. Panics of tasks resume here.
pub fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    if tasks == 0 {
        return;
    }
    let p = pool();
    let guard = if tasks > 1 && started() > 0 {
        match p.busy.try_lock() {
            Ok(g) => Some(g),
            // A task's panic resumed past an earlier call: the pool is fine.
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    } else {
        None
    };
    let Some(guard) = guard else {
        // Alone, or the pool is in use (a nested or concurrent call).
        (0..tasks).for_each(f);
        return;
    };
    // SAFETY (lifetime erasure): this function returns only after `pending`
    // reached zero, i.e. after the last call of `f`.
    let erased: *const (dyn Fn(usize) + Sync + '_) = f;
    let f_static = unsafe {
        std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
            erased,
        )
    };
    let job = Arc::new(Job {
        f: TaskFn(f_static),
        tasks,
        next: AtomicUsize::new(0),
        pending: AtomicUsize::new(tasks),
        panic: Mutex::new(None),
    });
    {
        let mut s = p.state.lock().unwrap_or_else(|e| e.into_inner());
        s.job = Some(job.clone());
        s.generation = s.generation.wrapping_add(1);
        p.wake.notify_all();
    }
    job.work();
    {
        let mut s = p.state.lock().unwrap_or_else(|e| e.into_inner());
        while job.pending.load(Ordering::Acquire) != 0 {
            s = p.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        // Workers that wake late find no job, not a finished one.
        s.job = None;
    }
    let panic = job.panic.lock().ok().and_then(|mut p| p.take());
    drop(guard);
    if let Some(p) = panic {
        resume_unwind(p);
    }
}

/// Runs `f` on every item across the pool and returns the results in order.
pub fn map<I: Send, R: Send>(items: Vec<I>, f: impl Fn(I) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    let slots: Vec<Mutex<(Option<I>, Option<R>)>> = items
        .into_iter()
        .map(|i| Mutex::new((Some(i), None)))
        .collect();
    run(slots.len(), &|i| {
        let mut s = slots[i].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(item) = s.0.take() {
            let r = f(item);
            s.1 = Some(r);
        }
    });
    slots
        .into_iter()
        .map(|s| {
            s.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .1
                .expect("every task ran")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_and_results_keep_their_order() {
        for n in [0, 1, 2, 3, 17, 1000] {
            let count = AtomicUsize::new(0);
            run(n, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.load(Ordering::Relaxed), n);
            let v = map((0..n).collect(), |i: usize| i * 2);
            assert_eq!(v, (0..n).map(|i| i * 2).collect::<Vec<_>>());
        }
    }

    #[test]
    fn nested_and_concurrent_calls_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        run(4, &|_| {
                            run(3, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            })
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 50 * 4 * 3);
    }

    #[test]
    fn a_panicking_task_resumes_on_the_caller_and_the_pool_still_works() {
        let r = catch_unwind(|| {
            run(8, &|i| {
                if i == 5 {
                    panic!("task 5");
                }
            })
        });
        assert!(r.is_err());
        let v = map(vec![1, 2, 3], |x: i32| x + 1);
        assert_eq!(v, vec![2, 3, 4]);
        // The workers still take tasks: some task runs off the calling thread
        // (tried for up to 10 s: on a loaded machine the caller may finish
        // many calls before a parked worker is scheduled).
        let me = std::thread::current().id();
        let elsewhere = AtomicUsize::new(0);
        let start = std::time::Instant::now();
        while elsewhere.load(Ordering::Relaxed) == 0
            && start.elapsed() < std::time::Duration::from_secs(10)
        {
            run(64, &|_| {
                if std::thread::current().id() != me {
                    elsewhere.fetch_add(1, Ordering::Relaxed);
                }
                std::hint::black_box((0..2000).sum::<u64>());
            });
        }
        if started() > 0 {
            assert!(
                elsewhere.load(Ordering::Relaxed) > 0,
                "no task reached a worker after the panic"
            );
        }
    }
}
