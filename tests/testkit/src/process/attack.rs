//! Attacker tooling for the security tests (`tests/security.rs`,
//! `tests/security_clients.rs`): whatever a hostile process on the network
//! can do to a node, written by hand instead of with the node's own
//! transport, so that it can lie.
//!
//! - [`RawPeer`]: dials a raft port over plain TCP or TLS ([`Wire`]),
//!   presents any id, target and cluster ID in the handshake, reads the
//!   verdict, and sends message frames (`codec::encode_message`), snapshot
//!   headers or raw bytes (length prefixes that lie);
//! - [`TlsClient`]: the line protocol over TLS, with or without a client
//!   certificate;
//! - [`Certs`]: a test CA and certificates made by `bin/certs.sh`, plus a
//!   CA-signed certificate for an id that is not a member;
//! - [`Trickler`]: connections that each send a byte now and then and
//!   never finish their handshake, redialled when the node closes them;
//! - readings of a node from outside: [`rss_kib`] and [`threads`] from
//!   `/proc/<pid>/status`, [`cluster_id`] from its log, and the size of
//!   its `/metrics` ([`metrics_bytes`]).
//!
//! TLS is rustls with the ring provider and TLS 1.3 only, as in the node.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use raftnode::raft::{Message, NodeId};
use raftnode::transport::codec::{self, Verdict};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::Node;

/// Longest the tooling waits for a connect, a TLS handshake or a verdict.
const IO_WAIT: Duration = Duration::from_secs(10);

/// Test certificates in one directory, as `bin/certs.sh` writes them.
pub struct Certs {
    pub dir: PathBuf,
}

/// Whether `openssl` can be run (`bin/certs.sh` needs it).
pub fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Certs {
    /// Runs `bin/certs.sh dir n`: a new CA, node certificates for ids
    /// 1..=n and a client certificate. `None` (with a printed reason) when
    /// openssl is missing, so that a test can skip.
    ///
    /// # Panics
    /// If the script fails for any other reason.
    pub fn make(dir: &Path, n: u64) -> Option<Certs> {
        if !openssl_available() {
            println!("SKIPPED: openssl is not installed; bin/certs.sh needs it for the TLS tests");
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bin/certs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir)
            .arg(n.to_string())
            .output()
            .expect("run bin/certs.sh");
        assert!(
            out.status.success(),
            "bin/certs.sh {} {n} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Certs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn node_cert(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.pem"))
    }
    pub fn node_key(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.key"))
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// The node's peer TLS flags for node `id`.
    pub fn peer_args(&self, id: NodeId) -> Vec<String> {
        let p = |p: PathBuf| p.display().to_string();
        vec![
            "--peer-cert-file".into(),
            p(self.node_cert(id)),
            "--peer-key-file".into(),
            p(self.node_key(id)),
            "--peer-trusted-ca-file".into(),
            p(self.ca()),
        ]
    }

    /// Issues `node-<id>.pem`/`.key` from this CA, shaped as `certs.sh`
    /// shapes node certificates: what an attacker holds who got a
    /// certificate from the cluster's CA for an id that is not a member
    /// (a retired node's, or one issued ahead of an `ADD_NODE`).
    pub fn issue_node(&self, id: NodeId) {
        let name = format!("node-{id}");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&self.dir)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let ext = format!("{name}.ext");
        let pem = format!("{name}.pem");
        run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ]);
        run(&[
            "req",
            "-new",
            "-key",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:{name}\n\
                 subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
            ),
        )
        .expect("write extensions");
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "99",
            "-out",
            &pem,
            "-days",
            "30",
            "-sha256",
            "-extfile",
            &ext,
        ]);
    }
}

/// How a connection is made: plain TCP, or TLS that trusts `ca` for the
/// listener's certificate and presents `cert` (certificate, key) if given.
#[derive(Clone, Debug)]
pub enum Wire {
    Plain,
    Tls {
        ca: PathBuf,
        cert: Option<(PathBuf, PathBuf)>,
    },
}

impl Wire {
    /// TLS presenting node `id`'s certificate from `certs`, trusting `trust`.
    pub fn tls_as(trust: &Certs, certs: &Certs, id: NodeId) -> Wire {
        Wire::Tls {
            ca: trust.ca(),
            cert: Some((certs.node_cert(id), certs.node_key(id))),
        }
    }
}

fn client_config(ca: &Path, cert: Option<&(PathBuf, PathBuf)>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(c.expect("CA certificate")).expect("add CA");
    }
    let b = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let cfg = match cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("read certificate")
                .collect::<Result<Vec<_>, _>>()
                .expect("certificate");
            let key = PrivateKeyDer::from_pem_file(key).expect("read key");
            b.with_client_auth_cert(chain, key).expect("client cert")
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// Connects and, over TLS, completes the handshake within [`IO_WAIT`]
/// (checking that the listener's certificate names `server_name`).
fn open(addr: &str, wire: &Wire, server_name: &str) -> io::Result<Stream> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let sock = TcpStream::connect_timeout(&sa, IO_WAIT)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(IO_WAIT))?;
    sock.set_write_timeout(Some(IO_WAIT))?;
    match wire {
        Wire::Plain => Ok(Stream::Plain(sock)),
        Wire::Tls { ca, cert } => {
            let name = ServerName::try_from(server_name.to_string()).map_err(io::Error::other)?;
            let conn = ClientConnection::new(client_config(ca, cert.as_ref()), name)
                .map_err(io::Error::other)?;
            let mut s = StreamOwned::new(conn, sock);
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock)?;
            }
            Ok(Stream::Tls(Box::new(s)))
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A hand-driven connection to a node's raft port.
pub struct RawPeer {
    stream: Stream,
}

impl RawPeer {
    /// Connects to `addr` (the raft port of node `to`).
    pub fn connect(addr: &str, wire: &Wire, to: NodeId) -> io::Result<RawPeer> {
        Ok(RawPeer {
            stream: open(addr, wire, &format!("node-{to}"))?,
        })
    }

    /// Wraps a plain connection made elsewhere (an idle one, say).
    pub fn from_tcp(sock: TcpStream) -> RawPeer {
        RawPeer {
            stream: Stream::Plain(sock),
        }
    }

    /// Connects, sends a handshake claiming `from` with `cluster_id`, and
    /// reads the verdict. An error means the listener closed or broke the
    /// connection without one (a TLS refusal, for instance).
    pub fn dial(
        addr: &str,
        wire: &Wire,
        from: NodeId,
        to: NodeId,
        cluster_id: u64,
    ) -> io::Result<(RawPeer, Verdict)> {
        let mut p = RawPeer::connect(addr, wire, to)?;
        let v = p.handshake(from, to, cluster_id)?;
        Ok((p, v))
    }

    pub fn handshake(&mut self, from: NodeId, to: NodeId, cluster_id: u64) -> io::Result<Verdict> {
        let mut hello = Vec::new();
        codec::encode_handshake(&mut hello, from, to, cluster_id);
        self.send_bytes(&hello)?;
        self.read_verdict()
    }

    /// Reads one verdict frame.
    pub fn read_verdict(&mut self) -> io::Result<Verdict> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        self.stream.tcp().set_read_timeout(Some(IO_WAIT))?;
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if head[4] != codec::KIND_VERDICT || len == 0 || len > 10 {
            return Err(bad(format!("not a verdict frame: {head:?}")));
        }
        let mut body = vec![0u8; len - 1];
        self.stream.read_exact(&mut body)?;
        let (v, _cluster) = codec::decode_verdict(&body).map_err(|e| bad(e.to_string()))?;
        Ok(v)
    }

    /// Sends one message frame.
    pub fn send(&mut self, m: &Message) -> io::Result<()> {
        let mut out = Vec::new();
        codec::encode_message(&mut out, m);
        self.send_bytes(&out)
    }

    /// Sends raw bytes and flushes them.
    pub fn send_bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.stream.write_all(b)?;
        self.stream.flush()
    }

    /// Whether the listener closes (or breaks) the connection within `t`,
    /// reading and discarding whatever it sends meanwhile. `false`: still
    /// open after `t`.
    pub fn closed_within(&mut self, t: Duration) -> bool {
        let deadline = Instant::now() + t;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.stream.tcp().set_read_timeout(Some(left)).is_err() {
                return true;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// A line-protocol client over TLS (server name `localhost`).
pub struct TlsClient {
    reader: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Connects and completes the TLS handshake. With a client
    /// certificate a listener refuses, the handshake may still succeed
    /// here (TLS 1.3 checks it after the client's last flight): the
    /// refusal shows on the first read.
    pub fn connect(
        addr: &str,
        ca: &Path,
        cert: Option<(PathBuf, PathBuf)>,
    ) -> io::Result<TlsClient> {
        let wire = Wire::Tls {
            ca: ca.to_path_buf(),
            cert,
        };
        match open(addr, &wire, "localhost")? {
            Stream::Tls(s) => Ok(TlsClient {
                reader: BufReader::new(*s),
            }),
            Stream::Plain(_) => unreachable!("a TLS wire gives a TLS stream"),
        }
    }

    pub fn set_timeout(&mut self, t: Duration) {
        let _ = self.reader.get_ref().sock.set_read_timeout(Some(t));
    }

    /// Sends `line` and reads one reply line (without `\n`); EOF is an error.
    pub fn request(&mut self, line: &str) -> io::Result<String> {
        let s = self.reader.get_mut();
        s.write_all(format!("{line}\n").as_bytes())?;
        s.flush()?;
        let mut buf = Vec::new();
        if self.reader.read_until(b'\n', &mut buf)? == 0 {
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
}

/// A field of `/proc/<pid>/status`, as the number before its unit.
fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// The process's resident set (`VmRSS`), KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status(pid, "VmRSS:")
}

/// The process's thread count (`Threads`).
pub fn threads(pid: u32) -> Option<u64> {
    proc_status(pid, "Threads:")
}

/// The cluster ID a node logged ("cluster id is <hex>"), polled from its
/// log until `timeout`.
pub fn cluster_id(node: &Node, timeout: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(&node.log).unwrap_or_default();
        let id = text
            .lines()
            .filter_map(|l| l.split("cluster id is ").nth(1))
            .filter_map(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .next_back();
        if id.is_some() || Instant::now() >= deadline {
            return id;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The size of node's `/metrics` body at `addr` (`--metrics-addr`), bytes.
pub fn metrics_bytes(addr: &str) -> io::Result<usize> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(IO_WAIT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no HTTP head"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, head.to_string()));
    }
    Ok(body.len())
}

/// Connections to one raft port that each send one byte of `bytes` every
/// `every` (cycling), so that none finishes its handshake for a long
/// time: the slow dialer of issue 21. A connection the node closes (or
/// answers: a verdict means it is closing) is redialled at the next round,
/// so the node faces `n` of them all the time.
pub struct Trickler {
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    redials: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
}

impl Trickler {
    pub fn start(addr: &str, n: usize, bytes: Vec<u8>, every: Duration) -> Trickler {
        assert!(!bytes.is_empty());
        let sa: SocketAddr = addr.parse().expect("a socket address");
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let redials = Arc::new(AtomicUsize::new(0));
        let (s, o, r) = (stop.clone(), open.clone(), redials.clone());
        let handle = thread::spawn(move || {
            let mut conns: Vec<Option<(TcpStream, usize)>> = (0..n).map(|_| None).collect();
            let mut first = true;
            while !s.load(Ordering::Relaxed) {
                for slot in conns.iter_mut() {
                    if let Some((sock, sent)) = slot {
                        let mut peek = [0u8; 1];
                        let closed = match sock.peek(&mut peek) {
                            Ok(_) => true, // closed, or a verdict: closing
                            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                        };
                        let b = bytes[*sent % bytes.len()];
                        if closed || (&*sock).write_all(&[b]).is_err() {
                            *slot = None;
                        } else {
                            *sent += 1;
                        }
                    }
                    if slot.is_none() {
                        if !first {
                            r.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Ok(sock) = TcpStream::connect_timeout(&sa, IO_WAIT) {
                            let _ = sock.set_nonblocking(true);
                            let _ = (&sock).write_all(&bytes[..1]);
                            *slot = Some((sock, 1));
                        }
                    }
                }
                first = false;
                o.store(conns.iter().flatten().count(), Ordering::Relaxed);
                thread::sleep(every);
            }
        });
        Trickler {
            stop,
            open,
            redials,
            handle: Some(handle),
        }
    }

    /// Connections open after the last round.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections redialled so far because the node closed them.
    pub fn redials(&self) -> usize {
        self.redials.load(Ordering::Relaxed)
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
