//! The data dir: open it, recover from it, or bootstrap a new cluster in it;
//! and the one set of conversions between the core's types and the WAL's.
//!
//! Layout:
//! - `node-id`: the id this dir belongs to, so a dir is never used by
//!   another node by mistake;
//! - `wal/`: the `wal` crate's segments and snapshot files;
//! - `incoming/`: snapshots being received from the leader (emptied at
//!   start-up: a transfer a crash interrupted is of no use).
//!
//! Recovery loads the newest snapshot into the KV store, the log after it
//! into [`MemStorage`], and the hard state. A first start without `--join`
//! bootstraps: every member started with the same `--peers` writes the same
//! conf-change entries at term 1, committed, so they all form one cluster;
//! but first it asks its peers whether a cluster already runs there that
//! lists it (`discovery.rs`), in which case it lost its disk and recovers.
//!
//! Lost state never passes silently (`raft/recovery.rs` has the safety
//! argument). The WAL is opened with `OnDamage::Salvage`: damage that is
//! not a crash's torn tail keeps the good prefix, sets the rest aside and
//! is recorded in a durable `DAMAGE` marker. The node then starts its core
//! *recovering*: it votes and counts again only once a leader has repaired
//! it, and the marker is cleared only after that (`apply.rs`). If the term
//! and vote may be among what was lost, the node starts at the highest term
//! any readable record shows and votes in no term it reaches before every
//! voter has told it its term. A wiped data dir whose cluster lists the
//! node is the same case with everything lost. A lone voter has nobody to
//! repair it from, and refuses to start.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use log::{info, warn};

use crate::discovery::Decision;
use crate::error::StartError;
use crate::kv::{encode_conf_context, KvStore, RequestId};
use crate::raft::{
    ConfChange, ConfChangeKind, ConfState, Entry, EntryKind, HardState, MemStorage, NodeId,
    RecoveryStart, Snapshot, SnapshotMeta, Storage,
};

/// Subdirectory of the data dir for snapshots being received.
pub const INCOMING_DIR: &str = "incoming";

pub fn to_wal_entry(e: &Entry) -> wal::Entry {
    wal::Entry {
        index: e.index,
        term: e.term,
        kind: e.kind.to_byte(),
        data: e.data.clone(),
    }
}

pub fn to_wal_meta(m: &SnapshotMeta) -> wal::SnapshotMeta {
    wal::SnapshotMeta {
        index: m.index,
        term: m.term,
        voters: m.conf_state.voters.clone(),
        learners: m.conf_state.learners.clone(),
    }
}

pub fn from_wal_meta(m: &wal::SnapshotMeta) -> SnapshotMeta {
    SnapshotMeta {
        index: m.index,
        term: m.term,
        conf_state: ConfState {
            voters: m.voters.clone(),
            learners: m.learners.clone(),
        },
    }
}

pub fn to_wal_hard_state(h: &HardState) -> wal::HardState {
    wal::HardState {
        term: h.term,
        vote: h.vote,
        commit: h.commit,
    }
}

/// What a node starts from.
pub struct Recovered {
    pub wal: wal::Wal,
    pub storage: MemStorage,
    pub kv: KvStore,
    /// Index the KV store reflects (its snapshot's).
    pub applied: u64,
    pub conf_state: ConfState,
    pub snapshot_index: u64,
    pub snapshot_path: Option<PathBuf>,
    /// Set when the node lost durable state: start the core recovering.
    pub recovery: Option<RecoveryStart>,
}

fn data_dir_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StartError {
    let path = path.to_path_buf();
    move |source| StartError::DataDir { op, path, source }
}

/// Checks (or, in a new dir, writes) the id file: a data dir belongs to
/// one node for all time.
fn claim(dir: &Path, id: NodeId) -> Result<(), StartError> {
    let id_file = dir.join("node-id");
    match fs::read_to_string(&id_file) {
        Ok(s) => {
            let found: NodeId = s.trim().parse().map_err(|_| StartError::BadNodeIdFile {
                path: id_file.clone(),
                found: s.trim().to_string(),
            })?;
            if found != id {
                return Err(StartError::WrongNode {
                    dir: dir.to_path_buf(),
                    found,
                    id,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_durably(&id_file, format!("{id}\n").as_bytes())
                .map_err(data_dir_error("write", &id_file))
        }
        Err(e) => Err(StartError::DataDir {
            op: "read",
            path: id_file,
            source: e,
        }),
    }
}

/// Opens (or creates) the data dir of node `id`, recovering snapshot, hard
/// state and log. On a fresh start without `join`, `discover` decides
/// between bootstrapping the cluster from `peers` (one AddNode entry per
/// member, committed at term 1) and recovering as a member whose disk was
/// replaced.
pub fn open(
    dir: &Path,
    id: NodeId,
    peers: &BTreeMap<NodeId, String>,
    join: bool,
    discover: impl FnOnce() -> Result<Decision, StartError>,
) -> Result<Recovered, StartError> {
    fs::create_dir_all(dir).map_err(data_dir_error("create data dir", dir))?;
    claim(dir, id)?;
    let wal_dir = dir.join("wal");
    let (mut wal, rec) = wal::Wal::open(&wal_dir, wal_options()?)?;
    if let Some(t) = &rec.torn_tail {
        warn!(
            "repaired a torn WAL tail in {} at offset {} ({} bytes kept in {})",
            t.segment.display(),
            t.offset,
            t.bytes_cut,
            t.side_file.display()
        );
    }
    for p in &rec.set_aside {
        warn!("a corrupt snapshot was set aside: {}", p.display());
    }
    let storage = MemStorage::new();
    let mut kv = KvStore::new();
    let mut conf_state = ConfState::default();
    let mut snapshot_index = 0;
    let mut snapshot_path = None;
    if rec.snapshot.is_some() {
        let (meta, path) = restore_snapshot(&wal, &wal_dir, &mut kv)?;
        conf_state = meta.conf_state.clone();
        snapshot_index = meta.index;
        snapshot_path = Some(path);
        storage
            .apply_snapshot(Snapshot {
                meta,
                data: Vec::new(),
            })
            .map_err(StartError::Log)?;
    }
    let _ = fs::remove_dir_all(dir.join(INCOMING_DIR));
    let entries: Vec<Entry> = rec
        .entries
        .iter()
        .map(|e| {
            let kind =
                EntryKind::from_byte(e.kind).ok_or_else(|| StartError::UnknownEntryKind {
                    dir: wal_dir.clone(),
                    index: e.index,
                    kind: e.kind,
                })?;
            Ok(Entry {
                index: e.index,
                term: e.term,
                kind,
                data: e.data.clone(),
            })
        })
        .collect::<Result<_, StartError>>()?;
    storage.append(&entries).map_err(StartError::Log)?;
    let mut hs = HardState {
        term: rec.hard_state.term,
        vote: rec.hard_state.vote,
        commit: rec.hard_state.commit,
    };
    let fresh = rec.snapshot.is_none()
        && entries.is_empty()
        && hs == HardState::default()
        && rec.damage.is_none();
    let mut recovery = None;
    if let Some(d) = &rec.damage {
        let what = describe_damage(d);
        let voters = voters_known(&conf_state, &entries, peers);
        if voters.iter().all(|&v| v == id) {
            return Err(StartError::DamagedSoleVoter {
                dir: dir.to_path_buf(),
                damage: what,
            });
        }
        warn!(
            "{what}; node {id} starts recovering: it will not vote or count toward a quorum \
             until the leader has repaired it from the other members (see STATUS recovering=1)"
        );
        if !d.hard_state_intact {
            let last_term = entries.last().map_or(0, |e| e.term);
            hs.term = hs.term.max(d.max_term_seen).max(last_term);
        }
        recovery = Some(RecoveryStart {
            id: crate::policy::random_id(),
            hard_state_lost: !d.hard_state_intact,
        });
    } else if fresh && join {
        // A new member. Should its disk have been replaced instead, starting
        // it recovering keeps it from counting toward any commit before it
        // holds the leader's log (and gets the leader to reset its
        // progress); it costs a new member nothing.
        recovery = Some(RecoveryStart {
            id: crate::policy::random_id(),
            hard_state_lost: false,
        });
    } else if fresh {
        // The test-only switch (`debug.rs`) bootstraps a wiped dir anew.
        let decision = if crate::debug::no_recovery() {
            Decision::Bootstrap
        } else {
            discover()?
        };
        match decision {
            Decision::Bootstrap => {
                bootstrap(&mut wal, &storage, peers)?;
                conf_state = ConfState::with_voters(peers.keys().copied().collect());
            }
            Decision::Recover { term } => {
                // Durable before anything else: a crash from here on
                // restarts recovering, never as a fresh dir.
                wal.mark_damaged(false, term)?;
                hs.term = term;
                recovery = Some(RecoveryStart {
                    id: crate::policy::random_id(),
                    hard_state_lost: true,
                });
            }
        }
    }
    if crate::debug::no_recovery() {
        recovery = None; // TEST ONLY (`debug.rs`): carry on as if intact
    }
    if !fresh || recovery.is_some() {
        let commit = hs
            .commit
            .max(snapshot_index)
            .min(storage.last_index().max(snapshot_index));
        storage.set_hard_state(HardState {
            term: hs.term,
            vote: hs.vote,
            commit,
        });
        if !fresh {
            info!(
                "recovered: snapshot {}, log up to {}, term {}, commit {}",
                snapshot_index,
                storage.last_index(),
                hs.term,
                commit
            );
        }
    }
    // The core starts from the snapshot's membership; the bootstrap entries
    // (or later conf changes) are re-applied as committed entries.
    storage.set_conf_state(conf_state.clone());
    Ok(Recovered {
        wal,
        storage,
        kv,
        applied: snapshot_index,
        conf_state,
        snapshot_index,
        snapshot_path,
        recovery,
    })
}

/// One line on what the WAL found and kept.
fn describe_damage(d: &wal::Damage) -> String {
    let mut s = if d.pending {
        format!(
            "the data dir is still being repaired from earlier damage ({} at offset {}: {:?})",
            d.file.display(),
            d.offset,
            d.reason
        )
    } else {
        format!(
            "damaged data in {} at offset {} ({:?}): kept the log up to index {}",
            d.file.display(),
            d.offset,
            d.reason,
            d.kept_last_index
        )
    };
    if !d.hard_state_intact {
        s.push_str(", the term and vote may be lost");
    }
    if d.snapshot_lost {
        s.push_str(", the snapshot was lost");
    }
    if !d.set_aside.is_empty() {
        let files: Vec<String> = d
            .set_aside
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        s.push_str(&format!(", set aside {}", files.join(" ")));
    }
    s
}

/// The voters this node knows of: the snapshot's, changed by every conf
/// change in the log; `--peers` if it knows nothing at all.
fn voters_known(
    conf: &ConfState,
    entries: &[Entry],
    peers: &BTreeMap<NodeId, String>,
) -> BTreeSet<NodeId> {
    let mut voters: BTreeSet<NodeId> = conf.voters.iter().copied().collect();
    let mut known = !voters.is_empty();
    for e in entries.iter().filter(|e| e.kind == EntryKind::ConfChange) {
        let Ok(cc) = ConfChange::decode(&e.data) else {
            continue;
        };
        known = true;
        match cc.kind {
            ConfChangeKind::AddNode => {
                voters.insert(cc.node_id);
            }
            ConfChangeKind::RemoveNode => {
                voters.remove(&cc.node_id);
            }
            ConfChangeKind::AddLearner => {}
        }
    }
    if known {
        voters
    } else {
        peers.keys().copied().collect()
    }
}

/// Loads the WAL's newest snapshot into `kv`; returns its metadata and file.
fn restore_snapshot(
    wal: &wal::Wal,
    wal_dir: &Path,
    kv: &mut KvStore,
) -> Result<(SnapshotMeta, PathBuf), StartError> {
    let Some(mut r) = wal.snapshot_reader()? else {
        return Err(StartError::DataDir {
            op: "read the snapshot in",
            path: wal_dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "it vanished"),
        });
    };
    let meta = from_wal_meta(r.meta());
    let path = r.path().to_path_buf();
    let bad = |source| StartError::Snapshot {
        path: path.clone(),
        source,
    };
    let mut br = std::io::BufReader::with_capacity(256 << 10, &mut r);
    kv.restore(&mut br).map_err(bad)?;
    drop(br);
    // Read to the end so the reader verifies the data CRC.
    std::io::copy(&mut r, &mut std::io::sink()).map_err(bad)?;
    Ok((meta, path))
}

/// Writes the founding membership: one AddNode entry per member at term 1,
/// committed. Every member started with the same list writes the same log.
fn bootstrap(
    wal: &mut wal::Wal,
    storage: &MemStorage,
    peers: &BTreeMap<NodeId, String>,
) -> Result<(), StartError> {
    let boot: Vec<Entry> = peers
        .iter()
        .enumerate()
        .map(|(i, (&pid, addr))| {
            let cc = ConfChange {
                kind: ConfChangeKind::AddNode,
                node_id: pid,
                context: encode_conf_context(RequestId { node: 0, seq: 0 }, addr),
            };
            Entry {
                index: i as u64 + 1,
                term: 1,
                kind: EntryKind::ConfChange,
                data: cc.encode(),
            }
        })
        .collect();
    let hs = HardState {
        term: 1,
        vote: 0,
        commit: boot.len() as u64,
    };
    let went: Vec<wal::Entry> = boot.iter().map(to_wal_entry).collect();
    wal.save(Some(&to_wal_hard_state(&hs)), &went, true)?;
    storage.append(&boot).map_err(StartError::Log)?;
    storage.set_hard_state(hs);
    info!(
        "bootstrapped a new cluster of {:?}",
        peers.keys().collect::<Vec<_>>()
    );
    Ok(())
}

/// WAL settings. `RAFTNODE_WAL_SEGMENT_BYTES` overrides the segment size
/// (64 MiB), for tests that need to see segments roll over and be released.
/// Released files are deleted in the background: the Ready loop calls
/// `release_to`, and must not wait for a busy disk to unlink them.
fn wal_options() -> Result<wal::Options, StartError> {
    let mut opts = wal::Options {
        remove_in_background: true,
        on_damage: wal::OnDamage::Salvage,
        ..wal::Options::default()
    };
    const NAME: &str = "RAFTNODE_WAL_SEGMENT_BYTES";
    if let Ok(v) = std::env::var(NAME) {
        opts.segment_size = v
            .parse()
            .ok()
            .filter(|&n: &u64| n >= 4096 && n % 8 == 0)
            .ok_or(StartError::BadEnv {
                name: NAME,
                value: v,
            })?;
    }
    Ok(opts)
}

/// Writes a small file so that it survives a crash: temp file, fsync, rename, fsync dir.
pub fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}
