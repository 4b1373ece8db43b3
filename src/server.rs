//! The client server: the line protocol of `docs/PROTOCOL.md` §2 over TCP.
//!
//! Each connection gets two threads. The reader parses lines and starts each
//! request (writes and reads go to the node thread; PING is answered on the
//! spot), queueing a pending answer per request in arrival order. The writer
//! waits for those answers in the same order, so pipelined requests are
//! answered in order, and flushes whenever it has caught up with the reader,
//! so a burst of answers costs one syscall.
//!
//! A request that gets no answer by its deadline is answered `ERR TIMEOUT`
//! (or `ERR NO_LEADER` if no leader is known): its outcome is unknown.
//!
//! When the node stops, new connections and new requests are refused with
//! `ERR UNAVAILABLE`, and [`Server::close`] shuts the read side of every
//! connection so its writer can flush the last answers and end.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use log::{debug, info, warn};

use crate::kv::{encode_command, encode_conf_context, RequestId};
use crate::node::StatusInfo;
use crate::policy::NodeRequest;
use crate::protocol::{self, ErrorCode, Reply, Request, MAX_LINE};
use crate::raft::{ConfChange, ConfChangeKind, NodeId, Role};
use crate::reply::{reply_slot, Queue, ReplyRx, ReplyTx};
use crate::shared::Shared;

/// Everything a connection needs to reach the node.
#[derive(Clone)]
pub struct ClientContext {
    pub id: NodeId,
    pub requests: Sender<NodeRequest>,
    pub status: Sender<Sender<StatusInfo>>,
    pub snapshots: Sender<ReplyTx>,
    pub shared: Arc<Shared>,
    pub timeout: Duration,
}

/// The open client connections, so that a stopping node can close them.
#[derive(Default)]
struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
}

impl Connections {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps a connection in [`Connections`] while it lives.
struct Registered<'a> {
    conns: &'a Connections,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.conns.open().remove(&self.id);
    }
}

/// The running client server.
pub struct Server {
    conns: Arc<Connections>,
}

impl Server {
    /// Stops reading from every connection (requests already read are
    /// still answered) and waits up to `within` for them to close.
    pub fn close(&self, within: Duration) {
        for s in self.conns.open().values() {
            let _ = s.shutdown(Shutdown::Read);
        }
        let until = Instant::now() + within;
        while !self.conns.open().is_empty() && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Starts accepting clients on an already bound listener.
pub fn serve(listener: TcpListener, ctx: ClientContext) -> io::Result<Server> {
    info!("serving clients on {}", listener.local_addr()?);
    let conns = Arc::new(Connections::default());
    let server = Server {
        conns: conns.clone(),
    };
    thread::Builder::new()
        .name("client-listener".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) if ctx.shared.stopping() => refuse(s),
                    Ok(s) => {
                        let ctx = ctx.clone();
                        let conns = conns.clone();
                        let spawned = thread::Builder::new()
                            .name("client".into())
                            .stack_size(256 << 10)
                            .spawn(move || handle_connection(s, ctx, &conns));
                        if let Err(e) = spawned {
                            warn!("cannot start a client thread: {e}");
                        }
                    }
                    Err(e) => {
                        warn!("accepting a client failed: {e}");
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        })?;
    Ok(server)
}

fn shutting_down() -> Reply {
    Reply::error(ErrorCode::Unavailable, "node is shutting down")
}

/// Answers a connection that cannot be served with one line, and closes it.
fn refuse(mut s: TcpStream) {
    let mut line = Vec::new();
    shutting_down().write_line(&mut line);
    let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = s.write_all(&line);
}

/// An answer the writer will produce, in order.
enum Pending {
    Now(Reply),
    /// Wait for a reply; the registered request `id` is forgotten on
    /// timeout so the node does not keep a dead reply slot. `write` marks a
    /// write counted in [`Writes`].
    Wait {
        rx: ReplyRx,
        deadline: Instant,
        id: Option<u64>,
        write: bool,
    },
    /// Answer, then close the connection.
    Close(Reply),
}

/// How reading one line ended.
enum Line {
    Ok,
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line into `buf` (without the `\n`), refusing
/// lines longer than `MAX_LINE` without buffering them.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok(if buf.is_empty() { Line::Eof } else { Line::Ok });
        }
        let (used, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => {
                buf.extend_from_slice(&avail[..i]);
                (i + 1, true)
            }
            None => {
                buf.extend_from_slice(avail);
                (avail.len(), false)
            }
        };
        r.consume(used);
        if buf.len() > MAX_LINE + 1 {
            return Ok(Line::TooLong);
        }
        if done {
            return Ok(Line::Ok);
        }
    }
}

/// Writes of one connection not yet answered. A GET waits until they are,
/// so a connection always reads its own earlier writes, even pipelined.
#[derive(Default)]
struct Writes {
    count: Mutex<u64>,
    done: Condvar,
}

impl Writes {
    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.count.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn started(&self) {
        *self.lock() += 1;
    }

    fn finished(&self) {
        let mut n = self.lock();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.done.notify_all();
        }
    }

    /// Waits until no write is outstanding, or until `deadline`.
    fn wait_idle(&self, deadline: Instant) {
        let mut n = self.lock();
        while *n > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            n = match self.done.wait_timeout(n, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

fn handle_connection(stream: TcpStream, ctx: ClientContext, conns: &Connections) {
    let _ = stream.set_nodelay(true);
    let Ok(handle) = stream.try_clone() else {
        return;
    };
    let id = conns.next.fetch_add(1, Ordering::Relaxed);
    conns.open().insert(id, handle);
    let _registered = Registered { conns, id };
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    debug!("client {peer} connected");
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let queue: Arc<Queue<Pending>> = Arc::default();
    let rx = queue.clone();
    let shared = ctx.shared.clone();
    let writes = Arc::new(Writes::default());
    let w = writes.clone();
    let writer = thread::Builder::new()
        .name("client-writer".into())
        .stack_size(256 << 10)
        .spawn(move || write_loop(write_half, rx, shared, &w));
    let Ok(writer) = writer else { return };
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut line = Vec::new();
    loop {
        match read_line(&mut reader, &mut line) {
            Ok(Line::Ok) => {
                let p = start_request(&line, &ctx, &writes);
                queue.push(p);
            }
            Ok(Line::TooLong) => {
                let msg = format!("line longer than {MAX_LINE} bytes; closing the connection");
                queue.push(Pending::Close(Reply::error(ErrorCode::BadRequest, msg)));
                break;
            }
            Ok(Line::Eof) | Err(_) => break,
        }
    }
    queue.close();
    let _ = writer.join();
    debug!("client {peer} disconnected");
}

fn write_loop(stream: TcpStream, rx: Arc<Queue<Pending>>, shared: Arc<Shared>, writes: &Writes) {
    let mut w = BufWriter::with_capacity(64 << 10, &stream);
    let mut line = Vec::with_capacity(256);
    while let Some(p) = rx.pop() {
        let (reply, close) = match p {
            Pending::Now(r) => (r, false),
            Pending::Close(r) => (r, true),
            Pending::Wait {
                rx: reply_rx,
                deadline,
                id,
                write,
            } => match reply_rx.recv_deadline(deadline) {
                Some(r) => {
                    if write {
                        writes.finished();
                    }
                    (r, false)
                }
                None => {
                    if write {
                        writes.finished();
                    }
                    if let Some(id) = id {
                        shared.pending().forget(id);
                    }
                    let r = if !shared.has_leader() {
                        Reply::error(
                            ErrorCode::NoLeader,
                            "no leader is known; the outcome is unknown",
                        )
                    } else {
                        Reply::error(
                            ErrorCode::Timeout,
                            "request timed out; the outcome is unknown",
                        )
                    };
                    (r, false)
                }
            },
        };
        line.clear();
        reply.write_line(&mut line);
        if w.write_all(&line).is_err() {
            return;
        }
        if close {
            let _ = w.flush();
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        if rx.is_empty() && w.flush().is_err() {
            return;
        }
    }
    let _ = w.flush();
}

fn start_request(line: &[u8], ctx: &ClientContext, writes: &Writes) -> Pending {
    let req = match protocol::parse(line) {
        Ok(r) => r,
        Err(e) => return Pending::Now(Reply::error(ErrorCode::BadRequest, e.to_string())),
    };
    let deadline = Instant::now() + ctx.timeout;
    let gone = || Pending::Now(shutting_down());
    if ctx.shared.stopping() && !matches!(req, Request::Ping | Request::Status) {
        return gone();
    }
    match req {
        Request::Ping => Pending::Now(Reply::Pong),
        Request::Status => {
            let (tx, rx) = bounded(1);
            if ctx.status.send(tx).is_err() {
                return gone();
            }
            match rx.recv_timeout(ctx.timeout) {
                Ok(s) => Pending::Now(Reply::Status(format_status(&s, ctx))),
                Err(_) => Pending::Now(Reply::error(
                    ErrorCode::Timeout,
                    "node thread did not answer",
                )),
            }
        }
        Request::Write(cmd) => {
            let (tx, rx) = reply_slot();
            let id = ctx.shared.pending().register(tx);
            let data = encode_command(
                RequestId {
                    node: ctx.id,
                    seq: id,
                },
                &cmd,
            );
            if ctx
                .requests
                .send(NodeRequest::Propose { data, id, deadline })
                .is_err()
            {
                return gone();
            }
            writes.started();
            Pending::Wait {
                rx,
                deadline,
                id: Some(id),
                write: true,
            }
        }
        Request::Get { key } => {
            writes.wait_idle(deadline);
            let (tx, rx) = reply_slot();
            if ctx
                .requests
                .send(NodeRequest::Read {
                    key,
                    reply: tx,
                    deadline,
                })
                .is_err()
            {
                return gone();
            }
            Pending::Wait {
                rx,
                deadline,
                id: None,
                write: false,
            }
        }
        Request::AddNode { id, addr } => {
            // Joins as a learner; the leader promotes it once it caught up,
            // and the reply comes when the promotion is applied.
            conf_change(ctx, ConfChangeKind::AddLearner, id, &addr, deadline)
        }
        Request::RemoveNode { id } => {
            conf_change(ctx, ConfChangeKind::RemoveNode, id, "", deadline)
        }
        Request::TransferLeader { id } => {
            let (tx, rx) = reply_slot();
            if ctx
                .requests
                .send(NodeRequest::Transfer {
                    target: id,
                    reply: tx,
                    deadline,
                })
                .is_err()
            {
                return gone();
            }
            Pending::Wait {
                rx,
                deadline,
                id: None,
                write: false,
            }
        }
        Request::Snapshot => {
            let (tx, rx) = reply_slot();
            if ctx.snapshots.send(tx).is_err() {
                return gone();
            }
            Pending::Wait {
                rx,
                deadline,
                id: None,
                write: false,
            }
        }
    }
}

fn conf_change(
    ctx: &ClientContext,
    kind: ConfChangeKind,
    id: NodeId,
    addr: &str,
    deadline: Instant,
) -> Pending {
    let (tx, rx) = reply_slot();
    let rid = ctx.shared.pending().register(tx);
    let context = encode_conf_context(
        RequestId {
            node: ctx.id,
            seq: rid,
        },
        addr,
    );
    let cc = ConfChange {
        kind,
        node_id: id,
        context,
    };
    if ctx
        .requests
        .send(NodeRequest::ConfChange {
            cc,
            id: rid,
            deadline,
        })
        .is_err()
    {
        return Pending::Now(shutting_down());
    }
    Pending::Wait {
        rx,
        deadline,
        id: Some(rid),
        write: false,
    }
}

fn join_ids(ids: &[NodeId]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The STATUS line of `docs/PROTOCOL.md`.
pub fn format_status(s: &StatusInfo, ctx: &ClientContext) -> String {
    let role = if s.conf_state.learners.contains(&s.id) {
        "learner".to_string()
    } else {
        match s.role {
            Role::Follower => "follower".to_string(),
            other => other.to_string(),
        }
    };
    let mut line = format!(
        "STATUS id={} role={} term={} leader={} commit={} applied={} last={} snapshot={} members={}",
        s.id,
        role,
        s.term,
        s.leader,
        s.commit,
        s.applied,
        s.last,
        ctx.shared.snapshot_index(),
        join_ids(&s.conf_state.voters)
    );
    if !s.conf_state.learners.is_empty() {
        line.push_str(&format!(" learners={}", join_ids(&s.conf_state.learners)));
    }
    line
}
