//! Fuzz target `resp_frames`: see `checks/src/resp_frames.rs` for what it checks.
#![no_main]

use raftnode_fuzz_checks::{alloc, resp_frames};

#[global_allocator]
static ALLOC: alloc::LimitAlloc = alloc::LimitAlloc;

libfuzzer_sys::fuzz_target!(
    init: { alloc::set_limit(resp_frames::ALLOC_LIMIT) },
    |data: &[u8]| resp_frames::check(data)
);
