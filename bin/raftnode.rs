//! The raftnode binary: parses the command line of `docs/PROTOCOL.md` §1
//! and runs one cluster member until it is stopped.
//!
//! SIGTERM or Ctrl-C stop the node gracefully (see `src/node.rs`): a leader
//! hands its leadership over first, requests in flight are answered, the
//! WAL is closed, and the process exits 0. A second signal exits at once,
//! which is as safe as `kill -9`: nothing acknowledged is lost either way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use raftnode::tls::TlsFiles;
use raftnode::{NodeConfig, Security, Stopper};

/// One member of a raftnode cluster: a Raft-replicated key-value store.
///
/// Clients connect to --client-addr and speak a line protocol (PUT, GET, DEL,
/// CAS, INCR, APPEND, STATUS, ADD_NODE, REMOVE_NODE, TRANSFER_LEADER,
/// SNAPSHOT, PING, AUTH, SESSION and #<seq> tags); with --resp-addr, Redis
/// clients (redis-cli, redis-benchmark, client libraries) connect too. On a
/// network, turn on peer TLS and client TLS or a token (see the Security
/// options and the README).
/// With no flags, starts a one-node cluster: raft on 127.0.0.1:7001, clients
/// on 127.0.0.1:8001, data in data/node-1. SIGTERM or Ctrl-C stop it
/// gracefully (a leader hands over its leadership first); a second signal
/// stops it at once.
#[derive(Parser, Debug)]
#[command(name = "raftnode", version, about, long_about)]
struct Cli {
    /// This node's id, an integer >= 1, unique for all time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..u64::MAX))]
    id: u64,

    /// Raft (peer-to-peer) address of every voting member, this node
    /// included, as id=host:port,... This node listens on its own entry; the
    /// others are where it dials them. Default: <id>=127.0.0.1:<7000+id>.
    #[arg(long, value_name = "LIST")]
    peers: Option<String>,

    /// Where clients connect. Default: 127.0.0.1:<8000+id>.
    #[arg(long, value_name = "HOST:PORT")]
    client_addr: Option<String>,

    /// Directory for WAL segments and snapshots; created if missing.
    /// Default: data/node-<id>.
    #[arg(long, value_name = "PATH")]
    data_dir: Option<PathBuf>,

    /// Start with an empty log as a new member of a running cluster, which
    /// then adds it with ADD_NODE. Never bootstraps a cluster.
    #[arg(long)]
    join: bool,

    /// Length of one logical tick, in milliseconds.
    #[arg(long, default_value_t = 100, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    tick_ms: u64,

    /// Election timeout in ticks (randomised in [N, 2N)).
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    election_ticks: u64,

    /// Heartbeat interval in ticks; must be less than --election-ticks.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_ticks: u64,

    /// Take a snapshot and compact the log after N applied entries since the
    /// last one (0 disables automatic snapshots).
    #[arg(long, default_value_t = 10000, value_name = "N")]
    snapshot_entries: u64,

    /// Where Redis clients connect (redis-cli, redis-benchmark, Redis client
    /// libraries): RESP2 with the commands listed in the README, served
    /// with the same guarantees as --client-addr (TLS and the auth token
    /// apply to it too). Off when not given.
    #[arg(long, value_name = "HOST:PORT")]
    resp_addr: Option<String>,

    /// How long a client request may wait before ERR TIMEOUT.
    #[arg(long, default_value_t = 5000, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,

    /// A client session idle for longer than this (in log time, which the
    /// leader stamps into the log once a second) expires, and its writes
    /// then get ERR SESSION_EXPIRED. Put into every session this node
    /// registers; the newest registration's value holds for all sessions.
    #[arg(long, default_value_t = raftnode::sessions::DEFAULT_TTL_MS, value_name = "MS", value_parser = clap::value_parser!(u64).range(1000..), help_heading = "Sessions")]
    session_ttl_ms: u64,

    /// Most client sessions kept at once; registering one more evicts the
    /// least recently active. Put into every session this node registers.
    #[arg(long, default_value_t = raftnode::sessions::DEFAULT_MAX_SESSIONS, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=raftnode::sessions::MAX_SESSIONS_LIMIT), help_heading = "Sessions")]
    max_sessions: u64,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (text format
    /// 0.0.4). Off when not given. The metrics are not secret but reveal
    /// the cluster's shape and load: bind a loopback or private address.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,

    /// Certificate (PEM) this node presents to its peers. With
    /// --peer-key-file and --peer-trusted-ca-file it turns on mutual TLS
    /// between peers; the certificate must carry the DNS name node-<id>.
    #[arg(long, value_name = "PATH", requires_all = ["peer_key_file", "peer_trusted_ca_file"], help_heading = "Security")]
    peer_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --peer-cert-file.
    #[arg(
        long,
        value_name = "PATH",
        requires = "peer_cert_file",
        help_heading = "Security"
    )]
    peer_key_file: Option<PathBuf>,

    /// CA (PEM) that signed every peer's certificate; peers must present one.
    #[arg(
        long,
        value_name = "PATH",
        requires = "peer_cert_file",
        help_heading = "Security"
    )]
    peer_trusted_ca_file: Option<PathBuf>,

    /// Certificate (PEM) presented to clients; with --key-file it turns on
    /// TLS on the client port.
    #[arg(
        long,
        value_name = "PATH",
        requires = "key_file",
        help_heading = "Security"
    )]
    cert_file: Option<PathBuf>,

    /// Private key (PEM) of --cert-file.
    #[arg(
        long,
        value_name = "PATH",
        requires = "cert_file",
        help_heading = "Security"
    )]
    key_file: Option<PathBuf>,

    /// CA (PEM) for client certificates (needs --cert-file); with
    /// --client-cert-auth every client must present a certificate it signed.
    #[arg(
        long,
        value_name = "PATH",
        requires = "cert_file",
        help_heading = "Security"
    )]
    trusted_ca_file: Option<PathBuf>,

    /// Require client certificates signed by --trusted-ca-file.
    #[arg(long, requires = "trusted_ca_file", help_heading = "Security")]
    client_cert_auth: bool,

    /// File whose first line is a shared secret: every client connection
    /// must send AUTH <token> first, or gets ERR NOAUTH.
    #[arg(long, value_name = "PATH", help_heading = "Security")]
    auth_token_file: Option<PathBuf>,

    /// Most client connections at once; over it a connection gets ERR BUSY
    /// and is closed.
    #[arg(long, default_value_t = 10000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Security")]
    max_clients: u64,
}

/// Parses `1=127.0.0.1:7001,2=...`.
fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("--peers entry {item:?} is not id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|&i| i >= 1)
            .ok_or_else(|| format!("--peers entry {item:?}: {id:?} is not a node id >= 1"))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(format!("--peers entry {item:?}: {addr:?} is not host:port"));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("--peers names node {id} twice"));
        }
    }
    if peers.is_empty() {
        return Err("--peers is empty".into());
    }
    Ok(peers)
}

/// Turns the first SIGTERM or SIGINT into a graceful stop, and a second
/// one into an immediate exit.
fn stop_on_signals(stopper: Stopper) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut got = signals.forever();
            if let Some(sig) = got.next() {
                log::info!("signal {sig}: stopping gracefully (send it again to stop at once)");
                stopper.stop();
            }
            if got.next().is_some() {
                eprintln!("raftnode: second signal: exiting now");
                std::process::exit(1);
            }
        })?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let id = cli.id;
    let peers = match cli.peers.as_deref() {
        Some(s) => match parse_peers(s) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("raftnode: {e}");
                return ExitCode::from(2);
            }
        },
        None => BTreeMap::from([(id, format!("127.0.0.1:{}", 7000 + id))]),
    };
    let cfg = NodeConfig {
        id,
        peers,
        client_addr: cli
            .client_addr
            .unwrap_or_else(|| format!("127.0.0.1:{}", 8000 + id)),
        data_dir: cli
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("data/node-{id}"))),
        join: cli.join,
        tick_ms: cli.tick_ms,
        election_ticks: cli.election_ticks as usize,
        heartbeat_ticks: cli.heartbeat_ticks as usize,
        snapshot_entries: cli.snapshot_entries,
        request_timeout_ms: cli.request_timeout_ms,
        session_limits: raftnode::sessions::SessionLimits {
            ttl_ms: cli.session_ttl_ms,
            max: cli.max_sessions,
        },
        metrics_addr: cli.metrics_addr,
        resp_addr: cli.resp_addr,
        security: Security {
            peer_tls: match (cli.peer_cert_file, cli.peer_key_file) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert,
                    key,
                    ca: cli.peer_trusted_ca_file,
                }),
                _ => None,
            },
            client_tls: match (cli.cert_file, cli.key_file) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert,
                    key,
                    ca: cli.trusted_ca_file,
                }),
                _ => None,
            },
            client_cert_auth: cli.client_cert_auth,
            auth_token_file: cli.auth_token_file,
            max_clients: cli.max_clients as usize,
        },
    };
    let running = match raftnode::start(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("raftnode: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = stop_on_signals(running.stopper()) {
        eprintln!("raftnode: cannot install the signal handler: {e}");
        return ExitCode::FAILURE;
    }
    match running.wait() {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            eprintln!("raftnode: {e}");
            ExitCode::FAILURE
        }
    }
}
