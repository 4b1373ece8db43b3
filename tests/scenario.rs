//! Runs every scenario script in `tests/scenarios/` (see
//! `tests/testkit/src/harness/script.rs` for the command language).
//!
//! Each script demonstrates one behaviour of the consensus core, named in its
//! file name and explained in its opening comment. The expected trace under
//! each command is compared with what the core actually does. When behaviour
//! changes on purpose, regenerate with
//! `UPDATE_SCENARIOS=1 cargo test --release --test scenario` and review the diff:
//! a trace that shows wrong behaviour is a bug to fix, not a golden to keep.
//! `SCENARIO=<substring>` runs only the matching files.

use std::path::PathBuf;

use raftnode_testkit::harness;

#[test]
fn scenarios() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let update = std::env::var_os("UPDATE_SCENARIOS").is_some_and(|v| v == "1");
    let only = std::env::var("SCENARIO").ok();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/scenarios exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .filter(|p| {
            only.as_deref()
                .is_none_or(|o| p.file_name().unwrap().to_string_lossy().contains(o))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenario files in {}", dir.display());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| harness::script::run_file(f, update).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
