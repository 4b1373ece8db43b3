//! TLS for peers and clients: rustls, TLS 1.3 only, the `ring` provider.
//!
//! **Peers** use mutual TLS with one trusted CA (`--peer-trusted-ca-file`).
//! A node's identity is bound to its certificate by a DNS subject
//! alternative name `node-<id>`:
//! - the dialer checks that the listener's certificate names the node it
//!   meant to reach (rustls verifies the server name `node-<to>`);
//! - the listener checks, after the handshake, that the dialer's
//!   certificate names the id its raftnode handshake claims
//!   ([`verify_node_id`]), so a certificate issued for node 3 cannot speak
//!   as node 2.
//!
//! **Clients** get TLS with `--cert-file`/`--key-file`; with
//! `--client-cert-auth` and `--trusted-ca-file` a client must present a
//! certificate from that CA.
//!
//! `bin/certs.sh` makes a test CA and certificates of this shape with
//! `openssl`; the README shows the commands.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};

use crate::raft::NodeId;

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    NoCertificate(PathBuf),
    /// rustls refused the configuration (a CA that is not a CA, a key that
    /// does not match the certificate, ...).
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built.
    Verifier(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem { path, source } => write!(f, "{}: {source}", path.display()),
            TlsError::NoCertificate(p) => write!(f, "{}: no CERTIFICATE block", p.display()),
            TlsError::Rustls { what, source } => write!(f, "{what}: {source}"),
            TlsError::Verifier(e) => write!(f, "client certificate verifier: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The certificate, key and CA files of one side (peers or clients).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Trusted CA for the other side's certificates, if any.
    pub ca: Option<PathBuf>,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

pub(crate) fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots.add(c).map_err(|source| TlsError::Rustls {
            what: "trusted CA",
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

fn rustls_err(what: &'static str) -> impl FnOnce(rustls::Error) -> TlsError {
    move |source| TlsError::Rustls { what, source }
}

/// A listener's config: client certificates from `ca` are required when
/// `require_client_cert`, optional (but verified if sent) otherwise.
fn server_config(
    files: &TlsFiles,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let b = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err("TLS versions"))?;
    let b = match &files.ca {
        Some(ca) => {
            let v = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
            let v = if require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            b.with_client_cert_verifier(v.build().map_err(|e| TlsError::Verifier(e.to_string()))?)
        }
        None => b.with_no_client_auth(),
    };
    let mut cfg = b
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(rustls_err("certificate and key"))?;
    // No session resumption: connections are long-lived.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// Mutual TLS between peers.
pub struct PeerTls {
    listener: Arc<ServerConfig>,
    dialer: Arc<ClientConfig>,
}

impl PeerTls {
    /// The TLS session of one accepted connection, to be driven by the
    /// listener's admission thread on a non-blocking socket.
    pub(crate) fn accepting(&self) -> Result<ServerConnection, rustls::Error> {
        ServerConnection::new(self.listener.clone())
    }

    pub fn load(files: &TlsFiles) -> Result<PeerTls, TlsError> {
        let Some(ca) = &files.ca else {
            return Err(TlsError::Verifier("peer TLS needs a trusted CA".into()));
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let dialer = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err("TLS versions"))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(certs(&files.cert)?, key(&files.key)?)
            .map_err(rustls_err("certificate and key"))?;
        Ok(PeerTls {
            listener: server_config(files, true)?,
            dialer: Arc::new(dialer),
        })
    }
}

/// TLS for the client port.
pub struct ClientTls {
    pub config: Arc<ServerConfig>,
}

impl ClientTls {
    pub fn load(files: &TlsFiles, require_client_cert: bool) -> Result<ClientTls, TlsError> {
        Ok(ClientTls {
            config: server_config(files, require_client_cert)?,
        })
    }
}

/// The DNS name a node's certificate must carry.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}")
}

/// Checks that the dialer's certificate names node `id`.
pub fn verify_node_id(conn: &ServerConnection, id: NodeId) -> Result<(), String> {
    let der = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no client certificate")?;
    let cert = rustls::server::ParsedCertificate::try_from(der).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(node_name(id)).map_err(|e| e.to_string())?;
    rustls::client::verify_server_name(&cert, &name)
        .map_err(|e| format!("certificate does not name node {id}: {e}"))
}

/// A peer connection, plain or TLS; both ends use it as a byte stream.
pub enum PeerStream {
    Plain(TcpStream),
    Accepted(Box<StreamOwned<ServerConnection, TcpStream>>),
    Dialled(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl PeerStream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(s) => s,
            PeerStream::Accepted(s) => &s.sock,
            PeerStream::Dialled(s) => &s.sock,
        }
    }
}

impl Read for PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(s) => s.read(buf),
            PeerStream::Accepted(s) => s.read(buf),
            PeerStream::Dialled(s) => s.read(buf),
        }
    }
}

impl Write for PeerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(s) => s.write(buf),
            PeerStream::Accepted(s) => s.write(buf),
            PeerStream::Dialled(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            PeerStream::Plain(s) => s.flush(),
            PeerStream::Accepted(s) => s.flush(),
            PeerStream::Dialled(s) => s.flush(),
        }
    }
}

/// Wraps a dialled socket in TLS, checking that the listener is node `to`.
pub fn dial_peer(
    sock: TcpStream,
    tls: &PeerTls,
    to: NodeId,
    timeout: Duration,
) -> io::Result<PeerStream> {
    let name = ServerName::try_from(node_name(to)).map_err(io::Error::other)?;
    let conn = ClientConnection::new(tls.dialer.clone(), name).map_err(io::Error::other)?;
    let mut s = StreamOwned::new(conn, sock);
    handshake(&mut s.conn, &mut s.sock, timeout)?;
    Ok(PeerStream::Dialled(Box::new(s)))
}

/// Drives a handshake to its end under one deadline. rustls's own
/// `complete_io` would let a peer that trickles bytes hold it forever.
pub(crate) fn handshake<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    sock: &mut TcpStream,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        sock.set_read_timeout(Some(left))?;
        sock.set_write_timeout(Some(left))?;
        while conn.wants_write() {
            conn.write_tls(sock).map_err(|e| expired(e, timed_out))?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        if conn.read_tls(sock).map_err(|e| expired(e, timed_out))? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the TLS handshake",
            ));
        }
        if let Err(e) = conn.process_new_packets() {
            let _ = conn.write_tls(sock); // best effort: the alert
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

/// An expired socket timeout shows as `WouldBlock` on Linux.
fn expired(e: io::Error, timed_out: impl Fn() -> io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
        _ => e,
    }
}
