//! Link proxies: one small TCP proxy per directed peer link, so that tests
//! can cut, delay and heal the network between real processes.
//!
//! Peer connections carry frames one way (the dialer sends them; the
//! listener answers only the handshake, and TLS talks both ways), so the
//! link from node A to node B is one proxy: A's `--peers` names B at the
//! proxy's address, and the proxy forwards to B's real peer address, and
//! the answers back. [`Net`] builds the full mesh for a cluster and
//! expresses partitions as sets of blocked directed links.
//!
//! A proxy works on bytes, not frames. Every change of mode severs the
//! connections it has open, so the dialer redials and the stream restarts
//! with a fresh handshake (dropping bytes from the middle of a live stream
//! would only desynchronise the framing):
//!
//! - [`Mode::Pass`]: bytes are forwarded as they come;
//! - [`Mode::Blackhole`]: connections are accepted and everything read is
//!   discarded, as a network that silently drops packets (the sender sees no
//!   error, raft sees no answer);
//! - [`Mode::Delay`]: bytes are forwarded after a fixed delay, in order.
//!
//! Proxies listen on free loopback ports and stop when dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;

/// What a link does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    Delay(Duration),
}

struct State {
    mode: Mutex<Mode>,
    /// Bumped on every mode change; a connection from an older epoch closes.
    epoch: AtomicU64,
    stop: AtomicBool,
}

impl State {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One directed link: listens on `listen`, forwards to `target` (and the
/// target's answers back).
pub struct LinkProxy {
    pub listen: String,
    pub target: String,
    state: Arc<State>,
}

impl LinkProxy {
    pub fn start(target: &str) -> LinkProxy {
        // Not bind(0): that could return a node port that `free_ports` has
        // picked and let go, before the node binds it.
        let listener = TcpListener::bind(("127.0.0.1", super::free_port())).expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let listen = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Pass),
            epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        let tgt: SocketAddr = target.parse().expect("target address");
        thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, tgt, st))
            .expect("proxy thread");
        LinkProxy {
            listen,
            target: target.to_string(),
            state,
        }
    }

    pub fn set(&self, mode: Mode) {
        let mut m = self.state.mode.lock().unwrap_or_else(|e| e.into_inner());
        if *m != mode {
            *m = mode;
            self.state.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn mode(&self) -> Mode {
        self.state.mode()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, st: Arc<State>) {
    while !st.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((down, _)) => {
                let st = st.clone();
                let _ = thread::Builder::new()
                    .name("proxy-conn".into())
                    .stack_size(128 << 10)
                    .spawn(move || pump(down, target, &st));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Moves bytes between the dialer (`down`) and the target, both ways,
/// until the mode changes, either side fails, or the proxy stops.
fn pump(down: TcpStream, target: SocketAddr, st: &Arc<State>) {
    let epoch = st.epoch.load(Ordering::SeqCst);
    let mode = st.mode();
    let _ = down.set_nonblocking(false);
    let _ = down.set_nodelay(true);
    let up = match mode {
        Mode::Blackhole => None,
        _ => match TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                Some(s)
            }
            Err(_) => {
                let _ = down.shutdown(Shutdown::Both);
                return;
            }
        },
    };
    // The answers (verdicts, TLS records) travel back the same way.
    let back = match (&up, down.try_clone()) {
        (Some(u), Ok(d)) => match u.try_clone() {
            Ok(u) => {
                let st = st.clone();
                thread::Builder::new()
                    .name("proxy-back".into())
                    .stack_size(128 << 10)
                    .spawn(move || forward_or_discard(u, Some(d), mode, &st, epoch))
                    .ok()
            }
            Err(_) => None,
        },
        _ => None,
    };
    forward_or_discard(down, up, mode, st, epoch);
    if let Some(h) = back {
        let _ = h.join();
    }
}

/// Forwards `down` to `up` as `mode` says (discarding everything without
/// `up`) until the epoch changes or a side fails; then closes both.
fn forward_or_discard(down: TcpStream, up: Option<TcpStream>, mode: Mode, st: &State, epoch: u64) {
    let _ = down.set_read_timeout(Some(Duration::from_millis(50)));
    if let Some(u) = &up {
        let _ = u.set_write_timeout(Some(Duration::from_secs(1)));
    }
    // Delayed bytes go through a queue to a writer thread.
    let (delay_tx, writer) = match (mode, &up) {
        (Mode::Delay(_), Some(up)) => {
            let (tx, rx) = unbounded::<(Instant, Vec<u8>)>();
            let mut w = up.try_clone().expect("clone");
            let h = thread::spawn(move || {
                while let Ok((at, bytes)) = rx.recv() {
                    let now = Instant::now();
                    if at > now {
                        thread::sleep(at - now);
                    }
                    if w.write_all(&bytes).is_err() {
                        return;
                    }
                }
            });
            (Some(tx), Some(h))
        }
        _ => (None, None),
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut down_r = &down;
    loop {
        if st.stop.load(Ordering::Relaxed) || st.epoch.load(Ordering::SeqCst) != epoch {
            break;
        }
        match down_r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => match (mode, &up) {
                (Mode::Blackhole, _) => {}
                (Mode::Delay(d), Some(_)) => {
                    if let Some(tx) = &delay_tx {
                        let _ = tx.send((Instant::now() + d, buf[..n].to_vec()));
                    }
                }
                (_, Some(u)) => {
                    if (&*u).write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                _ => break,
            },
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    drop(delay_tx);
    if let Some(u) = &up {
        let _ = u.shutdown(Shutdown::Both);
    }
    let _ = down.shutdown(Shutdown::Both);
    if let Some(h) = writer {
        let _ = h.join();
    }
}

/// The full mesh of link proxies of a cluster of nodes `1..=n`.
pub struct Net {
    pub ids: Vec<u64>,
    /// `(from, to)` -> the proxy carrying from's frames to `to`.
    pub links: std::collections::BTreeMap<(u64, u64), LinkProxy>,
}

impl Net {
    /// Starts a proxy for every ordered pair; `peer_addrs[id]` is where node
    /// `id` really listens.
    pub fn start(peer_addrs: &std::collections::BTreeMap<u64, String>) -> Net {
        let ids: Vec<u64> = peer_addrs.keys().copied().collect();
        let mut links = std::collections::BTreeMap::new();
        for &a in &ids {
            for &b in &ids {
                if a != b {
                    links.insert((a, b), LinkProxy::start(&peer_addrs[&b]));
                }
            }
        }
        Net { ids, links }
    }

    /// The `--peers` list for node `id`: itself at its real address, every
    /// other node at the proxy of the link from `id` to it.
    pub fn peers_for(&self, id: u64, own_addr: &str) -> String {
        self.ids
            .iter()
            .map(|&j| {
                if j == id {
                    format!("{j}={own_addr}")
                } else {
                    format!("{j}={}", self.links[&(id, j)].listen)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every link passes traffic again.
    pub fn heal(&self) {
        for l in self.links.values() {
            l.set(Mode::Pass);
        }
    }

    /// Cuts every link between `a` and `b`, both directions.
    pub fn cut(&self, a: u64, b: u64) {
        self.links[&(a, b)].set(Mode::Blackhole);
        self.links[&(b, a)].set(Mode::Blackhole);
    }

    /// Splits the nodes into `side` and the rest; no traffic crosses.
    pub fn split(&self, side: &[u64]) {
        for &a in &self.ids {
            for &b in &self.ids {
                if a < b && side.contains(&a) != side.contains(&b) {
                    self.cut(a, b);
                }
            }
        }
    }

    /// Two sides that cannot talk to each other, and `bridge`, which talks
    /// to both.
    pub fn bridge(&self, left: &[u64], bridge: u64) {
        for &a in left {
            for &b in &self.ids {
                if b != bridge && !left.contains(&b) {
                    self.cut(a, b);
                }
            }
        }
    }

    /// Delays traffic on every link from or to `id`.
    pub fn slow(&self, id: u64, d: Duration) {
        for ((a, b), l) in &self.links {
            if *a == id || *b == id {
                l.set(Mode::Delay(d));
            }
        }
    }

    /// Links not passing traffic right now, as text.
    pub fn describe(&self) -> String {
        let cut: Vec<String> = self
            .links
            .iter()
            .filter(|(_, l)| l.mode() != Mode::Pass)
            .map(|((a, b), l)| format!("{a}->{b}:{:?}", l.mode()))
            .collect();
        if cut.is_empty() {
            "all links pass".into()
        } else {
            cut.join(" ")
        }
    }
}
