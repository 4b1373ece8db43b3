//! Fuzz target `wal_recovery`: see `checks/src/wal_recovery.rs` for what it checks.
#![no_main]

use raftnode_fuzz_checks::{alloc, wal_recovery};

#[global_allocator]
static ALLOC: alloc::LimitAlloc = alloc::LimitAlloc;

libfuzzer_sys::fuzz_target!(
    init: { alloc::set_limit(wal_recovery::ALLOC_LIMIT) },
    |data: &[u8]| wal_recovery::check(data)
);
