//! The client workload: a few clients on a few keys, recording a history.
//!
//! Each client thread plays a succession of Jepsen *processes*. A process
//! is connected to one node, chosen at random, and issues one operation at
//! a time: `GET`, `PUT` with a value never written before, or `CAS` from a
//! value it has seen to a new unique one. When an operation's outcome is
//! unknown (an error other than `BAD_REQUEST`, a timeout, a dropped
//! connection), the process is over: the client reconnects to a random node
//! as a new process. A failed read ends the process too (its connection may
//! be wedged behind a paused node).
//!
//! Keys rotate so that no key's history grows beyond a few hundred
//! operations: the keys in use are `g<generation>k<i>`, and the generation
//! moves on every `keys * ops_per_key` operations.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::rng::Rng;

use super::history::{History, Op, OpKind, Outcome};
use super::Client;

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub clients: usize,
    /// Keys in use at a time.
    pub keys: usize,
    /// Operations per key before the keys rotate.
    pub ops_per_key: u64,
    /// A reply that takes longer than this counts as a dropped connection.
    pub reply_timeout: Duration,
    /// Pause between two operations of a client, at most (random).
    pub think: Duration,
    pub seed: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            clients: 8,
            keys: 4,
            ops_per_key: 150,
            reply_timeout: Duration::from_millis(2500),
            think: Duration::from_millis(3),
            seed: 1,
        }
    }
}

/// Running client threads.
pub struct Workload {
    pub history: History,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub processes: Arc<AtomicU64>,
}

impl Workload {
    /// Starts the clients against nodes `(id, client address)`.
    pub fn start(cfg: WorkloadConfig, nodes: Vec<(u64, String)>) -> Workload {
        let history = History::new();
        let stop = Arc::new(AtomicBool::new(false));
        let processes = Arc::new(AtomicU64::new(0));
        let issued = Arc::new(AtomicU64::new(0));
        let values = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for c in 0..cfg.clients {
            let ctx = ClientCtx {
                cfg: cfg.clone(),
                nodes: nodes.clone(),
                history: history.clone(),
                stop: stop.clone(),
                processes: processes.clone(),
                issued: issued.clone(),
                values: values.clone(),
                rng: Rng::new(cfg.seed.wrapping_mul(1000).wrapping_add(c as u64)),
            };
            threads.push(
                thread::Builder::new()
                    .name(format!("client-{c}"))
                    .spawn(move || ctx.run())
                    .expect("client thread"),
            );
        }
        Workload {
            history,
            stop,
            threads,
            processes,
        }
    }

    /// Stops the clients and waits for their last operations.
    pub fn stop(mut self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.history.clone()
    }
}

struct ClientCtx {
    cfg: WorkloadConfig,
    nodes: Vec<(u64, String)>,
    history: History,
    stop: Arc<AtomicBool>,
    processes: Arc<AtomicU64>,
    issued: Arc<AtomicU64>,
    values: Arc<AtomicU64>,
    rng: Rng,
}

impl ClientCtx {
    fn connect(&mut self) -> Option<(u64, Client)> {
        while !self.stop.load(Ordering::Relaxed) {
            let (id, addr) = self.nodes[self.rng.below(self.nodes.len() as u64) as usize].clone();
            if let Ok(mut c) = Client::connect_timeout(&addr, Duration::from_millis(300)) {
                c.set_timeout(self.cfg.reply_timeout);
                return Some((id, c));
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn run(mut self) {
        // Last value this client saw per key, to aim CAS at.
        let mut seen: HashMap<String, String> = HashMap::new();
        'process: while let Some((node, mut client)) = self.connect() {
            let process = self.processes.fetch_add(1, Ordering::SeqCst);
            while !self.stop.load(Ordering::Relaxed) {
                let n = self.issued.fetch_add(1, Ordering::Relaxed);
                let generation = n / (self.cfg.keys as u64 * self.cfg.ops_per_key);
                let key = format!("g{generation}k{}", self.rng.below(self.cfg.keys as u64));
                let new_value = || format!("v{}", self.values.fetch_add(1, Ordering::Relaxed));
                let roll = self.rng.below(100);
                let kind = if roll < 40 {
                    OpKind::Get
                } else if roll < 75 {
                    OpKind::Put(new_value())
                } else {
                    let expected = seen.get(&key).cloned().unwrap_or_else(|| "v-none".into());
                    OpKind::Cas {
                        expected,
                        new: new_value(),
                    }
                };
                let line = match &kind {
                    OpKind::Get => format!("GET {key}"),
                    OpKind::Put(v) => format!("PUT {key} {v}"),
                    OpKind::Cas { expected, new } => format!("CAS {key} {expected} {new}"),
                    OpKind::Del => format!("DEL {key}"),
                };
                let invoke = self.history.now();
                let reply: io::Result<String> = client.request(&line);
                let done = self.history.now();
                let (outcome, reply, complete) = match reply {
                    Ok(r) => {
                        let o = Op::outcome_of(&kind, &r);
                        let c = (o != Outcome::Unknown).then_some(done);
                        (o, r, c)
                    }
                    Err(e) => {
                        let o = if kind.is_write() {
                            Outcome::Unknown
                        } else {
                            Outcome::Failed
                        };
                        let c = (o != Outcome::Unknown).then_some(done);
                        (o, format!("connection: {e}"), c)
                    }
                };
                match &outcome {
                    Outcome::Read(Some(v)) | Outcome::Mismatch(v) => {
                        seen.insert(key.clone(), v.clone());
                    }
                    Outcome::Ok => {
                        if let OpKind::Put(v) | OpKind::Cas { new: v, .. } = &kind {
                            seen.insert(key.clone(), v.clone());
                        }
                    }
                    _ => {}
                }
                let over = matches!(outcome, Outcome::Unknown | Outcome::Failed);
                self.history.record(Op {
                    process,
                    node,
                    key,
                    kind,
                    invoke,
                    complete,
                    outcome,
                    reply,
                });
                if over {
                    continue 'process;
                }
                let think = self.cfg.think.as_micros() as u64;
                if think > 0 {
                    thread::sleep(Duration::from_micros(self.rng.below(think + 1)));
                }
            }
            break;
        }
    }
}
