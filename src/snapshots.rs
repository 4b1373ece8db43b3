//! Snapshots: when to take one, writing it off the Ready loop, sealing it
//! into the WAL, and installing one received from the leader.
//!
//! None of these holds the serialised state in memory:
//! - taking a snapshot writes a frozen view of the KV store (copy-on-write
//!   shards, see `kv.rs`) straight into the WAL's snapshot file on a
//!   background thread, which also fsyncs and renames it; the Ready loop
//!   then commits it with one fsync of the log ([`Snapshots::finish`]);
//! - a snapshot from the leader arrives as a file the transport wrote under
//!   the incoming dir ([`Inbox`]); installing it reads that file once,
//!   feeding the WAL's new snapshot file and the KV store together;
//! - a restart restores from the file (`datadir.rs`).
//!
//! The in-memory log's snapshot carries metadata only; the core never sees
//! snapshot bytes. A received snapshot reaches it as a message whose data is
//! an [`Inbox`] ticket, which the Ready loop redeems for the file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use log::{info, warn};

use crate::datadir::to_wal_meta;
use crate::error::Fatal;
use crate::kv::KvStore;
use crate::metrics::DiskMetrics;
use crate::protocol::Reply;
use crate::raft::{ConfState, MemStorage, NodeId, Snapshot, SnapshotMeta, Storage};
use crate::reply::ReplyTx;
use crate::shared::Shared;

/// Entries kept in memory behind a snapshot, for slow followers.
pub const KEEP_TAIL: u64 = 5000;

/// From this size on, snapshots are also spaced by bytes written; see
/// [`Snapshots::due`].
const LARGE_STATE: u64 = 8 << 20;

/// Committing a snapshot that holds the Ready loop longer is logged.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// Received snapshot files waiting to be installed; beyond this many the
/// oldest is dropped (the core installs only the newest anyway).
const INBOX_FILES: usize = 4;

/// A snapshot file received from the leader, complete and CRC-checked by the
/// transport. The file is deleted when the handle is dropped.
#[derive(Debug)]
pub struct ReceivedSnapshot {
    path: PathBuf,
}

impl ReceivedSnapshot {
    /// Takes charge of the file at `path`.
    pub fn new(path: PathBuf) -> ReceivedSnapshot {
        ReceivedSnapshot { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ReceivedSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the transport leaves received snapshot files for the Ready loop.
///
/// A file is handed over as a ticket (a number) inside the snapshot
/// message's data, so a path never travels through the core as bytes.
pub struct Inbox {
    dir: PathBuf,
    next: AtomicU64,
    files: Mutex<BTreeMap<u64, ReceivedSnapshot>>,
}

impl Inbox {
    pub fn new(dir: PathBuf) -> Inbox {
        Inbox {
            dir,
            next: AtomicU64::new(1),
            files: Mutex::default(),
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ReceivedSnapshot>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new file to receive a snapshot from `from` into.
    pub fn create(&self, from: NodeId, index: u64) -> io::Result<(PathBuf, File)> {
        std::fs::create_dir_all(&self.dir)?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("snap-{from}-{index}-{n}.part"));
        let file = File::create(&path)?;
        Ok((path, file))
    }

    /// Bytes free for an unprivileged writer on the inbox's file system.
    pub fn free_bytes(&self) -> io::Result<u64> {
        std::fs::create_dir_all(&self.dir)?;
        let st = rustix::fs::statvfs(&self.dir).map_err(io::Error::from)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Hands over a complete file; returns the ticket for the message.
    pub fn deliver(&self, file: ReceivedSnapshot) -> Vec<u8> {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let mut files = self.files();
        files.insert(ticket, file);
        while files.len() > INBOX_FILES {
            files.pop_first();
        }
        ticket.to_le_bytes().to_vec()
    }

    /// Redeems a ticket. Files delivered before it can no longer be
    /// installed (the core installs snapshots in order) and are dropped.
    pub fn take(&self, ticket: &[u8]) -> Option<ReceivedSnapshot> {
        let ticket = u64::from_le_bytes(ticket.try_into().ok()?);
        let mut files = self.files();
        let file = files.remove(&ticket);
        files.retain(|&t, _| t > ticket);
        file
    }
}

/// A reader that copies everything it reads into a writer: a received
/// snapshot goes to the WAL and the KV store in one pass.
struct Tee<'a, R, W> {
    r: R,
    w: &'a mut W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// What the background writer hands back: the sealed file, ready to commit.
pub type Written = Result<wal::SnapshotWriter, Fatal>;

/// A snapshot being written on a background thread.
struct Writing {
    meta: SnapshotMeta,
    done: Receiver<Written>,
    started: Instant,
}

/// The node's snapshots: the policy for taking them and their state.
pub struct Snapshots {
    /// `--snapshot-entries`: entries applied between snapshots (0: never).
    every: u64,
    /// Index of the newest snapshot, and of the one before it.
    index: u64,
    prev_index: u64,
    /// Bytes of entries applied since `index`.
    applied_bytes: u64,
    writing: Option<Writing>,
    /// `SNAPSHOT` requests waiting for the next snapshot to commit.
    waiters: Vec<ReplyTx>,
    metrics: Arc<DiskMetrics>,
}

impl Snapshots {
    pub fn new(every: u64, index: u64, metrics: Arc<DiskMetrics>) -> Snapshots {
        Snapshots {
            metrics,
            every,
            index,
            prev_index: 0,
            applied_bytes: 0,
            writing: None,
            waiters: Vec::new(),
        }
    }

    /// Counts an applied entry towards the next snapshot.
    pub fn applied(&mut self, bytes: usize) {
        self.applied_bytes += bytes as u64;
    }

    /// The channel that says when the background write is done (never, when
    /// none is running), for the Ready loop's select.
    pub fn written(&self) -> Receiver<Written> {
        match &self.writing {
            Some(w) => w.done.clone(),
            None => crossbeam_channel::never(),
        }
    }

    /// Whether `--snapshot-entries` entries were applied since the newest
    /// snapshot. A snapshot rewrites the whole state, so once the state is
    /// large ([`LARGE_STATE`]) it also waits until the entries applied since
    /// add up to a quarter of the state's size: otherwise a 1 GiB state would
    /// be rewritten every few MiB of writes, and the disk would do little
    /// else. The log held in memory meanwhile stays under a quarter of the
    /// state. `SNAPSHOT` does not wait.
    pub fn due(&self, applied: u64, kv: &KvStore) -> bool {
        if self.every == 0 || applied < self.index + self.every {
            return false;
        }
        let state = kv.data_bytes();
        state < LARGE_STATE || self.applied_bytes >= state / 4
    }

    /// A `SNAPSHOT` request: answered once a snapshot at or past the applied
    /// index is committed.
    pub fn request(&mut self, reply: ReplyTx) {
        self.waiters.push(reply);
    }

    /// Starts a snapshot of the applied state unless one is being written.
    /// The data is written, synced and renamed into place on a background
    /// thread from a frozen view of the store, so the Ready loop (and with it
    /// heartbeats and appends) never waits for a large snapshot.
    pub fn start(
        &mut self,
        wal: &wal::Wal,
        storage: &MemStorage,
        kv: &KvStore,
        applied: u64,
        conf_state: &ConfState,
    ) -> Result<(), Fatal> {
        if self.writing.is_some() {
            return Ok(());
        }
        if applied <= self.index {
            self.answer_waiters();
            return Ok(());
        }
        let term = match storage.term(applied) {
            Ok(t) => t,
            Err(e) => {
                warn!("cannot snapshot at {applied}: {e}");
                return Ok(());
            }
        };
        let meta = SnapshotMeta {
            index: applied,
            term,
            conf_state: conf_state.clone(),
        };
        self.applied_bytes = 0;
        let mut writer = wal
            .snapshot_writer(&to_wal_meta(&meta))
            .map_err(|e| Fatal::new("starting a snapshot file", e))?;
        let view = kv.view();
        let (tx, rx) = bounded(1);
        let spawned = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                let r = match view.write_snapshot(&mut writer) {
                    Ok(()) => writer
                        .seal()
                        .map_err(|e| Fatal::new("sealing a snapshot", e)),
                    Err(e) => Err(Fatal::new("writing a snapshot", e)),
                };
                let _ = tx.send(r.map(|_| writer));
            });
        if let Err(e) = spawned {
            warn!("cannot start the snapshot thread: {e}");
            return Ok(());
        }
        self.writing = Some(Writing {
            meta,
            done: rx,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Commits a snapshot the background thread has written: records it in
    /// the WAL, compacts the in-memory log behind it (keeping a tail for slow
    /// followers) and releases WAL segments.
    pub fn finish(
        &mut self,
        written: Written,
        wal: &mut wal::Wal,
        storage: &MemStorage,
        shared: &Shared,
    ) -> Result<(), Fatal> {
        let Some(s) = self.writing.take() else {
            return Ok(());
        };
        let writer = written?;
        let index = s.meta.index;
        if index <= self.index {
            // A snapshot from the leader overtook this one; drop it.
            drop(writer);
            self.answer_waiters();
            return Ok(());
        }
        let t0 = Instant::now();
        wal.commit_snapshot(writer)
            .map_err(|e| Fatal::new("saving a snapshot", e))?;
        let t1 = Instant::now();
        crate::debug::crash_point("before_segment_release");
        if let Err(e) = storage.create_snapshot(index, s.meta.conf_state.clone(), Vec::new()) {
            warn!("in-memory snapshot at {index}: {e}");
        }
        let compact_to = index.saturating_sub(KEEP_TAIL);
        if compact_to >= storage.first_index() {
            if let Err(e) = storage.compact(compact_to) {
                warn!("compacting the in-memory log to {compact_to}: {e}");
            }
        }
        self.advance_to(index, wal, shared);
        let t2 = Instant::now();
        // Keep the entries after the previous snapshot, so that recovery
        // can fall back to it should the newest snapshot file be damaged.
        if let Err(e) = wal.release_to(self.prev_index.min(compact_to)) {
            warn!("releasing WAL segments: {e}");
        }
        let t3 = Instant::now();
        self.metrics.snapshot_taken(t3 - s.started);
        info!("snapshot at {index}");
        if t3 - t0 > SLOW_COMMIT {
            warn!(
                "committing the snapshot at {index} held the Ready loop for {:?} \
                 (commit {:?}, compact {:?}, release {:?})",
                t3 - t0,
                t1 - t0,
                t2 - t1,
                t3 - t2
            );
        }
        self.answer_waiters();
        Ok(())
    }

    /// Makes a snapshot received from the leader durable and loads it into
    /// the KV store, reading the received file once.
    pub fn install(
        &mut self,
        snap: &Snapshot,
        file: ReceivedSnapshot,
        wal: &mut wal::Wal,
        storage: &MemStorage,
        kv: &mut KvStore,
        shared: &Shared,
    ) -> Result<(), Fatal> {
        let input =
            File::open(file.path()).map_err(|e| Fatal::new("opening a received snapshot", e))?;
        let mut writer = wal
            .snapshot_writer(&to_wal_meta(&snap.meta))
            .map_err(|e| Fatal::new("starting a snapshot file", e))?;
        {
            // Restored in place: the old state is dropped before the new one is built.
            let tee = Tee {
                r: io::BufReader::with_capacity(256 << 10, input),
                w: &mut writer,
            };
            let mut tee = io::BufReader::with_capacity(256 << 10, tee);
            kv.restore(&mut tee)
                .map_err(|e| Fatal::new("loading a received snapshot", e))?;
            io::copy(&mut tee, &mut io::sink())
                .map_err(|e| Fatal::new("copying a received snapshot", e))?;
        }
        wal.commit_snapshot(writer)
            .map_err(|e| Fatal::new("saving a received snapshot", e))?;
        drop(file);
        storage
            .apply_snapshot(Snapshot {
                meta: snap.meta.clone(),
                data: Vec::new(),
            })
            .map_err(|e| Fatal::new("installing a received snapshot", e))?;
        self.applied_bytes = 0;
        self.advance_to(snap.meta.index, wal, shared);
        info!("installed snapshot at {} from the leader", snap.meta.index);
        Ok(())
    }

    fn advance_to(&mut self, index: u64, wal: &wal::Wal, shared: &Shared) {
        self.prev_index = self.index;
        self.index = index;
        shared.publish_snapshot(index, wal.snapshot_path().map(Path::to_path_buf));
    }

    fn answer_waiters(&mut self) {
        let reply = Reply::OkIndex(self.index);
        for w in self.waiters.drain(..) {
            w.send(reply.clone());
        }
    }
}
