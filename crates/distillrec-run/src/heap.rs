//! Bytes the program holds in its own allocations, counted by a wrapper
//! around the global allocator: the memory the teacher plan predicts
//! (tensors, buffers, tables), without what the resident set adds besides
//! (the binary's pages, mapped files while they load, and freed memory the
//! allocator keeps for reuse). `train teacher` records its peak next to the
//! resident peak so a plan can be checked against both.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Live bytes of the counted allocator.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The most bytes live at once since the start or the last [`reset_peak_heap`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that forwards every call to `A` and counts the live
/// bytes and their peak (process-wide, relaxed atomics: a few nanoseconds
/// per call). Install it in a binary:
/// `#[global_allocator] static A: CountingAlloc<MiMalloc> = CountingAlloc(MiMalloc);`
pub struct CountingAlloc<A>(pub A);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    if now > PEAK.load(Relaxed) {
        PEAK.fetch_max(now, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `A`, which upholds the
// `GlobalAlloc` contract; the counters only observe sizes.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `A` with `layout` (the caller's contract)
        unsafe { self.0.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

/// Whether this process counts its allocations ([`CountingAlloc`] is the
/// global allocator and has seen at least one).
pub fn counting() -> bool {
    PEAK.load(Relaxed) > 0
}

/// Live bytes now in MiB, when counted.
pub fn heap_mb() -> Option<f64> {
    counting().then(|| mib(LIVE.load(Relaxed)))
}

/// The most bytes live at once (since the start or the last
/// [`reset_peak_heap`]) in MiB, when counted.
pub fn peak_heap_mb() -> Option<f64> {
    counting().then(|| mib(PEAK.load(Relaxed)))
}

/// Starts a new peak from what is live now (a stage's own peak).
pub fn reset_peak_heap() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static A: CountingAlloc<std::alloc::System> = CountingAlloc(std::alloc::System);

    /// One test only: the counters are process-wide, and other tests of
    /// this binary allocate concurrently; 64 MiB stands far above their
    /// noise.
    #[test]
    fn the_peak_holds_the_most_live_at_once_and_resets_to_what_is_live() {
        assert!(counting());
        let base = heap_mb().unwrap();
        reset_peak_heap();
        let a = vec![1u8; 64 << 20];
        let mut b = vec![1u8; 32 << 20];
        b.reserve_exact(16 << 20); // a realloc that grows by 16 MiB
        let live = heap_mb().unwrap() - base;
        assert!((live - 112.0).abs() < 4.0, "live {live}");
        drop(a);
        drop(b);
        let peak = peak_heap_mb().unwrap() - base;
        assert!((peak - 112.0).abs() < 4.0, "peak {peak}");
        assert!(heap_mb().unwrap() - base < 4.0);
        reset_peak_heap();
        assert!(peak_heap_mb().unwrap() - base < 4.0);
    }
}
