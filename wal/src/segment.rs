//! Segment files: their names, and how a new one comes into existence.
//!
//! A segment is named `<sequence>-<first index>.wal`, both as 16 lower-case
//! hex digits, so that sorting names sorts segments and a directory listing
//! shows where each one starts. The sequence number increases by one per
//! segment; a hole in the sequence means a segment went missing.
//!
//! A new segment is never visible half-made. It is first written as
//! `<sequence>.wal.tmp`, filled with zeros to its full size and fsynced
//! ("preallocated", so that later `fdatasync`s never have to change the file
//! size or allocate blocks). When the log rolls over, the header and the head
//! records (current hard state and snapshot marker) are written into the temp
//! file, which is fsynced, renamed to its final name, and the directory is
//! fsynced. A crash leaves either no new segment or a complete one; a leftover
//! temp file is simply removed on the next open.
//!
//! Zero-filling 64 MiB costs about as much as hundreds of small appends, so by
//! default the next segment is prepared on a background thread while the
//! current one fills up ([`Preallocator`]), like etcd's `file_pipeline`. It
//! starts once a quarter of the current segment is used, and flushes its
//! zeros in 2 MiB slices so that the appender's `fdatasync`s never queue
//! behind a whole segment's worth of writes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::format::{seal_frames, segment_header, Version, SEGMENT_HEADER_LEN};
use crate::fsutil;
use crate::{failpoint, Error};

/// The file name of segment `seq` whose first entry is `first_index`.
pub(crate) fn segment_file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// Parses a name made by [`segment_file_name`].
pub(crate) fn parse_segment_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// The temp-file name under which segment `seq` is prepared.
fn temp_segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal.tmp")
}

/// A zero-filled, fsynced temp file waiting to become a segment.
pub(crate) struct Prepared {
    file: File,
    path: PathBuf,
    size: u64,
}

/// How many zeros [`prepare`] writes between two syncs. Flushing a whole
/// 64 MiB segment at once would hold up the appender's `fdatasync`s behind
/// ~100 ms of device writes; flushing in slices bounds that wait.
const PREPARE_SLICE: u64 = 2 << 20;

/// Creates the temp file for segment `seq` and fills it with `size` zeros.
pub(crate) fn prepare(dir: &Path, seq: u64, size: u64) -> Result<Prepared, Error> {
    prepare_cancellable(dir, seq, size, &AtomicBool::new(false))
}

/// [`prepare`] that gives up, removing its temp file, when `cancel` is set
/// between two slices.
fn prepare_cancellable(
    dir: &Path,
    seq: u64,
    size: u64,
    cancel: &AtomicBool,
) -> Result<Prepared, Error> {
    let path = dir.join(temp_segment_name(seq));
    let file = fsutil::create_rw(&path)?;
    let mut off = 0;
    while off < size {
        if cancel.load(Ordering::Relaxed) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(Error::Broken {
                reason: "segment preparation cancelled".into(),
            });
        }
        let end = (off + PREPARE_SLICE).min(size);
        fsutil::write_zeros(&file, &path, off, end)?;
        fsutil::sync_data(&file, &path)?;
        off = end;
    }
    file.sync_all().map_err(Error::io("fsync", &path))?;
    Ok(Prepared { file, path, size })
}

/// A segment that has just been installed under its final name.
pub(crate) struct Installed {
    pub file: File,
    pub path: PathBuf,
    pub size: u64,
}

/// Turns a prepared temp file into segment `seq` starting at `first_index`:
/// grows it to `min_size` if needed, writes the header followed by `head`
/// (records framed in the current version; their `TEAR_AMBIGUOUS` flags are
/// set here, where their offsets are known), fsyncs, renames, fsyncs the
/// directory.
pub(crate) fn install(
    prepared: Prepared,
    dir: &Path,
    seq: u64,
    first_index: u64,
    head: &[u8],
    min_size: u64,
) -> Result<Installed, Error> {
    let Prepared {
        file,
        path: tmp,
        mut size,
    } = prepared;
    let grown = size < min_size;
    if grown {
        fsutil::write_zeros(&file, &tmp, size, min_size)?;
        size = min_size;
    }
    let mut first = Vec::with_capacity(SEGMENT_HEADER_LEN + head.len());
    first.extend_from_slice(&segment_header(seq, first_index));
    first.extend_from_slice(head);
    seal_frames(
        &mut first[SEGMENT_HEADER_LEN..],
        SEGMENT_HEADER_LEN as u64,
        Version::CURRENT,
    );
    fsutil::write_at(&file, &tmp, &first, 0)?;
    if grown {
        file.sync_all().map_err(Error::io("fsync", &tmp))?;
    } else {
        fsutil::sync_data(&file, &tmp)?;
    }
    failpoint::hit("segment:before-rename")?;
    let path = dir.join(segment_file_name(seq, first_index));
    fsutil::rename_durable(&tmp, &path, dir)?;
    failpoint::hit("segment:after-rename")?;
    Ok(Installed { file, path, size })
}

/// Prepares the next segment, on a background thread or inline.
pub(crate) struct Preallocator {
    background: bool,
    pending: Option<(u64, JoinHandle<Result<Prepared, Error>>)>,
    /// Tells the background thread to stop early (when the `Wal` is dropped).
    cancel: Arc<AtomicBool>,
}

impl Preallocator {
    pub(crate) fn new(background: bool) -> Preallocator {
        Preallocator {
            background,
            pending: None,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether background preparation is enabled and nothing is being
    /// prepared or waiting to be taken.
    pub(crate) fn can_start(&self) -> bool {
        self.background && self.pending.is_none()
    }

    /// Starts preparing segment `seq` in the background (if enabled).
    pub(crate) fn start(&mut self, dir: &Path, seq: u64, size: u64) {
        if !self.background {
            return;
        }
        self.wait();
        let dir = dir.to_path_buf();
        let cancel = Arc::clone(&self.cancel);
        let spawned = std::thread::Builder::new()
            .name("wal-prealloc".into())
            .spawn(move || prepare_cancellable(&dir, seq, size, &cancel));
        match spawned {
            Ok(handle) => self.pending = Some((seq, handle)),
            Err(e) => log::warn!(
                "cannot start the WAL preallocation thread ({e}); segments will be prepared inline"
            ),
        }
    }

    /// Returns segment `seq` prepared: the background result if there is one
    /// for this sequence number and it succeeded, otherwise prepared now.
    pub(crate) fn take(&mut self, dir: &Path, seq: u64, size: u64) -> Result<Prepared, Error> {
        if let Some((pending_seq, handle)) = self.pending.take() {
            match handle.join() {
                Ok(Ok(p)) if pending_seq == seq => return Ok(p),
                Ok(Ok(p)) => {
                    let _ = std::fs::remove_file(&p.path);
                }
                Ok(Err(e)) => {
                    log::warn!("background preallocation of the next WAL segment failed: {e}; retrying inline")
                }
                Err(_) => log::warn!("the WAL preallocation thread panicked; retrying inline"),
            }
        }
        prepare(dir, seq, size)
    }

    /// Waits for a background preparation to finish (its temp file stays).
    pub(crate) fn wait(&mut self) {
        if let Some((_, handle)) = self.pending.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Preallocator {
    fn drop(&mut self) {
        // Do not make the owner of a closing Wal wait for 64 MiB of zeros.
        self.cancel.store(true, Ordering::Relaxed);
        self.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_sequence_and_round_trip() {
        let a = segment_file_name(3, 0x12345);
        assert_eq!(a, "0000000000000003-0000000000012345.wal");
        assert_eq!(parse_segment_file_name(&a), Some((3, 0x12345)));
        assert!(segment_file_name(9, 1) < segment_file_name(10, 1));
        assert_eq!(parse_segment_file_name("3-5.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000003.wal.tmp"), None);
    }
}
