//! Fuzz target `client_frames`: see `checks/src/client_frames.rs` for what it checks.
#![no_main]

use raftnode_fuzz_checks::{alloc, client_frames};

#[global_allocator]
static ALLOC: alloc::LimitAlloc = alloc::LimitAlloc;

libfuzzer_sys::fuzz_target!(
    init: { alloc::set_limit(client_frames::ALLOC_LIMIT) },
    |data: &[u8]| client_frames::check(data)
);
