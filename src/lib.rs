//! raftnode: a Raft-replicated key-value node.
//!
//! - [`raft`]: the pure consensus core (no IO, no clock, no global randomness);
//! - [`node`]: the node thread that owns the core (etcd's `node.run`), with
//!   [`policy`]: batching, transfers, leader changes, learner promotion;
//! - [`apply`]: the ready thread: persist, send, apply, advance (etcd's
//!   `raftNode.start`), with [`snapshots`] and [`reads`];
//! - [`datadir`]: recovery and bootstrap of the data dir;
//! - [`transport`]: peer connections, one sender thread per peer;
//! - [`server`], [`protocol`]: the client line protocol (`docs/PROTOCOL.md`),
//!   and [`resp`]: the Redis protocol of `--resp-addr` in the same server;
//! - [`kv`]: the replicated key-value state machine, with [`sessions`]:
//!   client sessions, which make retried writes apply at most once;
//! - [`shared`]: the little state that crosses threads;
//! - [`metrics`]: counters for Prometheus, served on `--metrics-addr`;
//! - [`error`]: why a node could not start, or had to stop;
//! - [`client`]: a client library (failover, sessions, safe retries), used
//!   by `raftctl`.
//!
//! ```text
//!  clients ──► client I/O thread ─requests─► ┌────────────┐ ──Ready──► ┌──────────────┐ ──► WAL (fsync)
//!                   ▲                       │ node thread│            │ ready thread │ ──► KV apply
//!                   └──────replies──────────│  (RawNode) │ ◄─advance─ │              │ ──► replies
//!  peers ──► reader threads ──inbound──────►└────────────┘            └──────────────┘
//!                                                 ▲   tick                    │
//!  peers ◄── sender thread per peer ◄───────────────────── messages ──────────┘
//! ```

pub mod apply;
pub mod bell;
pub mod client;
pub mod datadir;
pub mod debug;
pub mod discovery;
pub mod error;
pub mod kv;
pub mod metrics;
// The multi-version store (revisions, history, compaction), not yet wired in.
#[allow(dead_code)]
mod mvcc;
pub mod node;
pub mod policy;
pub mod protocol;
pub mod raft;
pub mod ratelimit;
pub mod reads;
pub mod reply;
pub mod resp;
pub mod server;
pub mod sessions;
pub mod shared;
pub mod snapshots;
pub mod tls;
pub mod transport;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded};

pub use crate::error::{Fatal, StartError};
use crate::raft::{Config, NodeId, RawNode};
use crate::shared::Shared;
use crate::snapshots::Inbox;
use crate::tls::{ClientTls, PeerTls, TlsFiles};

/// Everything a node is started with (the command line, parsed).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Raft address of every member named on the command line.
    pub peers: BTreeMap<NodeId, String>,
    pub client_addr: String,
    pub data_dir: PathBuf,
    pub join: bool,
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub snapshot_entries: u64,
    pub request_timeout_ms: u64,
    /// `--session-ttl-ms` and `--max-sessions`.
    pub session_limits: sessions::SessionLimits,
    pub security: Security,
    /// `--metrics-addr`: where `GET /metrics` is served; off when `None`.
    pub metrics_addr: Option<String>,
    /// `--resp-addr`: where Redis clients connect (RESP2); off when `None`.
    pub resp_addr: Option<String>,
}

/// Who may talk to the node, and how.
#[derive(Clone, Debug)]
pub struct Security {
    /// `--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`:
    /// mutual TLS between peers. Plain TCP when `None`.
    pub peer_tls: Option<TlsFiles>,
    /// `--cert-file`, `--key-file` (and `--trusted-ca-file`): TLS for clients.
    pub client_tls: Option<TlsFiles>,
    /// `--client-cert-auth`: clients must present a certificate from the
    /// trusted CA.
    pub client_cert_auth: bool,
    /// `--auth-token-file`: clients must send `AUTH <token>` first.
    pub auth_token_file: Option<PathBuf>,
    /// `--max-clients`.
    pub max_clients: usize,
}

impl Default for Security {
    fn default() -> Security {
        Security {
            peer_tls: None,
            client_tls: None,
            client_cert_auth: false,
            auth_token_file: None,
            max_clients: 10_000,
        }
    }
}

/// Whether every address `addr` resolves to is a loopback address.
fn is_loopback(addr: &str) -> bool {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
}

/// Reads the client auth token: the file's first line, at least
/// [`server::MIN_TOKEN_LEN`] bytes without whitespace.
fn read_token(path: &std::path::Path) -> Result<Vec<u8>, StartError> {
    let text = std::fs::read(path).map_err(|source| StartError::DataDir {
        op: "read the auth token file",
        path: path.to_path_buf(),
        source,
    })?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let token = line.strip_suffix(b"\r").unwrap_or(line);
    if token.is_empty() || token.iter().any(|b| b.is_ascii_whitespace()) {
        return Err(StartError::BadTokenFile(path.to_path_buf()));
    }
    if token.len() < server::MIN_TOKEN_LEN {
        return Err(StartError::ShortToken {
            path: path.to_path_buf(),
            len: token.len(),
        });
    }
    Ok(token.to_vec())
}

/// A running node's handles.
pub struct Running {
    node: thread::JoinHandle<()>,
    ready: thread::JoinHandle<Result<(), Fatal>>,
    stop: bell::Waking<()>,
    server: server::Server,
}

/// Asks a running node to stop gracefully; cheap to clone and send.
#[derive(Clone)]
pub struct Stopper(bell::Waking<()>);

impl Stopper {
    /// Starts a graceful stop (see `node.rs`); [`Running::wait`] returns
    /// when it is done. Calling it again does nothing more.
    pub fn stop(&self) {
        let _ = self.0.try_send(());
    }
}

impl Running {
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// Blocks until the node stops: `Ok` after a graceful stop, `Err` when
    /// its storage failed. The WAL is closed when this returns.
    pub fn wait(self) -> Result<(), Fatal> {
        let result = match self.ready.join() {
            Ok(r) => r,
            Err(_) => Err(Fatal::new("running the ready loop", "the thread panicked")),
        };
        let _ = self.node.join();
        if result.is_ok() {
            // Let the connections write their last answers.
            self.server.close(Duration::from_secs(1));
        }
        result
    }
}

/// Starts a node: recovers or bootstraps its data dir, binds its peer and
/// client addresses, and starts its threads.
pub fn start(cfg: NodeConfig) -> Result<Running, StartError> {
    let own = cfg
        .peers
        .get(&cfg.id)
        .ok_or(StartError::NotInPeers(cfg.id))?
        .clone();
    if cfg.election_ticks <= cfg.heartbeat_ticks {
        return Err(StartError::ElectionTicks {
            election: cfg.election_ticks,
            heartbeat: cfg.heartbeat_ticks,
        });
    }
    let bind = |what: &'static str, addr: &str| {
        TcpListener::bind(addr).map_err(|source| StartError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
    };
    let sec = &cfg.security;
    let peer_tls = match &sec.peer_tls {
        Some(f) => Some(Arc::new(PeerTls::load(f).map_err(|e| StartError::Tls {
            what: "peer TLS (--peer-*-file)",
            source: e,
        })?)),
        None => None,
    };
    let client_tls = match &sec.client_tls {
        Some(f) => Some(Arc::new(ClientTls::load(f, sec.client_cert_auth).map_err(
            |e| StartError::Tls {
                what: "client TLS (--cert-file, --key-file, --trusted-ca-file)",
                source: e,
            },
        )?)),
        None => None,
    };
    let auth_token = sec.auth_token_file.as_deref().map(read_token).transpose()?;
    if peer_tls.is_none() && !is_loopback(&own) {
        log::warn!(
            "the raft address {own} is not loopback and peer TLS is off: anyone who can reach \
             it can pose as a member; see the README's Security section"
        );
    }
    // Bind both addresses before touching the disk, so a node started twice
    // fails on the address (or on the WAL lock) without side effects.
    let client_listener = bind("clients", &cfg.client_addr)?;
    let resp_listener = match &cfg.resp_addr {
        Some(addr) => Some(bind("Redis clients (--resp-addr)", addr)?),
        None => None,
    };
    let peer_listener = bind("peers", &own)?;
    let metrics_listener = match &cfg.metrics_addr {
        Some(addr) => Some(bind("metrics", addr)?),
        None => None,
    };
    let shared = Arc::new(Shared::default());
    let metrics = Arc::new(metrics::Metrics::new());
    // Request ids never repeat across restarts (etcd's idutil does the
    // same): milliseconds since the epoch in the high bits; a previous run
    // would have needed 4 million requests per millisecond it lived to
    // reach this run's first id.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    shared.pending().start_ids_at(now_ms << 22);
    let inbox = Arc::new(Inbox::new(cfg.data_dir.join(datadir::INCOMING_DIR)));
    // Everything sent to the node thread rings its bell (`bell.rs`).
    let bell = Arc::new(bell::Bell::default());
    let (inbound_tx, inbound_rx) = bounded(8192);
    let (report_tx, report_rx) = bounded(1024);
    let transport = transport::Transport::start(
        transport::Config {
            id: cfg.id,
            tls: peer_tls.clone(),
            listed: cfg.peers.keys().copied().collect(),
            metrics: metrics.network.clone(),
        },
        peer_listener,
        bell.waking(inbound_tx),
        bell.waking(report_tx),
        shared.clone(),
        inbox.clone(),
    )
    .map_err(|source| StartError::Thread {
        name: "peer listener",
        source,
    })?;
    // Clients are served from here on. Until the data dir is open (a new
    // cluster's member may wait a long time for its peers) they get PING,
    // a STATUS that says `starting=1`, and `ERR NO_LEADER` for the rest.
    let (req_tx, req_rx) = unbounded();
    let (status_tx, status_rx) = unbounded();
    let (snap_tx, snap_rx) = unbounded();
    let server = server::serve(
        client_listener,
        server::Config {
            id: cfg.id,
            requests: bell.waking(req_tx),
            status: bell.waking(status_tx),
            snapshots: snap_tx,
            shared: shared.clone(),
            metrics: metrics.clients.clone(),
            timeout: Duration::from_millis(cfg.request_timeout_ms),
            tls: client_tls,
            auth_token,
            max_clients: sec.max_clients,
            session_limits: cfg.session_limits,
            resp: resp_listener,
            raft_addrs: Arc::new(cfg.peers.clone()),
        },
    )
    .map_err(|source| StartError::Thread {
        name: "client listener",
        source,
    })?;
    // The peer listener runs first: peers with an empty data dir may be asking
    // this node, as it may ask them, whether a cluster already runs.
    let rec = datadir::open(&cfg.data_dir, cfg.id, &cfg.peers, cfg.join, || {
        discovery::discover(cfg.id, &cfg.peers, peer_tls.as_deref())
    })?;

    let mut rc = Config::new(cfg.id);
    rc.election_ticks = cfg.election_ticks;
    rc.heartbeat_ticks = cfg.heartbeat_ticks;
    rc.applied = rec.applied;
    rc.seed = election_seed(cfg.id);
    rc.recovery = rec.recovery;
    // The operator's --peers, less the ids the state machine knows were
    // removed (the core strikes later removals as it applies them).
    rc.listed = cfg
        .peers
        .keys()
        .copied()
        .filter(|id| !rec.kv.cluster.removed.contains(id))
        .collect();
    rc.trust_every_peer = debug::trust_every_peer();
    let raw = RawNode::new(&rc, rec.storage.clone())?;

    let (ready_tx, ready_rx) = bounded(1);
    let (advance_tx, advance_rx) = bounded(1);
    let (conf_tx, conf_rx) = bounded(1);
    let (reads_tx, reads_rx) = unbounded();
    let (stop_tx, stop_rx) = bounded(1);

    let applier = apply::Applier::new(
        cfg.id,
        rec,
        transport,
        shared.clone(),
        inbox,
        apply::ApplyChannels {
            ready: ready_rx,
            advance: bell.waking(advance_tx),
            conf: bell.waking(conf_tx),
            read_notices: reads_rx,
            snapshot_requests: snap_rx,
            replies: server.outbox(),
        },
        cfg.peers.clone(),
        cfg.snapshot_entries,
        &metrics,
    );
    let ready = thread::Builder::new()
        .name("ready".into())
        .spawn(move || applier.run())
        .map_err(|source| StartError::Thread {
            name: "ready",
            source,
        })?;

    let node_loop = node::NodeLoop::new(
        raw,
        node::NodeChannels {
            requests: req_rx,
            inbound: inbound_rx,
            reports: report_rx,
            ready: ready_tx,
            advance: advance_rx,
            conf: conf_rx,
            status: status_rx,
            stop: stop_rx,
            bell: bell.clone(),
        },
        policy::Policy::new(shared.clone(), reads_tx, metrics.server.clone()),
        shared.clone(),
        Duration::from_millis(cfg.tick_ms),
        cfg.election_ticks as u32,
    );
    let node = thread::Builder::new()
        .name("node".into())
        .spawn(move || node_loop.run())
        .map_err(|source| StartError::Thread {
            name: "node",
            source,
        })?;

    if let Some(listener) = metrics_listener {
        let shared = shared.clone();
        let data_dir = cfg.data_dir.clone();
        let scraped = move || {
            let mut s = metrics::Scraped {
                has_leader: shared.has_leader(),
                proposals_pending: shared.pending().len() as u64,
                ..Default::default()
            };
            s.disk_usage(&data_dir);
            s
        };
        metrics::http::serve(listener, metrics.clone(), scraped).map_err(|source| {
            StartError::Thread {
                name: "metrics",
                source,
            }
        })?;
    }
    Ok(Running {
        node,
        ready,
        stop: bell.waking(stop_tx),
        server,
    })
}

/// The seed of this node's election timeouts: fresh per process, and
/// independent between nodes. Two members with equal seeds draw equal
/// timeouts, time out in the same tick and split every vote, round after
/// round. A seed built from id and pid collided often: nodes 1 and 3 started
/// one after the other get pids p and p + 2, and `1 ^ p == 3 ^ (p + 2)`
/// whenever bit 1 of p is clear. std's `RandomState` is keyed from the
/// operating system's randomness once per process; hashing the id with it
/// gives unrelated seeds.
fn election_seed(id: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(id);
    h.write_u32(std::process::id());
    h.finish()
}
