//! Fuzz target `http_request`: see `checks/src/http_request.rs` for what it checks.
#![no_main]

use raftnode_fuzz_checks::{alloc, http_request};

#[global_allocator]
static ALLOC: alloc::LimitAlloc = alloc::LimitAlloc;

libfuzzer_sys::fuzz_target!(
    init: { alloc::set_limit(http_request::ALLOC_LIMIT) },
    |data: &[u8]| http_request::check(data)
);
