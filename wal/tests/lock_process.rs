//! The directory lock seen from a second process.
//!
//! This lives in its own test binary on purpose. Spawning the child forks this
//! process, and until the child calls exec it holds a copy of every open file
//! of the parent, including the `LOCK` file of any `Wal` another test thread has
//! open at that instant. `flock` locks belong to the open file, so for that
//! moment a test that drops its `Wal` and reopens it would see `Locked`. Alone
//! in its binary, the spawn has no neighbour to disturb (it failed 29 runs in
//! 400 when it shared `basics`).

mod common;

use common::{opts, TempDir};
use wal::{Error, Wal};

const SEG: u64 = 16 * 1024;

/// Run by `a_second_process_is_refused_as_locked` in a child process.
#[test]
fn lock_child_process() {
    let Ok(dir) = std::env::var("WAL_LOCK_CHILD_DIR") else {
        return;
    };
    match Wal::open(std::path::Path::new(&dir), opts(SEG)) {
        Err(Error::Locked { .. }) => {}
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_second_process_is_refused_as_locked() {
    let d = TempDir::new("lock-proc");
    let (_w, _) = Wal::open(d.path(), opts(SEG)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "lock_child_process", "--nocapture"])
        .env("WAL_LOCK_CHILD_DIR", d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
