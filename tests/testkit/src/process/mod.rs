//! Test fixture: real `raftnode` processes on free loopback ports, for the
//! root package's process tests (`tests/node.rs`, `tests/fault.rs`,
//! `tests/membership.rs`...).
//!
//! A [`Cluster`] owns a temporary directory with one data dir and one log
//! file per node, starts the binary cargo built for this test run, and can
//! kill (SIGKILL), pause (SIGSTOP/SIGCONT) and restart nodes by pid. It only
//! ever signals processes it started, and kills them all when dropped.
//!
//! The submodules build the fault suite on top: link proxies (`proxy`),
//! the nemesis (`faults`), torn WAL tails (`torn`), disk faults
//! (`damage`: flipped bytes, wiped data dirs), client workloads
//! (`workload`; `counters`, the exactly-once `INCR` clients), their
//! history (`history`), the linearizability checker
//! (`checker`) and one whole fault run (`run`); `attack` is the hostile
//! peer and client tooling of the security tests, `baseline` what their
//! attacks must leave unchanged.
//!
//! Cargo tells an integration test where the node binary and the build's
//! scratch directory are (`CARGO_BIN_EXE_raftnode`, `CARGO_TARGET_TMPDIR`)
//! only while compiling the test itself, and this crate is compiled apart
//! from the tests; [`binary`] and [`TempDir`] find them at run time instead.

pub mod attack;
pub mod baseline;
pub mod checker;
pub mod counters;
pub mod damage;
pub mod faults;
pub mod history;
pub mod proxy;
pub mod run;
pub mod torn;
pub mod workload;

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A port that was free a moment ago; see [`free_ports`].
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct ports that were free a moment ago and that this test
/// process has never handed out before.
///
/// The kernel's `bind(0)` may give back a port it gave a moment earlier,
/// once that socket is closed: picking six ports one after the other that
/// way, as a 3-node cluster did, gave two equal ones in 27 of 20,000 tries
/// on the CI machine. Two nodes on one port means one of them cannot
/// start, and a new cluster waits for every member in `--peers` to answer
/// its start-up probe, so it then never elects a leader. Holding every
/// picked port open until all `n` are known, and never handing a port out
/// twice, rules that out within a test binary (cargo runs test binaries
/// one at a time).
pub fn free_ports(n: usize) -> Vec<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let l = TcpListener::bind("127.0.0.1:0").expect("free port");
        let port = l.local_addr().expect("bound address").port();
        if given.insert(port) {
            ports.push(port);
        }
        held.push(l); // so that the next bind(0) cannot return it
    }
    ports
}

/// A fresh directory under the build's tmp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Under the build's own tmp dir, not the shared /tmp, so that
        // nothing else on the machine cleans it up under a running test.
        let p = target_tmp().join(format!(
            "raftnode-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("RAFTNODE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The `raftnode` binary cargo built for this test run: the one named by
/// `CARGO_BIN_EXE_raftnode`, which `cargo test` also sets when it runs an
/// integration test, else the one beside the directory holding the running
/// test binary (`target/<profile>/deps/..`), for a test binary run by hand.
///
/// # Panics
/// If neither is there: the process tests cannot run without the node.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CARGO_BIN_EXE_raftnode") {
        return PathBuf::from(p);
    }
    let beside = std::env::current_exe().ok().and_then(|exe| {
        let profile = exe.parent()?.parent()?;
        Some(profile.join("raftnode"))
    });
    match beside {
        Some(p) if p.is_file() => p,
        _ => panic!(
            "no raftnode binary: run the process tests with `cargo test`, \
             or set CARGO_BIN_EXE_raftnode to its path"
        ),
    }
}

/// The build's scratch directory `target/tmp` (what cargo calls
/// `CARGO_TARGET_TMPDIR`), found from the node binary in `target/<profile>/`.
fn target_tmp() -> PathBuf {
    let bin = binary();
    match bin.parent().and_then(Path::parent) {
        Some(target) => target.join("tmp"),
        None => std::env::temp_dir(),
    }
}

/// Makes a test CA and certificates for nodes `1..=n` in `dir` with the
/// project's `bin/certs.sh` (which needs `openssl`); returns `dir`.
///
/// # Panics
/// If the script fails: a TLS test cannot run without its certificates.
pub fn make_certs(dir: &Path, n: u64) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bin/certs.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .arg(n.to_string())
        .output()
        .expect("run bin/certs.sh");
    assert!(
        out.status.success(),
        "bin/certs.sh failed (is openssl installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

/// The flags that turn on peer TLS for node `id` with certificates from
/// [`make_certs`].
pub fn peer_tls_args(certs: &Path, id: u64) -> Vec<String> {
    let f = |name: String| certs.join(name).display().to_string();
    vec![
        "--peer-cert-file".into(),
        f(format!("node-{id}.pem")),
        "--peer-key-file".into(),
        f(format!("node-{id}.key")),
        "--peer-trusted-ca-file".into(),
        f("ca.pem".into()),
    ]
}

/// One node of a test cluster.
pub struct Node {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The `--peers` list this node is started with.
    pub peers: String,
    pub args: Vec<String>,
    /// Extra environment variables (failpoints, debug switches).
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
    pub paused: bool,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(binary());
        cmd.arg("--id")
            .arg(self.id.to_string())
            .arg("--peers")
            .arg(&self.peers)
            .arg("--client-addr")
            .arg(&self.client_addr)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args);
        cmd
    }

    /// Starts the process, appending its stderr to the node's log file.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = self
            .command()
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn raftnode");
        self.child = Some(child);
        self.paused = false;
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.paused {
                signal(c.id(), "CONT");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGTERM (a graceful stop), then waits up to `within` for the process
    /// to exit; returns its exit status, or `None` if it had to be killed.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        self.paused = false;
        signal(c.id(), "TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process ended by itself (say, at a failpoint); reaps it.
    pub fn exited(&mut self) -> bool {
        let gone = match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => false,
        };
        if gone {
            self.child = None;
            self.paused = false;
        }
        gone
    }

    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
            self.paused = false;
        }
    }

    pub fn client(&self) -> io::Result<Client> {
        Client::connect(&self.client_addr)
    }

    /// The node's STATUS fields, or None if it does not answer.
    pub fn status(&self) -> Option<Status> {
        let mut c = Client::connect_timeout(&self.client_addr, Duration::from_millis(300)).ok()?;
        c.set_timeout(Duration::from_millis(500));
        Status::parse(&c.request("STATUS").ok()?)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Parsed `STATUS` line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub fields: BTreeMap<String, String>,
}

impl Status {
    pub fn parse(line: &str) -> Option<Status> {
        let rest = line.strip_prefix("STATUS ")?;
        let fields = rest
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Status { fields })
    }

    pub fn num(&self, key: &str) -> u64 {
        self.fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn role(&self) -> &str {
        self.fields.get("role").map(String::as_str).unwrap_or("")
    }
}

/// A line-protocol client.
pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: &str) -> io::Result<Client> {
        Client::connect_timeout(addr, Duration::from_secs(2))
    }

    pub fn connect_timeout(addr: &str, t: Duration) -> io::Result<Client> {
        let sa = addr
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
        let stream = TcpStream::connect_timeout(&sa, t)?;
        stream.set_nodelay(true)?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut c = Client { stream, reader };
        c.set_timeout(Duration::from_secs(10));
        Ok(c)
    }

    pub fn set_timeout(&mut self, t: Duration) {
        let _ = self.stream.set_read_timeout(Some(t));
        let _ = self.stream.set_write_timeout(Some(t));
    }

    /// Closes the sending side, the reading side, or both.
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }

    /// Sends raw bytes (a line must include its `\n`).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one reply line, without its `\n`. EOF is an error.
    pub fn read_line(&mut self) -> io::Result<String> {
        let mut buf = Vec::new();
        let n = self.reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    pub fn request(&mut self, line: &str) -> io::Result<String> {
        self.send_raw(format!("{line}\n").as_bytes())?;
        self.read_line()
    }
}

/// A cluster of test nodes.
pub struct Cluster {
    pub dir: TempDir,
    pub nodes: BTreeMap<u64, Node>,
}

impl Cluster {
    /// Starts `n` nodes bootstrapped together, each with `args` on top of
    /// the addresses and data dir.
    pub fn start(n: u64, args: &[&str]) -> Cluster {
        let c = Cluster::new(n, args);
        let mut c = c;
        for node in c.nodes.values_mut() {
            node.spawn();
        }
        c
    }

    /// Prepares `n` nodes without starting them.
    pub fn new(n: u64, args: &[&str]) -> Cluster {
        let dir = TempDir::new("cluster");
        let all = free_ports(2 * n as usize);
        let ports: Vec<(u16, u16)> = all.chunks(2).map(|p| (p[0], p[1])).collect();
        let peers = ports
            .iter()
            .enumerate()
            .map(|(i, (p, _))| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = BTreeMap::new();
        for (i, (pp, cp)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            nodes.insert(
                id,
                Node {
                    id,
                    client_addr: format!("127.0.0.1:{cp}"),
                    peer_addr: format!("127.0.0.1:{pp}"),
                    data_dir: dir.0.join(format!("node-{id}")),
                    log: dir.0.join(format!("node-{id}.log")),
                    peers: peers.clone(),
                    args: args.iter().map(|s| s.to_string()).collect(),
                    env: Vec::new(),
                    child: None,
                    paused: false,
                },
            );
        }
        Cluster { dir, nodes }
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).expect("node id")
    }

    pub fn path(&self) -> &Path {
        &self.dir.0
    }

    /// The leader as agreed by a running node that calls itself leader,
    /// polled until `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for n in self.nodes.values() {
                if n.child.is_none() || n.paused {
                    continue;
                }
                if let Some(s) = n.status() {
                    if s.role() == "leader" {
                        return Some(n.id);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The leader, as [`Cluster::wait_leader`]; panics with `what` and every
    /// node's log when there is none within `timeout`.
    pub fn expect_leader(&self, timeout: Duration, what: &str) -> u64 {
        match self.wait_leader(timeout) {
            Some(id) => id,
            None => panic!("{what}: no leader within {timeout:?}\n{}", self.logs()),
        }
    }

    /// Waits until every running node has applied the same index, at least
    /// `min_applied`. Returns that index.
    pub fn wait_converged(&self, min_applied: u64, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let applied: Vec<Option<u64>> = self
                .nodes
                .values()
                .filter(|n| n.child.is_some() && !n.paused)
                .map(|n| n.status().map(|s| s.num("applied")))
                .collect();
            if let Some(Some(first)) = applied.first() {
                if *first >= min_applied && applied.iter().all(|a| *a == Some(*first)) {
                    return Some(*first);
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// Retries `line` on node `id` until it gets a reply matching `ok`.
    pub fn request_until(
        &self,
        id: u64,
        line: &str,
        ok: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(mut c) = self.node(id).client() {
                c.set_timeout(Duration::from_secs(3));
                if let Ok(r) = c.request(line) {
                    if ok(&r) {
                        return Some(r);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Node logs, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .values()
            .map(|n| format!("--- node {} ---\n{}", n.id, n.log_tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            n.kill();
        }
    }
}

/// Serialises the process tests of one test binary: on a 2-core machine,
/// several clusters at once would make timing assertions meaningless.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_never_handed_out_twice() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            for p in free_ports(6) {
                assert!(seen.insert(p), "port {p} handed out twice");
                // Still free: a node could bind it.
                TcpListener::bind(("127.0.0.1", p)).expect("a free port");
            }
        }
        assert!(seen.insert(free_port()));
    }
}
