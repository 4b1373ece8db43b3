//! Fuzz target `snapshot_payload`: see `checks/src/snapshot_payload.rs` for what it checks.
#![no_main]

use raftnode_fuzz_checks::{alloc, snapshot_payload};

#[global_allocator]
static ALLOC: alloc::LimitAlloc = alloc::LimitAlloc;

libfuzzer_sys::fuzz_target!(
    init: { alloc::set_limit(snapshot_payload::ALLOC_LIMIT) },
    |data: &[u8]| snapshot_payload::check(data)
);
