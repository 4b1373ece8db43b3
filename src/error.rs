//! The two ways a node fails: it cannot start ([`StartError`]), or it must
//! stop because its storage failed under it ([`Fatal`]).
//!
//! Both are returned to the binary, which prints them as one line and exits
//! non-zero; library code never exits the process, so tests can start nodes
//! in-process and look at the error.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::raft::{self, NodeId, StorageError};

/// Why a node could not start. `Display` gives one line for stderr.
#[derive(Debug)]
pub enum StartError {
    /// `--peers` has no entry for this node, so it has nowhere to listen.
    NotInPeers(NodeId),
    /// `--election-ticks` must exceed `--heartbeat-ticks`.
    ElectionTicks { election: usize, heartbeat: usize },
    /// An address could not be bound (`what` is "clients" or "peers").
    Bind {
        what: &'static str,
        addr: String,
        source: io::Error,
    },
    /// A file or directory of the data dir could not be read or written.
    DataDir {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The `node-id` file holds something that is not a node id.
    BadNodeIdFile { path: PathBuf, found: String },
    /// The data dir was created by another node.
    WrongNode {
        dir: PathBuf,
        found: NodeId,
        id: NodeId,
    },
    /// The WAL refused to open or to write (the message names file and offset).
    Wal(wal::Error),
    /// The snapshot the WAL recovered could not be loaded.
    Snapshot { path: PathBuf, source: io::Error },
    /// The WAL holds an entry of a kind this build does not know.
    UnknownEntryKind { dir: PathBuf, index: u64, kind: u8 },
    /// The recovered log does not fit the recovered snapshot.
    Log(StorageError),
    /// An environment override has a value that cannot be used.
    BadEnv { name: &'static str, value: String },
    /// The consensus core refused the recovered state or the configuration.
    Raft(raft::Error),
    /// An OS thread could not be started.
    Thread {
        name: &'static str,
        source: io::Error,
    },
    /// A certificate, key or CA file cannot be used.
    Tls {
        what: &'static str,
        source: crate::tls::TlsError,
    },
    /// The auth token file holds no usable token.
    BadTokenFile(PathBuf),
    /// The auth token is too short to resist guessing.
    ShortToken { path: PathBuf, len: usize },
    /// An empty data dir, and the peers' answers forbid both bootstrapping
    /// and recovering (`discovery.rs`); the text says why and what to do.
    Discovery(String),
    /// The data dir lost state and no other voter can repair it.
    DamagedSoleVoter { dir: PathBuf, damage: String },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::NotInPeers(id) => write!(f, "--peers does not name this node (id {id})"),
            StartError::ElectionTicks {
                election,
                heartbeat,
            } => write!(
                f,
                "--election-ticks ({election}) must be greater than --heartbeat-ticks ({heartbeat})"
            ),
            StartError::Bind { what, addr, source } => {
                write!(f, "cannot listen for {what} on {addr}: {source}")
            }
            StartError::DataDir { op, path, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())
            }
            StartError::BadNodeIdFile { path, found } => write!(
                f,
                "{} is not a node id file (holds {found:?})",
                path.display()
            ),
            StartError::WrongNode { dir, found, id } => write!(
                f,
                "data dir {} belongs to node {found}, not node {id}",
                dir.display()
            ),
            StartError::Wal(e) => write!(f, "{e}"),
            StartError::Snapshot { path, source } => {
                write!(f, "snapshot {}: {source}", path.display())
            }
            StartError::UnknownEntryKind { dir, index, kind } => write!(
                f,
                "WAL in {} holds entry {index} of unknown kind {kind}",
                dir.display()
            ),
            StartError::Log(e) => write!(f, "WAL entries do not follow the snapshot: {e}"),
            StartError::BadEnv { name, value } => {
                write!(f, "{name}={value:?}: need a multiple of 8, at least 4096")
            }
            StartError::Raft(e) => write!(f, "{e}"),
            StartError::Thread { name, source } => {
                write!(f, "cannot start the {name} thread: {source}")
            }
            StartError::Tls { what, source } => write!(f, "{what}: {source}"),
            StartError::BadTokenFile(p) => write!(
                f,
                "{}: the auth token is the first line, not empty, without spaces",
                p.display()
            ),
            StartError::ShortToken { path, len } => write!(
                f,
                "{}: the auth token is {len} bytes; it must be at least {} (use a random one, \
                 e.g. `openssl rand -hex 16`)",
                path.display(),
                crate::server::MIN_TOKEN_LEN
            ),
            StartError::Discovery(why) => f.write_str(why),
            StartError::DamagedSoleVoter { dir, damage } => write!(
                f,
                "{}: {damage}; this node is the only voter, so no peer can repair it. Restore \
                 the data dir from a backup; or, to accept losing what may be missing, remove \
                 {} and start again",
                dir.display(),
                dir.join("wal").join("DAMAGE").display()
            ),
        }
    }
}

impl std::error::Error for StartError {}

impl From<wal::Error> for StartError {
    fn from(e: wal::Error) -> StartError {
        StartError::Wal(e)
    }
}

impl From<raft::Error> for StartError {
    fn from(e: raft::Error) -> StartError {
        StartError::Raft(e)
    }
}

/// A storage failure that stops a running node: once a write to its disk
/// failed, a node must not acknowledge anything more. A restart recovers
/// from what reached the disk.
#[derive(Debug)]
pub struct Fatal {
    /// What the node was doing ("writing the WAL", "saving a snapshot", ...).
    pub during: &'static str,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl Fatal {
    pub fn new(
        during: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Fatal {
        Fatal {
            during,
            source: source.into(),
        }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}; stopped (a restart recovers from the WAL)",
            self.during, self.source
        )
    }
}

impl std::error::Error for Fatal {}
