//! Fuzz target `peer_admission`: see `checks/src/peer_admission.rs` for what it checks.
#![no_main]

use raftnode_fuzz_checks::{alloc, peer_admission};

#[global_allocator]
static ALLOC: alloc::LimitAlloc = alloc::LimitAlloc;

libfuzzer_sys::fuzz_target!(
    init: { alloc::set_limit(peer_admission::ALLOC_LIMIT) },
    |data: &[u8]| peer_admission::check(data)
);
