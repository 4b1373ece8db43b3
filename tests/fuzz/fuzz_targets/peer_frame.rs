//! Fuzz target `peer_frame`: see `checks/src/peer_frame.rs` for what it checks.
#![no_main]

use raftnode_fuzz_checks::{alloc, peer_frame};

#[global_allocator]
static ALLOC: alloc::LimitAlloc = alloc::LimitAlloc;

libfuzzer_sys::fuzz_target!(
    init: { alloc::set_limit(peer_frame::ALLOC_LIMIT) },
    |data: &[u8]| peer_frame::check(data)
);
