//! The load generators: how clients reach the nodes and pace their requests.
//!
//! Two shapes, chosen by `--conns`:
//!
//! - **Dedicated** (default): one OS thread and one connection per client.
//!   The thread sends a request, waits for its reply, records it, and goes on.
//!   The connection is a [`Conn`], plain or TLS (`--tls-ca`).
//! - **Shared** (`--conns M`): the N clients are tokens spread over M
//!   connections. Each connection has a writer thread, which sends a request
//!   for every token that is due (all due ones in one write: pipelining), and
//!   a reader thread, which matches reply lines to the requests in send order
//!   (the server answers in order), records them and hands the tokens back.
//!   A client therefore still has at most one request outstanding. Plain
//!   TCP only: see `conn.rs` for why TLS does not fit it.
//!
//! Pacing: without `--rate`, a client sends its next request as soon as the
//! previous one is answered (closed loop) and latency runs from the send. With
//! `--rate R`, client `c` of `N` is due at `start + c/R + k*N/R` for its k-th
//! request; if it is late (its previous reply came after that), it sends at
//! once but latency still runs from the *intended* time, so a stall is charged
//! to every request it delayed (no coordinated omission).
//!
//! Whether a request counts is decided when it is issued: it must be past the
//! warmup (in operations and in time) and intended before the end of a timed
//! run. Requests issued before the end are always waited for.
//!
//! Failures never stop a client: an `ERR` line is counted under its code; a
//! dropped connection, a write error or no reply within `--timeout` counts
//! every request it left unanswered, and the client reconnects (with backoff)
//! and carries on.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use crate::conn::{self, Conn, Tls};
use crate::workload::{
    classify, Op, Outcome, Recorder, Rng, Workload, CLIENT_TIMEOUT, CONNECT_FAILED, CONN_DROPPED,
};

/// Everything the client threads of one phase share.
pub struct Shared {
    pub workload: Workload,
    pub endpoints: Vec<SocketAddr>,
    /// `--tls-ca`: dedicated connections speak TLS.
    pub tls: Option<Tls>,
    pub clients: usize,
    /// `--rate`, operations per second across all clients.
    pub rate: Option<f64>,
    /// Operations excluded at the start.
    pub warmup_ops: u64,
    /// Time excluded at the start.
    pub warmup_time: Duration,
    /// Measured time (after the warmup); `None` for a `--total` run.
    pub duration: Option<Duration>,
    /// `--total`: measured operations (the warmup ones come on top).
    pub total: Option<u64>,
    pub timeout: Duration,
    pub seed: u64,
    /// Set by the coordinator at the end of a timed run (or to abort).
    pub stop: AtomicBool,
    /// Operations issued so far (their sequence numbers).
    pub issued: AtomicU64,
    /// The common start, set once every client is connected.
    pub start: OnceLock<Instant>,
    /// Client threads + the coordinator: all connect, then start together.
    pub barrier: Barrier,
    /// Set by the first client that gives up connecting before the start,
    /// which prints why (once for the run, not once per client).
    pub connect_error_shown: AtomicBool,
}

impl Shared {
    fn start(&self) -> Instant {
        *self
            .start
            .get()
            .expect("start is set before the barrier opens")
    }

    /// The end of a timed run: no request intended at or after it is sent.
    pub fn end(&self) -> Option<Instant> {
        self.duration.map(|d| self.start() + self.warmup_time + d)
    }

    /// The time between two requests of one client in `--rate` mode.
    fn interval(&self) -> Option<Duration> {
        self.rate
            .map(|r| Duration::from_secs_f64(self.clients as f64 / r))
    }

    /// The first intended send of client `c` in `--rate` mode (staggered).
    fn first_due(&self, c: usize) -> Instant {
        match self.rate {
            Some(r) => self.start() + Duration::from_secs_f64(c as f64 / r),
            None => self.start(),
        }
    }

    /// Claims the next operation intended at `intended`: `None` once the run
    /// is over, else whether it counts.
    fn claim(&self, intended: Instant) -> Option<bool> {
        if self.stop.load(Ordering::Relaxed) || self.end().is_some_and(|e| intended >= e) {
            return None;
        }
        let seq = self.issued.fetch_add(1, Ordering::Relaxed);
        if let Some(total) = self.total {
            if seq >= total + self.warmup_ops {
                return None;
            }
        }
        Some(seq >= self.warmup_ops && intended >= self.start() + self.warmup_time)
    }

    /// A plain TCP connection (shared mode).
    fn connect(&self, endpoint: usize) -> io::Result<TcpStream> {
        conn::tcp(self.endpoints[endpoint], self.timeout)
    }

    /// A connection ready for requests, TLS if asked (dedicated mode).
    fn open(&self, endpoint: usize) -> io::Result<Conn> {
        Conn::open(self.endpoints[endpoint], self.tls.as_ref(), self.timeout)
    }

    /// The first connection, before the start: retried with backoff for up
    /// to `--timeout` (a cluster may still be electing), except after a TLS
    /// refusal (`InvalidData`), which a retry would not change. Failures
    /// here are not counted; a client left without a connection retries
    /// (counted) once the run starts.
    fn connect_initial<T>(&self, endpoint: usize, open: impl Fn() -> io::Result<T>) -> Option<T> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            match open() {
                Ok(s) => return Some(s),
                Err(e)
                    if e.kind() != io::ErrorKind::InvalidData
                        && Instant::now() + backoff < deadline =>
                {
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => {
                    if !self.connect_error_shown.swap(true, Ordering::Relaxed) {
                        eprintln!(
                            "raftbench: cannot connect to {}: {e}",
                            self.endpoints[endpoint]
                        );
                    }
                    return None;
                }
            }
        }
    }
}

/// Waits until `t` (no-op if it has passed), waking to notice `stop`.
fn sleep_until(sh: &Shared, t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t || sh.stop.load(Ordering::Relaxed) {
            return;
        }
        thread::sleep((t - now).min(Duration::from_millis(100)));
    }
}

fn error_code_for(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CLIENT_TIMEOUT,
        _ => CONN_DROPPED,
    }
}

/// One client on its own connection (dedicated mode). Returns its figures.
pub fn run_dedicated(sh: &Shared, client: usize) -> Recorder {
    let endpoint = client % sh.endpoints.len();
    let mut rec = Recorder::default();
    let mut rng = Rng::new(sh.seed, client as u64);
    let mut conn = sh.connect_initial(endpoint, || sh.open(endpoint));
    sh.barrier.wait(); // connected
    sh.barrier.wait(); // the coordinator has set the start
    let interval = sh.interval();
    let mut due = sh.first_due(client);
    let mut req = Vec::with_capacity(512);
    let mut line = Vec::with_capacity(512);
    let mut backoff = Duration::from_millis(10);
    loop {
        let intended = match interval {
            Some(iv) => {
                let t = due;
                due += iv;
                if sh.end().is_some_and(|e| t >= e) {
                    break;
                }
                sleep_until(sh, t);
                t
            }
            None => Instant::now(),
        };
        let Some(measured) = sh.claim(intended) else {
            break;
        };
        req.clear();
        let op = sh.workload.next_request(&mut rng, &mut req);
        if conn.is_none() {
            match sh.open(endpoint) {
                Ok(c) => {
                    conn = Some(c);
                    backoff = Duration::from_millis(10);
                }
                Err(_) => {
                    rec.record(
                        measured,
                        op,
                        intended,
                        Instant::now(),
                        Outcome::Error(CONNECT_FAILED),
                    );
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let sent = c.send(&req).and_then(|()| c.read_reply(&mut line));
        let done = Instant::now();
        match sent {
            Ok(()) => rec.record(measured, op, intended, done, classify(op, &line)),
            Err(e) => {
                rec.record(
                    measured,
                    op,
                    intended,
                    done,
                    Outcome::Error(error_code_for(&e)),
                );
                // The stream may be mid-reply: only a new connection is in step.
                c.shutdown();
                conn = None;
            }
        }
    }
    if let Some(mut c) = conn {
        c.shutdown();
    }
    rec
}

/// A request on the wire, waiting for its reply line (shared mode).
struct InFlight {
    client: usize,
    op: Op,
    intended: Instant,
    /// When it was written: the reply deadline runs from here.
    sent: Instant,
    measured: bool,
}

/// What the reader tells the writer.
enum Event {
    /// The client's reply is in; it is due again at `due`.
    Ready { client: usize, due: Instant },
    /// Connection number `gen` broke; in-flight requests are being failed.
    Broken { gen: u64 },
}

/// One shared connection and its clients (shared mode); runs the writer and
/// starts a reader per connection attempt. Returns the figures of both.
pub fn run_shared(sh: &Shared, conn_index: usize, clients: Vec<usize>) -> Recorder {
    let endpoint = conn_index % sh.endpoints.len();
    let mut rec = Recorder::default();
    let mut rng = Rng::new(sh.seed, (1 << 32) + conn_index as u64);
    let (events_tx, events_rx) = unbounded::<Event>();
    let mut stream = sh.connect_initial(endpoint, || sh.connect(endpoint));
    sh.barrier.wait(); // connected
    sh.barrier.wait(); // the coordinator has set the start
    let interval = sh.interval();
    // Tokens of clients that may send, earliest due first.
    let mut idle: BinaryHeap<Reverse<(Instant, usize)>> = clients
        .iter()
        .map(|&c| Reverse((sh.first_due(c), c)))
        .collect();
    let mut outstanding = 0usize;
    let mut finished = false;
    let mut gen = 0u64;
    let mut req = Vec::with_capacity(64 << 10);
    let mut backoff = Duration::from_millis(10);
    'connection: loop {
        let s = match stream.take() {
            Some(s) => s,
            None if finished => break,
            None => match sh.connect(endpoint) {
                Ok(s) => {
                    backoff = Duration::from_millis(10);
                    s
                }
                Err(_) => {
                    rec.error(CONNECT_FAILED);
                    if sh.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            },
        };
        gen += 1;
        let (inflight_tx, inflight_rx) = unbounded::<InFlight>();
        let reader = match s.try_clone() {
            Ok(rs) => {
                let events = events_tx.clone();
                let timeout = sh.timeout;
                thread::Builder::new()
                    .name(format!("reader-{conn_index}"))
                    .stack_size(128 << 10)
                    .spawn(move || read_replies(rs, inflight_rx, events, gen, timeout, interval))
            }
            Err(e) => Err(e),
        };
        let reader = match reader {
            Ok(h) => h,
            Err(_) => {
                rec.error(CONN_DROPPED);
                thread::sleep(backoff);
                continue;
            }
        };
        let mut w = s;
        let mut broken = false;
        loop {
            // Take back the tokens whose replies are in.
            while let Ok(ev) = events_rx.try_recv() {
                handle(ev, gen, &mut idle, &mut outstanding, &mut broken);
            }
            if broken {
                break;
            }
            if sh.stop.load(Ordering::Relaxed) {
                finished = true;
            }
            if finished && outstanding == 0 {
                break;
            }
            // Send every request that is due, in one write.
            let now = Instant::now();
            req.clear();
            while !finished {
                let Some(&Reverse((due, client))) = idle.peek() else {
                    break;
                };
                if due > now {
                    break;
                }
                let intended = if interval.is_some() { due } else { now };
                let Some(measured) = sh.claim(intended) else {
                    finished = true;
                    break;
                };
                idle.pop();
                let op = sh.workload.next_request(&mut rng, &mut req);
                // The reader owns the receiver until we drop the sender.
                let _ = inflight_tx.send(InFlight {
                    client,
                    op,
                    intended,
                    sent: now,
                    measured,
                });
                outstanding += 1;
            }
            if !req.is_empty() && w.write_all(&req).is_err() {
                break; // the reader sees the shutdown and fails what is in flight
            }
            // Wait for a reply or for the next due time.
            let mut wait = Duration::from_millis(50);
            if let Some(&Reverse((due, _))) = idle.peek() {
                if !finished {
                    wait = wait.min(due.saturating_duration_since(Instant::now()));
                }
            }
            match events_rx.recv_timeout(wait) {
                Ok(ev) => handle(ev, gen, &mut idle, &mut outstanding, &mut broken),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => unreachable!("we hold a sender"),
            }
        }
        // Close this connection: the reader fails whatever is still in flight
        // and hands those tokens back through `events`.
        let _ = w.shutdown(Shutdown::Both);
        drop(inflight_tx);
        if let Ok(r) = reader.join() {
            rec.merge(r);
        }
        // Every request of this connection is answered or failed by now.
        while let Ok(ev) = events_rx.try_recv() {
            handle(ev, gen, &mut idle, &mut outstanding, &mut broken);
        }
        debug_assert_eq!(outstanding, 0);
        if finished {
            break 'connection;
        }
    }
    rec
}

/// Applies one reader event to the writer's state.
fn handle(
    ev: Event,
    gen: u64,
    idle: &mut BinaryHeap<Reverse<(Instant, usize)>>,
    outstanding: &mut usize,
    broken: &mut bool,
) {
    match ev {
        Event::Ready { client, due } => {
            *outstanding -= 1;
            idle.push(Reverse((due, client)));
        }
        Event::Broken { gen: g } => *broken |= g == gen,
    }
}

/// The reader of one shared connection: matches reply lines to in-flight
/// requests in order until the writer drops the sender.
fn read_replies(
    s: TcpStream,
    inflight: Receiver<InFlight>,
    events: Sender<Event>,
    gen: u64,
    timeout: Duration,
    interval: Option<Duration>,
) -> Recorder {
    let mut rec = Recorder::default();
    // Poll with a short timeout so a missing reply is noticed per request.
    let poll = Duration::from_millis(100).min(timeout);
    let mut failed: Option<&'static str> =
        s.set_read_timeout(Some(poll)).err().map(|_| CONN_DROPPED);
    let mut r = BufReader::with_capacity(64 << 10, s);
    let mut line = Vec::with_capacity(512);
    for req in inflight.iter() {
        if failed.is_none() {
            line.clear();
            failed = loop {
                match r.read_until(b'\n', &mut line) {
                    Ok(_) if line.last() == Some(&b'\n') => break None,
                    Ok(_) => break Some(CONN_DROPPED), // EOF
                    // A timed-out read keeps what it got in `line`: go on reading.
                    Err(e) if error_code_for(&e) == CLIENT_TIMEOUT => {
                        if req.sent.elapsed() > timeout {
                            break Some(CLIENT_TIMEOUT);
                        }
                    }
                    Err(_) => break Some(CONN_DROPPED),
                }
            };
            if failed.is_some() {
                let _ = r.get_ref().shutdown(Shutdown::Both);
                let _ = events.send(Event::Broken { gen });
            }
        }
        let done = Instant::now();
        let outcome = match failed {
            None => classify(req.op, &line),
            Some(code) => Outcome::Error(code),
        };
        rec.record(req.measured, req.op, req.intended, done, outcome);
        let due = match interval {
            Some(iv) => req.intended + iv,
            None => done,
        };
        let _ = events.send(Event::Ready {
            client: req.client,
            due,
        });
    }
    rec
}
