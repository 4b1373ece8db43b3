//! What each fuzz target checks, written once for two callers:
//!
//! - the libFuzzer binaries in `tests/fuzz/fuzz_targets/`, one per target,
//!   each a one-line call to a `check` function below;
//! - the root package's `tests/fuzz_corpus.rs`, which feeds every committed
//!   corpus file to the same function in an ordinary `cargo test`, so CI
//!   replays the corpus (and every regression seed) without a fuzzer.
//!
//! A `check` takes any bytes and panics only when the code under test broke
//! a promise: a panic inside the code, an allocation larger than the input
//! can justify ([`alloc::LimitAlloc`]), or a property (a round trip, a
//! documented invariant) that does not hold. Each target also has `seeds()`,
//! meaningful inputs built with the real encoders, which the corpus test
//! keeps in sync with the committed `corpus/<target>/seed-*` files.
//!
//! This is a crate of its own rather than a file included twice (`#[path]`
//! or `include!`): both callers depend on it by path, it compiles once per
//! build, and its own imports are checked like any other crate's.

pub mod alloc;
pub mod client_frames;
pub mod client_line;
pub mod client_reply;
pub mod http_request;
pub mod peer_admission;
pub mod peer_frame;
pub mod resp_frames;
pub mod snapshot_payload;
pub mod wal_recovery;

/// One fuzz target: its name (the fuzz binary and the corpus directory),
/// the check the fuzzer and the corpus test both run, its generated seeds,
/// and the largest single allocation an input may cause.
pub struct Target {
    pub name: &'static str,
    pub check: fn(&[u8]),
    pub seeds: fn() -> Vec<(String, Vec<u8>)>,
    pub alloc_limit: usize,
}

/// Every target. A new one is a module here, a line here, a file in
/// `fuzz_targets/` and a `#[test]` in the root's `tests/fuzz_corpus.rs`.
pub const TARGETS: &[Target] = &[
    Target {
        name: "peer_frame",
        check: peer_frame::check,
        seeds: peer_frame::seeds,
        alloc_limit: peer_frame::ALLOC_LIMIT,
    },
    Target {
        name: "peer_admission",
        check: peer_admission::check,
        seeds: peer_admission::seeds,
        alloc_limit: peer_admission::ALLOC_LIMIT,
    },
    Target {
        name: "client_line",
        check: client_line::check,
        seeds: client_line::seeds,
        alloc_limit: client_line::ALLOC_LIMIT,
    },
    Target {
        name: "client_frames",
        check: client_frames::check,
        seeds: client_frames::seeds,
        alloc_limit: client_frames::ALLOC_LIMIT,
    },
    Target {
        name: "client_reply",
        check: client_reply::check,
        seeds: client_reply::seeds,
        alloc_limit: client_reply::ALLOC_LIMIT,
    },
    Target {
        name: "http_request",
        check: http_request::check,
        seeds: http_request::seeds,
        alloc_limit: http_request::ALLOC_LIMIT,
    },
    Target {
        name: "resp_frames",
        check: resp_frames::check,
        seeds: resp_frames::seeds,
        alloc_limit: resp_frames::ALLOC_LIMIT,
    },
    Target {
        name: "wal_recovery",
        check: wal_recovery::check,
        seeds: wal_recovery::seeds,
        alloc_limit: wal_recovery::ALLOC_LIMIT,
    },
    Target {
        name: "snapshot_payload",
        check: snapshot_payload::check,
        seeds: snapshot_payload::seeds,
        alloc_limit: snapshot_payload::ALLOC_LIMIT,
    },
];
