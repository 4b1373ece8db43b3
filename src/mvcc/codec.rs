//! The snapshot of a store: the whole state with its retained history,
//! streamed. The layout is in the module docs of `mod.rs` ("Snapshot
//! format"); this file writes it and reads it back, checking every byte.

use std::io::{self, ErrorKind, Read, Write};
use std::sync::Arc;

use byteorder::{LittleEndian, WriteBytesExt};

use super::error::{Field, Problem, SnapshotError};
use super::state::{Put, Record, Slot, State};
use super::{Rev, Store, MAX_KEY, MAX_VALUE};

const MAGIC: &[u8; 4] = b"RNMV";
/// The format written and read.
pub(super) const FORMAT_VERSION: u32 = 1;

/// The highest current revision a snapshot may claim: far beyond any real
/// store (a billion revisions a second for a century is 2^62), and low
/// enough that `current + 1` never overflows.
const MAX_REVISION: u64 = 1 << 62;

const TAG_END: u8 = 0;
const TAG_KEY: u8 = 1;
const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;

/// Passes writes through to `w`, hashing them.
struct Hashing<'a, W> {
    w: &'a mut W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Writes the snapshot of `state` to `w`.
pub(super) fn encode(state: &State, w: &mut impl Write) -> io::Result<()> {
    let mut h = Hashing {
        w,
        crc: crc32fast::Hasher::new(),
    };
    h.write_all(MAGIC)?;
    h.write_u32::<LittleEndian>(FORMAT_VERSION)?;
    // A batch leaked with `mem::forget` left changes at `current + 1`; they
    // are committed the moment the store is next written, so count them in.
    let current = state.current + u64::from(state.pending > 0);
    h.write_u64::<LittleEndian>(current)?;
    h.write_u64::<LittleEndian>(state.compacted)?;
    let (mut keys, mut versions) = (0u64, 0u64);
    let mut last: Option<&Arc<[u8]>> = None;
    for (slot, rec) in state.versions.iter() {
        if last.is_none_or(|k| **k != *slot.key) {
            if last.is_some() {
                h.write_u8(TAG_END)?;
            }
            h.write_u8(TAG_KEY)?;
            h.write_u32::<LittleEndian>(slot.key.len() as u32)?;
            h.write_all(&slot.key)?;
            keys += 1;
            last = Some(&slot.key);
        }
        versions += 1;
        match rec {
            Record::Put(p) => {
                h.write_u8(TAG_PUT)?;
                h.write_u64::<LittleEndian>(slot.rev.main)?;
                h.write_u32::<LittleEndian>(slot.rev.sub)?;
                h.write_u64::<LittleEndian>(p.create)?;
                h.write_u64::<LittleEndian>(p.version)?;
                h.write_u64::<LittleEndian>(p.lease)?;
                h.write_u32::<LittleEndian>(p.value.len() as u32)?;
                h.write_all(&p.value)?;
            }
            Record::Delete => {
                h.write_u8(TAG_DELETE)?;
                h.write_u64::<LittleEndian>(slot.rev.main)?;
                h.write_u32::<LittleEndian>(slot.rev.sub)?;
            }
        }
    }
    if last.is_some() {
        h.write_u8(TAG_END)?;
    }
    h.write_u8(TAG_END)?;
    h.write_u64::<LittleEndian>(keys)?;
    h.write_u64::<LittleEndian>(versions)?;
    let crc = h.crc.clone().finalize();
    h.w.write_u32::<LittleEndian>(crc)?;
    h.flush()
}

/// Decodes a snapshot held in memory; the whole slice must be the snapshot.
/// This is the entry point of the fuzz target.
pub fn decode(bytes: &[u8]) -> Result<Store, SnapshotError> {
    let mut r = bytes;
    let mut src = Source::new(&mut r, Some(bytes.len() as u64));
    let store = read_store(&mut src)?;
    if src.remaining != Some(0) {
        return Err(SnapshotError::TrailingBytes { offset: src.offset });
    }
    Ok(store)
}

/// Decodes a snapshot from a reader, reading exactly its bytes (what
/// follows is left in the reader). It reads many small pieces: give it a
/// buffered reader.
pub fn decode_from(r: &mut impl Read) -> Result<Store, SnapshotError> {
    read_store(&mut Source::new(r, None))
}

/// A reader that counts and hashes what it reads, and knows how much is
/// left when the input is a slice.
struct Source<'a, R> {
    r: &'a mut R,
    /// Bytes read so far.
    offset: u64,
    /// Bytes left, when known.
    remaining: Option<u64>,
    crc: crc32fast::Hasher,
    /// Reused for every key and value read.
    buf: Vec<u8>,
}

impl<'a, R: Read> Source<'a, R> {
    fn new(r: &'a mut R, remaining: Option<u64>) -> Source<'a, R> {
        Source {
            r,
            offset: 0,
            remaining,
            crc: crc32fast::Hasher::new(),
            buf: Vec::new(),
        }
    }

    fn fail(&self, e: io::Error) -> SnapshotError {
        match e.kind() {
            ErrorKind::UnexpectedEof => SnapshotError::Truncated {
                offset: self.offset,
            },
            _ => SnapshotError::Io {
                offset: self.offset,
                source: e,
            },
        }
    }

    /// Checks that `n` more bytes can be there.
    fn want(&self, n: u64) -> Result<(), SnapshotError> {
        match self.remaining {
            Some(left) if n > left => Err(SnapshotError::Truncated {
                offset: self.offset,
            }),
            _ => Ok(()),
        }
    }

    fn consumed(&mut self, n: usize, hash: bool) {
        if hash {
            self.crc.update(&self.buf[..n]);
        }
        self.offset += n as u64;
        if let Some(left) = &mut self.remaining {
            *left -= n as u64;
        }
    }

    /// Reads exactly `N` bytes.
    fn array<const N: usize>(&mut self, hash: bool) -> Result<[u8; N], SnapshotError> {
        self.want(N as u64)?;
        let mut a = [0u8; N];
        self.r.read_exact(&mut a).map_err(|e| self.fail(e))?;
        if hash {
            self.crc.update(&a);
        }
        self.offset += N as u64;
        if let Some(left) = &mut self.remaining {
            *left -= N as u64;
        }
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>(true)?[0])
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array(true)?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array(true)?))
    }

    /// Reads a length field and its bytes; the length is checked against
    /// `max` and the input left before a byte is read, and the buffer only
    /// grows with bytes actually read.
    fn bytes(&mut self, field: Field, min: u64, max: usize) -> Result<Arc<[u8]>, SnapshotError> {
        let at = self.offset;
        let len = u64::from(self.u32()?);
        if len < min || len > max as u64 {
            return Err(SnapshotError::TooLong {
                field,
                len,
                offset: at,
            });
        }
        self.want(len)?;
        self.buf.clear();
        let read = (&mut *self.r)
            .take(len)
            .read_to_end(&mut self.buf)
            .map_err(|e| self.fail(e))?;
        if read as u64 != len {
            self.offset += read as u64;
            return Err(SnapshotError::Truncated {
                offset: self.offset,
            });
        }
        self.consumed(read, true);
        Ok(Arc::from(&self.buf[..]))
    }
}

fn invalid(problem: Problem, offset: u64) -> SnapshotError {
    SnapshotError::Invalid { problem, offset }
}

/// The changes above the compacted revision as read: revision, key, and
/// offset of the record.
type Log = Vec<(Rev, Arc<[u8]>, u64)>;

/// One version as read, before it goes into the maps.
struct Read1 {
    rev: Rev,
    rec: Record,
    offset: u64,
}

fn read_store<R: Read>(src: &mut Source<'_, R>) -> Result<Store, SnapshotError> {
    if &src.array::<4>(true)? != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = src.u32()?;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion { version });
    }
    let mut st = State::new();
    st.current = src.u64()?;
    st.compacted = src.u64()?;
    if !(1..=MAX_REVISION).contains(&st.current) {
        return Err(invalid(Problem::RevisionOutOfRange, 8));
    }
    if st.compacted > st.current {
        return Err(invalid(Problem::CompactedAboveCurrent, 16));
    }
    let mut keys = 0u64;
    let mut last_key: Option<Arc<[u8]>> = None;
    let mut log = Log::new();
    loop {
        let at = src.offset;
        match src.u8()? {
            TAG_END => break,
            TAG_KEY => {}
            t => return Err(invalid(Problem::UnknownTag(t), at)),
        }
        let key = src.bytes(Field::Key, 1, MAX_KEY)?;
        if last_key.as_ref().is_some_and(|k| *k >= key) {
            return Err(invalid(Problem::KeysOutOfOrder, at));
        }
        read_key(src, &mut st, &mut log, &key, at)?;
        keys += 1;
        last_key = Some(key);
    }
    // The log is in revision order, where the records are in key order.
    log.sort_unstable_by_key(|(rev, _, _)| *rev);
    if let Some(w) = log.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(invalid(Problem::DuplicateRevision, w[0].2.max(w[1].2)));
    }
    st.log = log.into_iter().map(|(rev, key, _)| (rev, key)).collect();
    let at = src.offset;
    let (n_keys, n_versions) = (src.u64()?, src.u64()?);
    if n_keys != keys || n_versions != st.sizes.versions {
        return Err(invalid(Problem::CountMismatch, at));
    }
    let computed = src.crc.clone().finalize();
    let stored = u32::from_le_bytes(src.array(false)?);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    Ok(Store::from_state(st))
}

/// Reads the versions of `key` (newest first), checks them against each
/// other and puts them in `st`.
fn read_key<R: Read>(
    src: &mut Source<'_, R>,
    st: &mut State,
    log: &mut Log,
    key: &Arc<[u8]>,
    key_offset: u64,
) -> Result<(), SnapshotError> {
    let mut newer: Option<Read1> = None;
    loop {
        let offset = src.offset;
        let rec = match src.u8()? {
            TAG_END => break,
            TAG_PUT => None,
            TAG_DELETE => Some(Record::Delete),
            t => return Err(invalid(Problem::UnknownTag(t), offset)),
        };
        let rev = Rev {
            main: src.u64()?,
            sub: src.u32()?,
        };
        let rec = match rec {
            Some(r) => r,
            None => Record::Put(Put {
                create: src.u64()?,
                version: src.u64()?,
                lease: src.u64()?,
                value: src.bytes(Field::Value, 0, MAX_VALUE)?,
            }),
        };
        let this = Read1 { rev, rec, offset };
        if !(2..=st.current).contains(&rev.main) {
            return Err(invalid(Problem::RevisionOutOfRange, offset));
        }
        match &newer {
            None => account_newest(st, key, &this.rec),
            Some(n) => check_pair(st, n, &this)?,
        }
        insert(st, log, key, &this);
        newer = Some(this);
    }
    let Some(oldest) = newer else {
        return Err(invalid(Problem::KeyWithoutVersions, key_offset));
    };
    check_oldest(st, &oldest)
}

/// Counts the key's newest version as the live state.
fn account_newest(st: &mut State, key: &Arc<[u8]>, rec: &Record) {
    if let Record::Put(p) = rec {
        st.sizes.keys += 1;
        st.sizes.bytes += (key.len() + p.value.len()) as u64;
        if p.lease != 0 {
            st.leases.insert((p.lease, key.clone()));
        }
    }
}

/// Checks version `o` against the next newer one `n` of the same key.
fn check_pair(st: &State, n: &Read1, o: &Read1) -> Result<(), SnapshotError> {
    if o.rev >= n.rev {
        return Err(invalid(Problem::RevisionsOutOfOrder, o.offset));
    }
    if n.rev.main <= st.compacted {
        return Err(invalid(Problem::CompactedVersionRetained, o.offset));
    }
    let follows = match (&n.rec, &o.rec) {
        (Record::Delete, Record::Delete) => {
            return Err(invalid(Problem::DeleteOfAbsentKey, n.offset));
        }
        (Record::Delete, Record::Put(_)) => true,
        (Record::Put(np), Record::Put(op)) => {
            np.create == op.create && Some(np.version) == op.version.checked_add(1)
        }
        (Record::Put(np), Record::Delete) => np.version == 1 && np.create == n.rev.main,
    };
    if !follows {
        return Err(invalid(Problem::GenerationMismatch, n.offset));
    }
    Ok(())
}

/// Checks a key's oldest retained version: a put, the creation itself
/// unless it is the one survivor at or below the compacted revision.
fn check_oldest(st: &State, v: &Read1) -> Result<(), SnapshotError> {
    let Record::Put(p) = &v.rec else {
        return Err(invalid(Problem::DeleteOfAbsentKey, v.offset));
    };
    let creation = p.version == 1 && p.create == v.rev.main;
    // A survivor's generation began at or before it (in the same batch, a
    // key can be created and put again).
    let survivor =
        v.rev.main <= st.compacted && p.version > 1 && (2..=v.rev.main).contains(&p.create);
    if creation || survivor {
        Ok(())
    } else {
        Err(invalid(Problem::GenerationMismatch, v.offset))
    }
}

fn insert(st: &mut State, log: &mut Log, key: &Arc<[u8]>, v: &Read1) {
    if v.rev.main > st.compacted {
        log.push((v.rev, key.clone(), v.offset));
    }
    let vlen = match &v.rec {
        Record::Put(p) => p.value.len(),
        Record::Delete => 0,
    };
    st.sizes.versions += 1;
    st.sizes.history_bytes += (key.len() + vlen) as u64;
    st.versions.insert(
        Slot {
            key: key.clone(),
            rev: v.rev,
        },
        v.rec.clone(),
    );
}
