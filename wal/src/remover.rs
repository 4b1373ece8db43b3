//! Deleting files the log no longer needs, inline or on a background thread.
//!
//! Releasing segments and dropping old snapshots unlinks large files and
//! fsyncs a directory after each one. On a busy disk that can take hundreds
//! of milliseconds, and a caller that is also a Raft Ready loop sends no
//! heartbeats meanwhile. With [`Options::remove_in_background`] the `Wal`
//! forgets the files at once and a thread deletes them later.
//!
//! Deferring is safe because each file is deleted only after whatever
//! replaces it is durable, and recovery already copes with files that a
//! crash left behind: segments wholly below the snapshot are skipped, and
//! older snapshot files are ignored in favour of the newest. The one rule
//! that remains is the order. Segments must disappear oldest first, each
//! deletion made durable before the next, so that a crash never leaves a
//! hole in the sequence. One thread, fed in order through a channel, keeps it.
//!
//! Dropping the remover waits for the pending deletions, so a `Wal` reopened
//! in the same process never sees a file vanish while it recovers.
//!
//! [`Options::remove_in_background`]: crate::Options::remove_in_background

use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;

use crate::error::Error;
use crate::fsutil;

/// One file to delete, and the directory to fsync after it.
pub(crate) struct Removal {
    pub path: PathBuf,
    pub dir: PathBuf,
}

pub(crate) struct Remover {
    worker: Option<(Sender<Removal>, JoinHandle<()>)>,
}

impl Remover {
    pub(crate) fn new(background: bool) -> Remover {
        if !background {
            return Remover { worker: None };
        }
        let (tx, rx) = channel::<Removal>();
        let spawned = std::thread::Builder::new()
            .name("wal-remove".into())
            .spawn(move || {
                for r in rx {
                    if let Err(e) = remove_now(&r) {
                        log::warn!("{e}; the file stays until it is removed by hand");
                    }
                }
            });
        match spawned {
            Ok(handle) => Remover {
                worker: Some((tx, handle)),
            },
            Err(e) => {
                log::warn!("cannot start the WAL removal thread ({e}); files are removed inline");
                Remover { worker: None }
            }
        }
    }

    /// Deletes `r.path` and fsyncs `r.dir`, now or on the background thread.
    pub(crate) fn remove(&self, r: Removal) -> Result<(), Error> {
        match &self.worker {
            Some((tx, _)) => match tx.send(r) {
                Ok(()) => Ok(()),
                // The thread is gone (it cannot panic short of a bug); do it here.
                Err(back) => remove_now(&back.0),
            },
            None => remove_now(&r),
        }
    }
}

impl Drop for Remover {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.worker.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

fn remove_now(r: &Removal) -> Result<(), Error> {
    match std::fs::remove_file(&r.path) {
        Ok(()) => {}
        // Already gone, e.g. listed twice while a removal was queued.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("remove", &r.path)(e)),
    }
    fsutil::fsync_dir(&r.dir)
}
