//! Fuzz target `client_reply`: see `checks/src/client_reply.rs` for what it checks.
#![no_main]

use raftnode_fuzz_checks::{alloc, client_reply};

#[global_allocator]
static ALLOC: alloc::LimitAlloc = alloc::LimitAlloc;

libfuzzer_sys::fuzz_target!(
    init: { alloc::set_limit(client_reply::ALLOC_LIMIT) },
    |data: &[u8]| client_reply::check(data)
);
