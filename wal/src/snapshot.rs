//! Snapshot files: writing them durably, streaming them back, verifying them.
//!
//! A snapshot file lives in the `snap/` subdirectory and is named
//! `<index>-<term>.snap` (16 hex digits each), so names sort by index. It holds
//! a header with the snapshot's metadata (index, term, voters, learners) and
//! its own CRC, then the state-machine data, then a 16-byte trailer with the
//! data length and the data's CRC. The trailer comes last so that a snapshot
//! can be written as a stream whose size is not known in advance.
//!
//! Writing goes through [`SnapshotWriter`]: a temp file `<name>.tmp` written
//! through a bounded buffer, fsynced, renamed, and the directory fsynced. Only
//! then does the `Wal` append the snapshot marker to the log; a snapshot file
//! without a marker is an unfinished save and is set aside on the next open.
//!
//! Reading goes through [`SnapshotReader`], which streams the data and checks
//! the CRC when it reaches the end, so a 256 MiB snapshot is verified with a
//! fixed-size buffer. [`check`] does the same without handing the data out.
//!
//! A damaged snapshot file is never deleted: recovery renames it to
//! `<name>.broken` and falls back to the next older one.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::format::SNAPSHOT_VERSION;
use crate::fsutil;
use crate::remover::{Removal, Remover};
use crate::{failpoint, Error, SnapshotMeta};

/// First 8 bytes of every snapshot file.
const SNAP_MAGIC: [u8; 8] = *b"RNSNAPSH";
/// Last 4 bytes of every snapshot file.
const TRAILER_MAGIC: [u8; 4] = *b"SEND";
/// Size of the fixed part of the header (before the member lists).
const FIXED_HEADER_LEN: u64 = 40;
/// Size of the header CRC and its padding.
const HEADER_CRC_LEN: u64 = 8;
/// Size of the trailer.
const TRAILER_LEN: u64 = 16;
/// Buffer size for streaming snapshot data in and out.
const IO_BUF: usize = 256 * 1024;

/// A snapshot writer makes its data durable every this many bytes. Without
/// it a large snapshot leaves hundreds of MiB dirty in the page cache, and the
/// first fdatasync of the log after that (on ext4 in `data=ordered` mode, the
/// journal commit) waits for all of it: a leader stuck that long in its Ready
/// loop sends no heartbeats, and its followers elect another.
const SYNC_EVERY: u64 = 8 << 20;

/// The name of the snapshot file for `index` and `term`.
pub(crate) fn snapshot_file_name(index: u64, term: u64) -> String {
    format!("{index:016x}-{term:016x}.snap")
}

/// Parses a name made by [`snapshot_file_name`].
fn parse_snapshot_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".snap")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// A snapshot file found in the directory (not yet verified).
#[derive(Clone, Debug)]
pub(crate) struct SnapFile {
    pub index: u64,
    pub term: u64,
    pub path: PathBuf,
}

/// Lists the snapshot files in `snap_dir`, newest (highest index) first.
pub(crate) fn list(snap_dir: &Path) -> Result<Vec<SnapFile>, Error> {
    let mut files: Vec<SnapFile> = fsutil::list_names(snap_dir)?
        .into_iter()
        .filter_map(|name| {
            let (index, term) = parse_snapshot_file_name(&name)?;
            Some(SnapFile {
                index,
                term,
                path: snap_dir.join(name),
            })
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse((f.index, f.term)));
    Ok(files)
}

/// Renames `path` to `path.<suffix>` durably, keeping it for forensics.
pub(crate) fn set_aside(path: &Path, suffix: &str) -> Result<PathBuf, Error> {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    let to = PathBuf::from(name);
    let dir = path.parent().unwrap_or(Path::new("."));
    fsutil::rename_durable(path, &to, dir)?;
    Ok(to)
}

/// Deletes all but the newest `keep` snapshot files.
pub(crate) fn retain(snap_dir: &Path, keep: usize, remover: &Remover) -> Result<(), Error> {
    let files = list(snap_dir)?;
    if files.len() <= keep {
        return Ok(());
    }
    for f in &files[keep..] {
        log::info!("removing old snapshot {}", f.path.display());
        remover.remove(Removal {
            path: f.path.clone(),
            dir: snap_dir.to_path_buf(),
        })?;
    }
    Ok(())
}

/// Where the data of a verified-looking file is.
struct Layout {
    meta: SnapshotMeta,
    data_start: u64,
    data_len: u64,
    data_crc: u32,
}

/// Reads and checks header and trailer. `Ok(Err(reason))` means the file is
/// damaged; `Err` is an I/O failure that says nothing about the content.
fn read_layout(file: &mut File, path: &Path) -> Result<Result<Layout, String>, Error> {
    let file_len = file.metadata().map_err(Error::io("stat", path))?.len();
    if file_len < FIXED_HEADER_LEN + HEADER_CRC_LEN + TRAILER_LEN {
        return Ok(Err(format!("file is only {file_len} bytes long")));
    }
    let mut fixed = [0u8; FIXED_HEADER_LEN as usize];
    file.read_exact(&mut fixed)
        .map_err(Error::io("read", path))?;
    if fixed[0..8] != SNAP_MAGIC {
        return Ok(Err("snapshot magic is not \"RNSNAPSH\"".into()));
    }
    let voters = u64::from(LE::read_u32(&fixed[32..36]));
    let learners = u64::from(LE::read_u32(&fixed[36..40]));
    let header_len = FIXED_HEADER_LEN + 8 * (voters + learners) + HEADER_CRC_LEN;
    if header_len + TRAILER_LEN > file_len {
        return Ok(Err(format!(
            "header claims {voters} voters and {learners} learners, more than the file holds"
        )));
    }
    let mut rest = vec![0u8; (header_len - FIXED_HEADER_LEN) as usize];
    file.read_exact(&mut rest)
        .map_err(Error::io("read", path))?;
    let crc_at = rest.len() - HEADER_CRC_LEN as usize;
    let mut h = crc32fast::Hasher::new();
    h.update(&fixed);
    h.update(&rest[..crc_at]);
    let computed = h.finalize();
    let stored = LE::read_u32(&rest[crc_at..crc_at + 4]);
    if stored != computed {
        return Ok(Err(format!(
            "header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    if rest[crc_at + 4..] != [0u8; 4] {
        return Ok(Err(
            "header reserved bytes after the CRC are not zero".into()
        ));
    }
    let version = LE::read_u32(&fixed[8..12]);
    if version != SNAPSHOT_VERSION {
        return Ok(Err(format!(
            "snapshot format version {version} is not supported"
        )));
    }
    let ids: Vec<u64> = rest[..crc_at].chunks_exact(8).map(LE::read_u64).collect();
    let meta = SnapshotMeta {
        index: LE::read_u64(&fixed[16..24]),
        term: LE::read_u64(&fixed[24..32]),
        voters: ids[..voters as usize].to_vec(),
        learners: ids[voters as usize..].to_vec(),
    };
    file.seek(SeekFrom::Start(file_len - TRAILER_LEN))
        .map_err(Error::io("seek", path))?;
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact(&mut trailer)
        .map_err(Error::io("read", path))?;
    if trailer[12..16] != TRAILER_MAGIC {
        return Ok(Err(
            "trailer magic is not \"SEND\" (the file is cut short or damaged)".into(),
        ));
    }
    let data_len = LE::read_u64(&trailer[0..8]);
    if header_len
        .checked_add(data_len)
        .and_then(|n| n.checked_add(TRAILER_LEN))
        != Some(file_len)
    {
        return Ok(Err(format!(
            "trailer says {data_len} data bytes but the file has room for {}",
            file_len - header_len - TRAILER_LEN
        )));
    }
    file.seek(SeekFrom::Start(header_len))
        .map_err(Error::io("seek", path))?;
    Ok(Ok(Layout {
        meta,
        data_start: header_len,
        data_len,
        data_crc: LE::read_u32(&trailer[8..12]),
    }))
}

/// Verifies a snapshot file completely (header, trailer, data CRC) by
/// streaming it. `Ok(Err(reason))` means the file is damaged.
pub(crate) fn check(f: &SnapFile) -> Result<Result<SnapshotMeta, String>, Error> {
    let mut reader = match SnapshotReader::open(&f.path)? {
        Ok(r) => r,
        Err(reason) => return Ok(Err(reason)),
    };
    if (reader.meta.index, reader.meta.term) != (f.index, f.term) {
        return Ok(Err(format!(
            "header says index {} term {}, but the file name says index {} term {}",
            reader.meta.index, reader.meta.term, f.index, f.term
        )));
    }
    let mut buf = vec![0u8; IO_BUF];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(Ok(reader.meta)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(Err(e.to_string())),
            Err(e) => return Err(Error::io("read", &f.path)(e)),
        }
    }
}

/// Streams the data of one snapshot file, checking its CRC at the end.
///
/// `read` returns the data bytes; once they are exhausted it returns `Ok(0)`
/// only if the CRC matches, and an [`io::ErrorKind::InvalidData`] error
/// naming the file otherwise. Uses a fixed 256 KiB buffer whatever the size.
pub struct SnapshotReader {
    meta: SnapshotMeta,
    path: PathBuf,
    reader: BufReader<File>,
    remaining: u64,
    len: u64,
    expected_crc: u32,
    hasher: crc32fast::Hasher,
    verified: bool,
}

impl SnapshotReader {
    /// Opens `path`; `Ok(Err(reason))` if header or trailer are damaged.
    pub(crate) fn open(path: &Path) -> Result<Result<SnapshotReader, String>, Error> {
        let mut file = File::open(path).map_err(Error::io("open", path))?;
        let layout = match read_layout(&mut file, path)? {
            Ok(l) => l,
            Err(reason) => return Ok(Err(reason)),
        };
        debug_assert!(layout.data_start > 0);
        Ok(Ok(SnapshotReader {
            meta: layout.meta,
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(IO_BUF, file),
            remaining: layout.data_len,
            len: layout.data_len,
            expected_crc: layout.data_crc,
            hasher: crc32fast::Hasher::new(),
            verified: false,
        }))
    }

    /// The snapshot's metadata.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Number of data bytes (excluding header and trailer).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the snapshot holds no data bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            if !self.verified {
                let computed = self.hasher.clone().finalize();
                if computed != self.expected_crc {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "snapshot {} data CRC mismatch (stored {:#010x}, computed {computed:#010x})",
                            self.path.display(),
                            self.expected_crc
                        ),
                    ));
                }
                self.verified = true;
            }
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("snapshot {} ends before its data does", self.path.display()),
            ));
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Streams a new snapshot file to disk.
///
/// Created by [`Wal::snapshot_writer`](crate::Wal::snapshot_writer); write the
/// state-machine data into it (any amount, through a fixed 256 KiB buffer),
/// then hand it to [`Wal::commit_snapshot`](crate::Wal::commit_snapshot),
/// which makes the file durable and records the snapshot in the log. A writer
/// dropped without being committed removes its temp file; nothing else
/// changes.
pub struct SnapshotWriter {
    meta: SnapshotMeta,
    tmp: PathBuf,
    dir: PathBuf,
    out: Option<BufWriter<File>>,
    hasher: crc32fast::Hasher,
    len: u64,
    /// Data bytes written since the last `sync_data`.
    unsynced: u64,
    /// Final path, once [`seal`](SnapshotWriter::seal) put the file there.
    sealed: Option<PathBuf>,
}

impl SnapshotWriter {
    /// Creates the temp file and writes the header.
    pub(crate) fn create(snap_dir: &Path, meta: &SnapshotMeta) -> Result<SnapshotWriter, Error> {
        let name = snapshot_file_name(meta.index, meta.term);
        let tmp = snap_dir.join(format!("{name}.tmp"));
        let file = fsutil::create_rw(&tmp)?;
        let mut header = Vec::with_capacity(
            (FIXED_HEADER_LEN + HEADER_CRC_LEN) as usize
                + 8 * (meta.voters.len() + meta.learners.len()),
        );
        header.extend_from_slice(&SNAP_MAGIC);
        header.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        header.extend_from_slice(&[0u8; 4]);
        header.extend_from_slice(&meta.index.to_le_bytes());
        header.extend_from_slice(&meta.term.to_le_bytes());
        header.extend_from_slice(&(meta.voters.len() as u32).to_le_bytes());
        header.extend_from_slice(&(meta.learners.len() as u32).to_le_bytes());
        for id in meta.voters.iter().chain(&meta.learners) {
            header.extend_from_slice(&id.to_le_bytes());
        }
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        header.extend_from_slice(&[0u8; 4]);
        let mut out = BufWriter::with_capacity(IO_BUF, file);
        out.write_all(&header).map_err(Error::io("write", &tmp))?;
        Ok(SnapshotWriter {
            meta: meta.clone(),
            tmp,
            dir: snap_dir.to_path_buf(),
            out: Some(out),
            hasher: crc32fast::Hasher::new(),
            len: 0,
            unsynced: 0,
            sealed: None,
        })
    }

    /// The metadata this snapshot will carry.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Data bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no data has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes the data written so far and makes it durable (`fdatasync`).
    /// Optional: [`Wal::commit_snapshot`](crate::Wal::commit_snapshot) syncs
    /// anyway, but a writer filled on another thread can do the expensive
    /// part there, leaving only the trailer to sync at commit.
    pub fn sync_data(&mut self) -> Result<(), Error> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        self.unsynced = 0;
        out.flush().map_err(Error::io("write", &self.tmp))?;
        out.get_ref()
            .sync_data()
            .map_err(Error::io("fsync", &self.tmp))
    }

    /// Writes the trailer, fsyncs, renames the file into place and fsyncs
    /// the directory: the file is then a complete snapshot, but the log does
    /// not point at it until [`Wal::commit_snapshot`](crate::Wal::commit_snapshot).
    /// Optional, like [`sync_data`](SnapshotWriter::sync_data): a writer
    /// filled on another thread can do these fsyncs there, so that the commit
    /// costs one fsync of the log. After a crash between the two, the log
    /// has no marker for this file: recovery sets it aside as an orphan and
    /// recovers from the log, which still holds the entries it covered.
    /// Writing after `seal` is an error; a sealed writer that is dropped
    /// leaves its file, which a later commit's clean-up removes once two
    /// newer snapshots exist.
    pub fn seal(&mut self) -> Result<(), Error> {
        let Some(out) = self.out.take() else {
            return match self.sealed {
                Some(_) => Ok(()),
                None => Err(Error::Broken {
                    reason: "snapshot writer already finished".into(),
                }),
            };
        };
        match self.complete(out) {
            Ok(path) => {
                self.sealed = Some(path);
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&self.tmp);
                Err(e)
            }
        }
    }

    /// Writes the trailer, makes the file durable and renames it into place.
    fn complete(&self, mut out: BufWriter<File>) -> Result<PathBuf, Error> {
        let mut trailer = [0u8; TRAILER_LEN as usize];
        LE::write_u64(&mut trailer[0..8], self.len);
        LE::write_u32(&mut trailer[8..12], self.hasher.clone().finalize());
        trailer[12..16].copy_from_slice(&TRAILER_MAGIC);
        out.write_all(&trailer)
            .map_err(Error::io("write", &self.tmp))?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io("write", &self.tmp)(e.into_error()))?;
        file.sync_all().map_err(Error::io("fsync", &self.tmp))?;
        drop(file);
        let path = self
            .dir
            .join(snapshot_file_name(self.meta.index, self.meta.term));
        failpoint::hit("snapshot:before-rename")?;
        fsutil::rename_durable(&self.tmp, &path, &self.dir)?;
        Ok(path)
    }

    /// Seals the file if that was not done yet, and returns its final path.
    pub(crate) fn finish(mut self) -> Result<PathBuf, Error> {
        self.seal()?;
        self.sealed.take().ok_or_else(|| Error::Broken {
            reason: "snapshot writer lost its file".into(),
        })
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("snapshot writer already sealed"))?;
        let n = out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY {
            self.sync_data().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Opens the snapshot file at `path` for streaming its data, e.g. to send it
/// to a peer while the `Wal` that wrote it goes on. The reader checks the
/// data CRC when it reaches the end; a damaged header or trailer is an
/// [`Error::Corrupt`].
pub fn open_snapshot_file(path: &Path) -> Result<SnapshotReader, Error> {
    match SnapshotReader::open(path)? {
        Ok(r) => Ok(r),
        Err(reason) => Err(Error::corrupt(path, 0, reason)),
    }
}
