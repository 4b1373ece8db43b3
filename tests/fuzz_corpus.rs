//! The fuzz corpora, replayed without a fuzzer (`tests/fuzz/README.md`).
//!
//! Every file of `tests/fuzz/corpus/<target>/` goes through the same check
//! function the fuzz target runs (`tests/fuzz/checks`), under the same
//! allocation cap, so CI keeps every seed and every crash found so far as a
//! regression test. The generated seeds (`seed-*` files) are checked against
//! their generator; after changing a generator or a format on purpose,
//! rewrite them with
//!
//! ```text
//! UPDATE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Once;

use raftnode_fuzz_checks::{alloc, wal_recovery, Target, TARGETS};

#[global_allocator]
static ALLOC: alloc::LimitAlloc = alloc::LimitAlloc;

/// Tests run on parallel threads and the cap is process-wide, so it is the
/// largest of the targets' caps; the fuzzer enforces each target's own.
fn cap_allocations() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| alloc::set_limit(TARGETS.iter().map(|t| t.alloc_limit).max().unwrap()));
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

fn target(name: &str) -> &'static Target {
    TARGETS.iter().find(|t| t.name == name).unwrap()
}

/// Checks (or with `UPDATE_FUZZ_SEEDS` rewrites) the `seed-*` files.
fn seeds_match_their_generator(t: &Target) {
    let dir = corpus_dir(t.name);
    let generated: BTreeMap<String, Vec<u8>> = (t.seeds)()
        .into_iter()
        .map(|(name, bytes)| (format!("seed-{name}"), bytes))
        .collect();
    let committed: BTreeMap<String, Vec<u8>> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.starts_with("seed-")
                .then(|| (name, fs::read(e.path()).unwrap()))
        })
        .collect();
    if generated == committed {
        return;
    }
    if std::env::var_os("UPDATE_FUZZ_SEEDS").is_some() {
        fs::create_dir_all(&dir).unwrap();
        for name in committed.keys() {
            fs::remove_file(dir.join(name)).unwrap();
        }
        for (name, bytes) in &generated {
            fs::write(dir.join(name), bytes).unwrap();
        }
        return;
    }
    let stale: Vec<_> = committed
        .iter()
        .filter(|(n, b)| generated.get(*n) != Some(b))
        .map(|(n, _)| n)
        .collect();
    let missing: Vec<_> = generated
        .keys()
        .filter(|n| !committed.contains_key(*n))
        .collect();
    panic!(
        "the seeds in {} differ from their generator (stale or changed: {stale:?}; \
         missing: {missing:?}); if that is on purpose, run \
         UPDATE_FUZZ_SEEDS=1 cargo test --test fuzz_corpus",
        dir.display()
    );
}

/// Runs the target's check over every file of its corpus.
fn replay(name: &str) {
    cap_allocations();
    let t = target(name);
    seeds_match_their_generator(t);
    let dir = corpus_dir(t.name);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    for path in &files {
        let input = fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| (t.check)(&input));
        if outcome.is_err() {
            panic!(
                "{name} fails on {}; replay it with \
                 `cd tests/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none {name} {}`",
                path.display(),
                path.display()
            );
        }
    }
}

#[test]
fn peer_frame_corpus() {
    replay("peer_frame");
}

#[test]
fn peer_admission_corpus() {
    replay("peer_admission");
}

#[test]
fn client_line_corpus() {
    replay("client_line");
}

#[test]
fn client_frames_corpus() {
    replay("client_frames");
}

#[test]
fn client_reply_corpus() {
    replay("client_reply");
}

#[test]
fn http_request_corpus() {
    replay("http_request");
}

#[test]
fn resp_frames_corpus() {
    replay("resp_frames");
}

#[test]
fn wal_recovery_corpus() {
    replay("wal_recovery");
    wal_recovery::cleanup();
}

#[test]
fn snapshot_payload_corpus() {
    replay("snapshot_payload");
}

#[test]
fn every_target_has_a_test_here() {
    let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "peer_frame",
            "peer_admission",
            "client_line",
            "client_frames",
            "client_reply",
            "http_request",
            "resp_frames",
            "wal_recovery",
            "snapshot_payload"
        ]
    );
}
