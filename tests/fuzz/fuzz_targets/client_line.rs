//! Fuzz target `client_line`: see `checks/src/client_line.rs` for what it checks.
#![no_main]

use raftnode_fuzz_checks::{alloc, client_line};

#[global_allocator]
static ALLOC: alloc::LimitAlloc = alloc::LimitAlloc;

libfuzzer_sys::fuzz_target!(
    init: { alloc::set_limit(client_line::ALLOC_LIMIT) },
    |data: &[u8]| client_line::check(data)
);
