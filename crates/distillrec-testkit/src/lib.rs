//! Test support shared by the property tests of `distillrec-data`,
//! `distillrec-llm` and `distillrec-train` ("never panic, stay under a
//! memory bound"): a counting global allocator, the peak of live bytes
//! while a closure runs, and the fixed proptest seed. A dev-dependency only.
//!
//! A test binary installs the allocator itself:
//! `#[global_allocator] static ALLOC: Counting = Counting;`

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::test_runner::{Config, RngSeed};

/// Counts live bytes per thread (so parallel tests do not disturb each
/// other) and forwards every call to the system allocator.
pub struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = LIVE.try_with(|l| {
        let now = l.get() + delta;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping only touches const-initialised thread-locals (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Peak live bytes on this thread (above the level at the start) while `f`
/// runs; meaningful only when [`Counting`] is the global allocator.
pub fn peak_of(f: impl FnOnce()) -> usize {
    let start = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(start));
    f();
    (PEAK.with(|p| p.get()) - start).max(0) as usize
}

/// A fixed generator seed, so that CI sees the same cases on every run;
/// `PROPTEST_RNG_SEED=<n>` explores others.
pub fn fixed_seed() -> RngSeed {
    match Config::default().rng_seed {
        RngSeed::Random => RngSeed::Fixed(20_261_130),
        chosen => chosen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: Counting = Counting;

    #[test]
    fn peak_counts_what_a_closure_holds_at_once() {
        let p = peak_of(|| {
            let a = vec![0u8; 1 << 20];
            drop(a);
            let b = vec![0u8; 1 << 19];
            drop(b);
        });
        assert!((1 << 20..(1 << 20) + 4096).contains(&p), "{p}");
        assert_eq!(peak_of(|| ()), 0);
    }
}
