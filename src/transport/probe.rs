//! The dialer side of a probe: one question to one peer, on a connection
//! of its own (`codec.rs` has the frames, `listener.rs` the answer).

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::codec::{self, read_frame, FrameError, ProbeReply};
use super::{resolve, HANDSHAKE_TIMEOUT, IO_TIMEOUT};
use crate::raft::NodeId;
use crate::tls::{PeerStream, PeerTls};

/// Asks peer `to` at `addr` what it runs. Every failure (unreachable, TLS,
/// bad data) is an `Err`: the caller only waits and asks again.
pub fn probe(me: NodeId, to: NodeId, addr: &str, tls: Option<&PeerTls>) -> io::Result<ProbeReply> {
    let sock = TcpStream::connect_timeout(&resolve(addr)?, IO_TIMEOUT)?;
    sock.set_nodelay(true)?;
    let mut stream = match tls {
        Some(tls) => crate::tls::dial_peer(sock, tls, to, HANDSHAKE_TIMEOUT)?,
        None => PeerStream::Plain(sock),
    };
    let limit = Some(Duration::from_secs(2));
    stream.tcp().set_read_timeout(limit)?;
    stream.tcp().set_write_timeout(limit)?;
    let mut out = Vec::new();
    codec::encode_probe(&mut out, me, to);
    stream.write_all(&out)?;
    stream.flush()?;
    let mut buf = Vec::new();
    let frame =
        read_frame(&mut stream, &mut buf, &[codec::KIND_PROBE_REPLY]).map_err(|e| match e {
            FrameError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        })?;
    let Some(frame) = frame else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before its answer (a node too old to answer probes?)",
        ));
    };
    codec::decode_probe_reply(frame.body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}
