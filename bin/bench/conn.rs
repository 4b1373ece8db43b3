//! One client's connection to a node: plain TCP, or TLS 1.3 over it.
//!
//! [`Conn`] is what a dedicated client talks through: [`Conn::send`] writes
//! a request, [`Conn::read_reply`] reads one reply line, [`Conn::shutdown`]
//! ends the connection. The client loop is the same for both kinds, so a TLS
//! row and a plain row differ in the transport only.
//!
//! TLS (`--tls-ca`): rustls with the `ring` provider, TLS 1.3 only, as the
//! node speaks it. The node's certificate must chain to the one CA given and
//! carry the server name (`--tls-server-name`, `localhost` by default, which
//! the certificates of `bin/certs.sh` carry). [`Conn::open`] completes the
//! handshake under one deadline (`--timeout`) before it returns, so a node
//! that accepts but never answers costs one timeout rather than a hang, and
//! a refused certificate is reported at connect time, not at the first
//! request. The first connections are made before the measured run starts,
//! so the figures of a TLS row are those of requests over open sessions.
//!
//! What it does not do: client certificates (a node started with
//! `--client-cert-auth` refuses raftbench), session resumption, and the
//! shared mode (`--conns`), whose writer and reader threads use one socket
//! at once: a rustls session cannot be split between two threads.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// How every connection of a run speaks TLS.
#[derive(Clone, Debug)]
pub struct Tls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

/// Why `--tls-ca` or `--tls-server-name` cannot be used.
#[derive(Debug)]
pub enum TlsSetupError {
    /// The CA file could not be read or parsed as PEM.
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file holds no `CERTIFICATE` block.
    NoCertificate(PathBuf),
    /// A certificate of the CA file is not usable as a trust anchor.
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    /// rustls refused the client configuration.
    Config(rustls::Error),
    /// `--tls-server-name` is neither a DNS name nor an IP address.
    ServerName(String),
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::Pem { path, source } => {
                write!(f, "--tls-ca {}: {source}", path.display())
            }
            TlsSetupError::NoCertificate(path) => write!(
                f,
                "--tls-ca {}: no CERTIFICATE block; give the CA's PEM file (ca.pem of bin/certs.sh)",
                path.display()
            ),
            TlsSetupError::BadCa { path, source } => {
                write!(f, "--tls-ca {}: not a usable CA certificate: {source}", path.display())
            }
            TlsSetupError::Config(e) => write!(f, "TLS client configuration: {e}"),
            TlsSetupError::ServerName(name) => write!(
                f,
                "--tls-server-name {name:?} is neither a DNS name nor an IP address"
            ),
        }
    }
}

impl std::error::Error for TlsSetupError {}

impl Tls {
    /// Trusts the certificates of `ca` only, and expects every node to
    /// present a certificate for `server_name`.
    pub fn new(ca: &Path, server_name: &str) -> Result<Tls, TlsSetupError> {
        let pem = |source| TlsSetupError::Pem {
            path: ca.to_owned(),
            source,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(pem)? {
            roots
                .add(cert.map_err(pem)?)
                .map_err(|source| TlsSetupError::BadCa {
                    path: ca.to_owned(),
                    source,
                })?;
        }
        if roots.is_empty() {
            return Err(TlsSetupError::NoCertificate(ca.to_owned()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsSetupError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsSetupError::ServerName(server_name.to_owned()))?;
        Ok(Tls {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// A TCP connection to `addr` with Nagle off and writes bounded by `timeout`.
pub fn tcp(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// An open connection to a node, ready for requests.
pub enum Conn {
    Plain {
        w: TcpStream,
        r: BufReader<TcpStream>,
    },
    /// Boxed: a rustls session is a few KiB.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    /// Connects to `addr`, with TLS if `tls` is given (handshake included).
    /// Reads and writes then time out after `timeout` each.
    pub fn open(addr: SocketAddr, tls: Option<&Tls>, timeout: Duration) -> io::Result<Conn> {
        let s = tcp(addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        match tls {
            None => Ok(Conn::Plain {
                r: BufReader::with_capacity(16 << 10, s.try_clone()?),
                w: s,
            }),
            Some(tls) => {
                let session = ClientConnection::new(tls.config.clone(), tls.server_name.clone())
                    .map_err(io::Error::other)?;
                let mut stream = StreamOwned::new(session, s);
                handshake(&mut stream, timeout)?;
                Ok(Conn::Tls(Box::new(stream)))
            }
        }
    }

    /// Writes one request (whole lines) and pushes it onto the wire.
    pub fn send(&mut self, req: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain { w, .. } => w.write_all(req),
            // rustls takes the plaintext and tries one socket write; flush
            // writes the rest and reports a failed write.
            Conn::Tls(s) => s.write_all(req).and_then(|()| s.flush()),
        }
    }

    /// Reads one reply line into `line` (cleared first). EOF before a full
    /// line is an `UnexpectedEof` error.
    pub fn read_reply(&mut self, line: &mut Vec<u8>) -> io::Result<()> {
        line.clear();
        match self {
            Conn::Plain { r, .. } => r.read_until(b'\n', line)?,
            Conn::Tls(s) => s.read_until(b'\n', line)?,
        };
        if line.last() == Some(&b'\n') {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    /// Ends the connection: TLS says goodbye first (close_notify, best
    /// effort, waiting at most 100 ms), then both directions of the TCP
    /// connection are shut.
    pub fn shutdown(&mut self) {
        match self {
            Conn::Plain { w, .. } => {
                let _ = w.shutdown(Shutdown::Both);
            }
            Conn::Tls(s) => {
                s.conn.send_close_notify();
                let _ = s.sock.set_write_timeout(Some(Duration::from_millis(100)));
                while s.conn.wants_write() {
                    if s.conn.write_tls(&mut s.sock).is_err() {
                        break;
                    }
                }
                let _ = s.sock.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Drives the client handshake to its end under one overall deadline, so a
/// node that trickles bytes cannot hold it longer than `timeout`. A refused
/// certificate or protocol error is `InvalidData`, a missed deadline
/// `TimedOut`.
fn handshake(
    s: &mut StreamOwned<ClientConnection, TcpStream>,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake not done after {timeout:?}"),
        )
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        s.sock.set_read_timeout(Some(left))?;
        s.sock.set_write_timeout(Some(left))?;
        let io = |e: io::Error| match e.kind() {
            // An expired SO_RCVTIMEO/SO_SNDTIMEO is EAGAIN on Unix.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
            _ => e,
        };
        while s.conn.wants_write() {
            s.conn.write_tls(&mut s.sock).map_err(io)?;
        }
        if !s.conn.is_handshaking() {
            break;
        }
        if s.conn.read_tls(&mut s.sock).map_err(io)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the node closed the connection during the TLS handshake (is its client port TLS?)",
            ));
        }
        if let Err(e) = s.conn.process_new_packets() {
            let _ = s.conn.write_tls(&mut s.sock); // the alert, best effort
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
    s.sock.set_read_timeout(Some(timeout))?;
    s.sock.set_write_timeout(Some(timeout))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The fixtures in `testdata/` come from `DAYS=36500 bin/certs.sh DIR 1`:
    //! a test CA and a certificate for node-1, localhost and 127.0.0.1.

    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::thread;

    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ServerConfig, ServerConnection};

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("bin/bench/testdata")
            .join(name)
    }

    fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    /// A one-connection TLS server that answers every line with `OK\n` and
    /// returns whether the client said goodbye with close_notify.
    fn tls_server(l: TcpListener) -> thread::JoinHandle<bool> {
        let certs = CertificateDer::pem_file_iter(testdata("node.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(testdata("node.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            let mut s = StreamOwned::new(ServerConnection::new(Arc::new(config)).unwrap(), sock);
            let mut line = Vec::new();
            loop {
                line.clear();
                match s.read_until(b'\n', &mut line) {
                    Ok(0) => return true, // close_notify: a clean EOF
                    Ok(_) => {
                        s.write_all(b"OK\n").unwrap();
                        s.flush().unwrap();
                    }
                    Err(_) => return false,
                }
            }
        })
    }

    #[test]
    fn plain_connection_sends_reads_and_shuts_down() {
        let (l, addr) = listener();
        let server = thread::spawn(move || {
            let (mut sock, _) = l.accept().unwrap();
            let mut req = [0u8; 5];
            sock.read_exact(&mut req).unwrap();
            sock.write_all(b"PONG\n").unwrap();
            let mut rest = Vec::new();
            sock.read_to_end(&mut rest).unwrap(); // until the client shuts down
            (req, rest)
        });
        let mut c = Conn::open(addr, None, Duration::from_secs(5)).unwrap();
        let mut line = Vec::new();
        c.send(b"PING\n").unwrap();
        c.read_reply(&mut line).unwrap();
        assert_eq!(line, b"PONG\n");
        c.shutdown();
        let (req, rest) = server.join().unwrap();
        assert_eq!(&req, b"PING\n");
        assert!(rest.is_empty());
    }

    #[test]
    fn tls_connection_verifies_the_node_and_says_goodbye() {
        let (l, addr) = listener();
        let server = tls_server(l);
        let tls = Tls::new(&testdata("ca.pem"), "localhost").unwrap();
        let mut c = Conn::open(addr, Some(&tls), Duration::from_secs(5)).unwrap();
        let mut line = Vec::new();
        for _ in 0..3 {
            c.send(b"PUT k v\n").unwrap();
            c.read_reply(&mut line).unwrap();
            assert_eq!(line, b"OK\n");
        }
        c.shutdown();
        assert!(server.join().unwrap(), "no close_notify");
    }

    #[test]
    fn tls_refuses_a_node_whose_certificate_lacks_the_server_name() {
        let (l, addr) = listener();
        let _server = tls_server(l);
        let tls = Tls::new(&testdata("ca.pem"), "node-2").unwrap();
        let err = Conn::open(addr, Some(&tls), Duration::from_secs(5))
            .err()
            .expect("node-2 is not in the certificate");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn tls_refuses_a_node_signed_by_another_ca() {
        let (l, addr) = listener();
        let _server = tls_server(l);
        // The node's own certificate as the only trust anchor: not its issuer.
        let tls = Tls::new(&testdata("node.pem"), "localhost").unwrap();
        let err = Conn::open(addr, Some(&tls), Duration::from_secs(5))
            .err()
            .expect("the node's issuer is not trusted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn tls_handshake_with_a_silent_node_ends_at_the_deadline() {
        let (l, addr) = listener();
        let server = thread::spawn(move || {
            let (sock, _) = l.accept().unwrap();
            thread::sleep(Duration::from_secs(2));
            drop(sock);
        });
        let tls = Tls::new(&testdata("ca.pem"), "localhost").unwrap();
        let t = Instant::now();
        let err = Conn::open(addr, Some(&tls), Duration::from_millis(300))
            .err()
            .expect("no ServerHello ever comes");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        server.join().unwrap();
    }

    #[test]
    fn tls_setup_names_the_file_it_cannot_use() {
        let missing = testdata("no-such-ca.pem");
        let err = Tls::new(&missing, "localhost").unwrap_err();
        assert!(err.to_string().contains("no-such-ca.pem"), "{err}");

        let key_only = testdata("node.key");
        let err = Tls::new(&key_only, "localhost").unwrap_err();
        assert!(matches!(err, TlsSetupError::NoCertificate(_)), "{err}");

        let err = Tls::new(&testdata("ca.pem"), "not a name").unwrap_err();
        assert!(matches!(err, TlsSetupError::ServerName(_)), "{err}");
    }
}
