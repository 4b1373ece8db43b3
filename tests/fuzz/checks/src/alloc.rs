//! An allocator that refuses any single allocation over a limit.
//!
//! "Never allocate by an untrusted length" is checked, not hoped for: the
//! fuzz binaries and the corpus test install [`LimitAlloc`] as the global
//! allocator, and each target sets a limit far above what its largest input
//! can legitimately need. A request over the limit returns null, so Rust's
//! allocation-error handler aborts with "memory allocation of N bytes
//! failed", which libFuzzer records as a crash with the input that caused
//! it. Without a sanitizer, libFuzzer's own `-malloc_limit_mb` cannot see
//! Rust's allocations, hence this.
//!
//! The cap is lifted while the thread panics: the panic hook symbolising a
//! backtrace (`RUST_BACKTRACE=1`) loads the binary's debug info in one
//! allocation of several MiB, and refusing it turned a failed assertion
//! into an abort inside the hook, which hung until libFuzzer's `-timeout`
//! and recorded the input as a timeout instead of a crash.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Whether an allocation of `size` bytes goes over the cap.
fn over_limit(size: usize) -> bool {
    // `panicking` reads a counter and allocates nothing.
    size > LIMIT.load(Ordering::Relaxed) && !std::thread::panicking()
}

/// The system allocator with a cap on the size of one allocation.
pub struct LimitAlloc;

/// Sets the largest single allocation allowed from now on.
pub fn set_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for LimitAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if over_limit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if over_limit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if over_limit(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
