//! One connection to one node: TCP, optionally TLS 1.3, request lines out,
//! reply lines in, every wait bounded by a deadline.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::error::Error;
use super::reply::{parse_reply, ProtocolError, Reply, MAX_REPLY_LINE};
use crate::protocol::{Framed, LineFramer};
use crate::tls::{self, TlsError};

/// How the client speaks TLS to the nodes' client ports (`--cert-file`).
///
/// The nodes' certificates must chain to the CA given; each node must
/// present a certificate for the host part of its endpoint (`127.0.0.1`
/// or `localhost` for the certificates of `bin/certs.sh`), unless a fixed
/// [`server_name`](Tls::server_name) is set.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Trusts the CA certificates in the PEM file `ca`. With `client_cert`
    /// (certificate and key PEM files) the client presents a certificate,
    /// for nodes run with `--client-cert-auth`.
    pub fn new(ca: &Path, client_cert: Option<(&Path, &Path)>) -> Result<Tls, TlsError> {
        let roots = tls::roots(ca)?;
        let b = ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: "TLS versions",
                source,
            })?
            .with_root_certificates(roots);
        let config = match client_cert {
            None => b.with_no_client_auth(),
            Some((cert, key)) => b
                .with_client_auth_cert(tls::certs(cert)?, tls::key(key)?)
                .map_err(|source| TlsError::Rustls {
                    what: "client certificate and key",
                    source,
                })?,
        };
        Ok(Tls {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// Expects every node's certificate to carry `name` (a DNS name or an
    /// IP address) instead of its endpoint's host.
    pub fn server_name(mut self, name: &str) -> Result<Tls, TlsError> {
        let n = ServerName::try_from(name.to_string())
            .map_err(|e| TlsError::Verifier(format!("server name {name:?}: {e}")))?;
        self.server_name = Some(n);
        Ok(self)
    }
}

/// A byte stream to a node.
enum Stream {
    Plain(TcpStream),
    /// Boxed: a rustls session is a few KiB.
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

/// An open connection and what it has been told.
pub struct Conn {
    stream: Stream,
    lines: LineFramer,
    /// Index of the endpoint in the client's list.
    pub endpoint: usize,
    /// The session this connection was told to use (`SESSION <id>`).
    pub session: Option<String>,
}

/// The time left until `deadline`, or `Timeout` if none is.
fn left(deadline: Instant) -> Result<Duration, Error> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(Error::Timeout)
    } else {
        Ok(d)
    }
}

/// An expired socket timeout is `WouldBlock` on Linux.
fn io_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
        _ => Error::Io(e),
    }
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn host_of(endpoint: &str) -> &str {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn connect_tcp(endpoint: &str, deadline: Instant) -> Result<TcpStream, Error> {
    let addrs: Vec<SocketAddr> = endpoint.to_socket_addrs().map_err(Error::Io)?.collect();
    let mut last = Error::Io(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{endpoint} resolves to no address"),
    ));
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left(deadline)?) {
            Ok(s) => {
                s.set_nodelay(true).map_err(Error::Io)?;
                return Ok(s);
            }
            Err(e) => last = io_error(e),
        }
    }
    Err(last)
}

impl Conn {
    /// Connects to `endpoint` (TLS handshake included) before `deadline`.
    pub fn open(
        endpoint: &str,
        index: usize,
        tls: Option<&Tls>,
        deadline: Instant,
    ) -> Result<Conn, Error> {
        let sock = connect_tcp(endpoint, deadline)?;
        let stream = match tls {
            None => Stream::Plain(sock),
            Some(t) => {
                let name = match &t.server_name {
                    Some(n) => n.clone(),
                    None => ServerName::try_from(host_of(endpoint).to_string()).map_err(|e| {
                        Error::Tls(TlsError::Verifier(format!(
                            "server name of {endpoint}: {e}"
                        )))
                    })?,
                };
                let session = ClientConnection::new(t.config.clone(), name)
                    .map_err(|e| Error::Io(io::Error::other(e)))?;
                let mut s = StreamOwned::new(session, sock);
                tls::handshake(&mut s.conn, &mut s.sock, left(deadline)?).map_err(io_error)?;
                Stream::Tls(Box::new(s))
            }
        };
        Ok(Conn {
            stream,
            lines: LineFramer::with_limit(MAX_REPLY_LINE),
            endpoint: index,
            session: None,
        })
    }

    /// Sends one request and reads its reply, both before `deadline`. An
    /// `ERR` line is a reply like any other here; the caller decides.
    pub fn exchange(&mut self, wire: &[u8], deadline: Instant) -> Result<Reply, Error> {
        let line = self.exchange_line(wire, deadline)?;
        Ok(parse_reply(&line)?)
    }

    /// [`exchange`](Conn::exchange), giving the reply line unparsed.
    pub fn exchange_line(&mut self, wire: &[u8], deadline: Instant) -> Result<Vec<u8>, Error> {
        self.send(wire, deadline)?;
        self.read_line(deadline)
    }

    fn send(&mut self, wire: &[u8], deadline: Instant) -> Result<(), Error> {
        self.stream
            .tcp()
            .set_write_timeout(Some(left(deadline)?))
            .map_err(Error::Io)?;
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(wire),
            Stream::Tls(s) => s.write_all(wire).and_then(|()| s.flush()),
        }
        .map_err(io_error)
    }

    /// The next reply line, without its `\n`; at most [`MAX_REPLY_LINE`]
    /// bytes are held, however the node cuts or stretches its bytes.
    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, Error> {
        let mut buf = [0u8; 16 << 10];
        loop {
            match self.lines.next_line() {
                Some(Framed::Line(l)) => return Ok(l),
                Some(Framed::TooLong) => return Err(ProtocolError::TooLong.into()),
                None => {}
            }
            self.stream
                .tcp()
                .set_read_timeout(Some(left(deadline)?))
                .map_err(Error::Io)?;
            let n = match &mut self.stream {
                Stream::Plain(s) => s.read(&mut buf),
                Stream::Tls(s) => s.read(&mut buf),
            }
            .map_err(io_error)?;
            if n == 0 {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the node closed the connection before its reply",
                )));
            }
            self.lines.push(&buf[..n]);
        }
    }

    /// Ends the connection (TLS without goodbye: the node does not care).
    pub fn close(self) {
        let _ = self.stream.tcp().shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_endpoint() {
        assert_eq!(host_of("127.0.0.1:8001"), "127.0.0.1");
        assert_eq!(host_of("localhost:1"), "localhost");
        assert_eq!(host_of("[::1]:8001"), "::1");
    }
}
