//! What raftnode's tests, the simulation and the core benchmark share, written
//! once: a dev-only crate, never published, that the root package lists under
//! `[dev-dependencies]`.
//!
//! - [`ready`]: the application's storage step of a Ready, persisting its
//!   snapshot, entries and hard state into a `MemStorage` in the order the
//!   Ready contract requires;
//! - [`rng`]: the seeded generator of the tests, the core's SplitMix64
//!   ([`raftnode::raft::Rng`]) with the helpers tests draw from;
//! - [`harness`]: a deterministic cluster over `MemStorage` and the scenario
//!   script language run by `tests/scenario.rs`, also used by the
//!   paper-section and malformed-message tests.
//!
//! Everything shared is a `pub` item here; test files use it as
//! `raftnode_testkit::...`, never through `#[path]` includes.
//!
//! What this crate does not do: drive real `raftnode` processes (that is
//! `tests/support/`, which needs the binary cargo builds for the root
//! package's own tests), or model durability itself: the simulation's
//! durable-versus-unstable bookkeeping stays in `tests/sim/`.

pub mod harness;
pub mod ready;
pub mod rng;
