//! raftnode: a Raft-replicated key-value node.
//!
//! - [`raft`]: the pure consensus core (no IO, no clock, no global randomness);
//! - [`node`]: the node thread that owns the core (etcd's `node.run`);
//! - [`apply`]: the ready-handling thread: persist, send, apply, advance;
//! - [`transport`]: peer connections, one sender thread per peer;
//! - [`server`], [`protocol`]: the client line protocol;
//! - [`kv`]: the replicated key-value state machine.
//!
//! ```text
//!  clients ──► client threads ──requests──► ┌────────────┐ ──Ready──► ┌──────────────┐ ──► WAL (fsync)
//!                   ▲                       │ node thread│            │ ready thread │ ──► KV apply
//!                   └──────replies──────────│  (RawNode) │ ◄─advance─ │              │ ──► replies
//!  peers ──► reader threads ──inbound──────►└────────────┘            └──────────────┘
//!                                                 ▲   tick                    │
//!  peers ◄── sender thread per peer ◄───────────────────── messages ──────────┘
//! ```

pub mod apply;
pub mod debug;
pub mod kv;
pub mod node;
pub mod protocol;
pub mod raft;
pub mod reply;
pub mod server;
pub mod transport;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded};

use crate::raft::{Config, NodeId, RawNode};

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
}

/// A running node's handles.
pub struct Running {
    node: thread::JoinHandle<()>,
}

impl Running {
    /// Blocks until the node thread ends.
    pub fn wait(self) {
        let _ = self.node.join();
    }
}

/// Starts a node: recovers or bootstraps its data dir, binds its peer and
/// client addresses, and starts its threads. Every failure is one line.
pub fn start(cfg: NodeConfig) -> Result<Running, String> {
    let own = cfg
        .peers
        .get(&cfg.id)
        .ok_or_else(|| format!("--peers does not name this node (id {})", cfg.id))?
        .clone();
    if cfg.election_ticks <= cfg.heartbeat_ticks {
        return Err(format!(
            "--election-ticks ({}) must be greater than --heartbeat-ticks ({})",
            cfg.election_ticks, cfg.heartbeat_ticks
        ));
    }
    // Bind both addresses before touching the disk, so a node started twice
    // fails on the address (or on the WAL lock) without side effects.
    let client_listener = TcpListener::bind(&cfg.client_addr)
        .map_err(|e| format!("cannot listen for clients on {}: {e}", cfg.client_addr))?;
    let peer_listener =
        TcpListener::bind(&own).map_err(|e| format!("cannot listen for peers on {own}: {e}"))?;
    let rec = apply::open_data_dir(&cfg.data_dir, cfg.id, &cfg.peers, cfg.join)?;

    let shared = Arc::new(node::Shared::default());
    // Request ids never repeat across restarts (etcd's idutil does the
    // same): milliseconds since the epoch in the high bits; a previous run
    // would have needed 4 million requests per millisecond it lived to
    // reach this run's first id.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    shared.start_seq_at(now_ms << 22);
    let (inbound_tx, inbound_rx) = bounded(8192);
    let (report_tx, report_rx) = bounded(1024);
    let snapshots = {
        let shared = shared.clone();
        transport::SnapshotFiles {
            current: Arc::new(move || shared.snapshot_file()),
            incoming: cfg.data_dir.join(apply::INCOMING_DIR),
        }
    };
    let transport =
        transport::Transport::start(cfg.id, peer_listener, inbound_tx, report_tx, snapshots)
            .map_err(|e| format!("cannot start the peer listener on {own}: {e}"))?;

    let mut rc = Config::new(cfg.id);
    rc.election_ticks = cfg.election_ticks;
    rc.heartbeat_ticks = cfg.heartbeat_ticks;
    rc.applied = rec.applied;
    rc.seed = cfg.id ^ std::process::id() as u64 ^ (rec.storage.hard_state().term << 32);
    let raw = RawNode::new(&rc, rec.storage.clone()).map_err(|e| e.to_string())?;

    let (req_tx, req_rx) = unbounded();
    let (ready_tx, ready_rx) = bounded(1);
    let (advance_tx, advance_rx) = bounded(1);
    let (conf_tx, conf_rx) = bounded(1);
    let (reads_tx, reads_rx) = unbounded();
    let (status_tx, status_rx) = unbounded();
    let (snap_tx, snap_rx) = unbounded();
    let (_stop_tx, stop_rx) = bounded::<()>(1);

    let applier = apply::Applier::new(
        cfg.id,
        rec,
        transport,
        shared.clone(),
        apply::ApplyChannels {
            ready: ready_rx,
            advance: advance_tx,
            conf: conf_tx,
            read_batches: reads_rx,
            snapshot_requests: snap_rx,
        },
        cfg.peers.clone(),
        cfg.snapshot_entries,
    );
    thread::Builder::new()
        .name("ready".into())
        .spawn(move || applier.run())
        .map_err(|e| format!("cannot start the ready thread: {e}"))?;

    let node_loop = node::NodeLoop::new(
        raw,
        node::NodeChannels {
            requests: req_rx,
            inbound: inbound_rx,
            reports: report_rx,
            ready: ready_tx,
            advance: advance_rx,
            conf: conf_rx,
            read_batches: reads_tx,
            status: status_rx,
            stop: stop_rx,
        },
        shared.clone(),
        cfg.tick_ms,
    );
    let node = thread::Builder::new()
        .name("node".into())
        .spawn(move || {
            // Keep the stop sender alive as long as the node runs.
            let _stop = _stop_tx;
            node_loop.run()
        })
        .map_err(|e| format!("cannot start the node thread: {e}"))?;

    server::serve(
        client_listener,
        server::ClientContext {
            id: cfg.id,
            requests: req_tx,
            status: status_tx,
            snapshots: snap_tx,
            shared,
            timeout: Duration::from_millis(cfg.request_timeout_ms),
        },
    )
    .map_err(|e| format!("cannot start the client server: {e}"))?;
    Ok(Running { node })
}
