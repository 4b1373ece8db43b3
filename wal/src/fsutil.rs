//! Small file-system helpers shared by segments and snapshots.
//!
//! Every helper maps `std::io::Error` into [`Error::Io`] naming the path and
//! the operation, so that callers can use `?` and still produce a message that
//! says which file failed. The durability idiom of the crate lives here:
//! a new file becomes visible only through "write a temp file, fsync it,
//! rename it, fsync the directory".

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Error;

/// One mebibyte of zeros, the unit in which files are preallocated and regions
/// are cleared.
const ZERO_CHUNK: usize = 1 << 20;

/// Fsyncs a directory so that creations, renames and deletions inside it are
/// durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), Error> {
    let d = File::open(dir).map_err(Error::io("open directory", dir))?;
    d.sync_all().map_err(Error::io("fsync directory", dir))
}

/// Creates `dir` (and parents) if missing, making the creation durable.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// Opens an existing file for reading and writing.
pub(crate) fn open_rw(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io("open", path))
}

/// Creates (or truncates) a file for reading and writing.
pub(crate) fn create_rw(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(Error::io("create", path))
}

/// Writes all of `buf` at `offset`.
pub(crate) fn write_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<(), Error> {
    file.write_all_at(buf, offset)
        .map_err(Error::io("write", path))
}

/// Overwrites `[from, to)` with zeros (extending the file if `to` is past its end).
pub(crate) fn write_zeros(file: &File, path: &Path, from: u64, to: u64) -> Result<(), Error> {
    let zeros = vec![0u8; ZERO_CHUNK.min((to.saturating_sub(from)) as usize)];
    let mut off = from;
    while off < to {
        let n = (to - off).min(zeros.len() as u64) as usize;
        write_at(file, path, &zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// `fdatasync`: makes written data (and the size, if it changed) durable.
pub(crate) fn sync_data(file: &File, path: &Path) -> Result<(), Error> {
    file.sync_data().map_err(Error::io("fdatasync", path))
}

/// Renames `from` to `to` (both in `dir`) and fsyncs `dir`.
pub(crate) fn rename_durable(from: &Path, to: &Path, dir: &Path) -> Result<(), Error> {
    fs::rename(from, to).map_err(Error::io("rename", from))?;
    fsync_dir(dir)
}

/// Lists the file names in `dir` (names that are not UTF-8 are skipped: this
/// crate never creates such names).
pub(crate) fn list_names(dir: &Path) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    for ent in fs::read_dir(dir).map_err(Error::io("read directory", dir))? {
        let ent = ent.map_err(Error::io("read directory", dir))?;
        if let Ok(name) = ent.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes leftover temporary files (`*.tmp`) in `dir`: they are never part of
/// the durable state, because a temp file only counts once it is renamed.
/// The removals are not fsynced: if a crash undoes one, the next open simply
/// removes the file again. Returns how many were removed.
pub(crate) fn remove_temp_files(dir: &Path) -> Result<usize, Error> {
    let mut removed = 0;
    for name in list_names(dir)? {
        if name.ends_with(".tmp") {
            let p = dir.join(&name);
            log::info!("removing leftover temporary file {}", p.display());
            fs::remove_file(&p).map_err(Error::io("remove", &p))?;
            removed += 1;
        }
    }
    Ok(removed)
}
