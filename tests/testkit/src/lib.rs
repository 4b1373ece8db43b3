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
//!   paper-section and malformed-message tests;
//! - [`process`]: real `raftnode` processes on loopback ports and the fault
//!   suite built on them, for the node, fault, membership and snapshot tests.
//!
//! Everything shared is a `pub` item here; test files use it as
//! `raftnode_testkit::...`, never through `#[path]` includes.
//!
//! What this crate does not do: model durability itself. The simulation's
//! durable-versus-unstable bookkeeping stays in `tests/sim/`, which calls
//! [`ready::persist`] at the moment it chooses.

pub mod harness;
pub mod process;
pub mod ready;
pub mod rng;
