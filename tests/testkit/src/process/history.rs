//! A recorded history of client operations, as Jepsen records one.
//!
//! Each operation is recorded once it is over, with the process that issued
//! it, what it asked, when it was invoked and when it completed (nanoseconds
//! since the history began), and what came back. A write whose outcome is
//! unknown (`ERR TIMEOUT`, `ERR NO_LEADER`, `ERR LEADER_CHANGED`, any other
//! error that is not `BAD_REQUEST`, or a connection that dropped or timed
//! out) is *indeterminate*: it has no completion time, it may take effect at
//! any point after its invocation, or never. A process that had an
//! indeterminate operation issues nothing more; its client goes on as a new
//! process.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Get,
    Put(String),
    Cas { expected: String, new: String },
    Del,
}

impl OpKind {
    pub fn is_write(&self) -> bool {
        !matches!(self, OpKind::Get)
    }
}

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `GET`: `VALUE v` (Some) or `NOT_FOUND` (None).
    Read(Option<String>),
    /// `PUT` or `CAS` answered `OK`.
    Ok,
    /// `DEL` answered `DELETED`.
    Deleted,
    /// `CAS` or `DEL` answered `NOT_FOUND`.
    NotFound,
    /// `CAS` answered `MISMATCH <current>`.
    Mismatch(String),
    /// A write whose outcome is unknown.
    Unknown,
    /// Definitely no effect: a read that failed, or `ERR BAD_REQUEST`.
    Failed,
}

/// One operation.
#[derive(Clone, Debug)]
pub struct Op {
    pub process: u64,
    /// The node the process was connected to.
    pub node: u64,
    pub key: String,
    pub kind: OpKind,
    pub invoke: u64,
    /// `None` for an indeterminate write.
    pub complete: Option<u64>,
    pub outcome: Outcome,
    /// The raw reply line, or the client error.
    pub reply: String,
}

impl Op {
    pub fn is_indeterminate(&self) -> bool {
        self.outcome == Outcome::Unknown
    }

    /// Parses a reply line into an outcome for an operation of `kind`.
    pub fn outcome_of(kind: &OpKind, reply: &str) -> Outcome {
        let unknown = || {
            if kind.is_write() {
                Outcome::Unknown
            } else {
                Outcome::Failed
            }
        };
        if reply.starts_with("ERR BAD_REQUEST") {
            return Outcome::Failed;
        }
        if reply.starts_with("ERR ") {
            return unknown();
        }
        match (kind, reply) {
            (OpKind::Get, "NOT_FOUND") => Outcome::Read(None),
            (OpKind::Get, r) if r.starts_with("VALUE ") => Outcome::Read(Some(r[6..].to_string())),
            (OpKind::Put(_), "OK") | (OpKind::Cas { .. }, "OK") => Outcome::Ok,
            (OpKind::Del, "DELETED") => Outcome::Deleted,
            (OpKind::Del, "NOT_FOUND") | (OpKind::Cas { .. }, "NOT_FOUND") => Outcome::NotFound,
            (OpKind::Cas { .. }, r) if r.starts_with("MISMATCH ") => {
                Outcome::Mismatch(r[9..].to_string())
            }
            // A reply that makes no sense for the request: the node is
            // broken; keep it as the most permissive outcome and let the
            // caller count it.
            _ => unknown(),
        }
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            OpKind::Get => "GET".to_string(),
            OpKind::Put(v) => format!("PUT {v}"),
            OpKind::Cas { expected, new } => format!("CAS {expected} {new}"),
            OpKind::Del => "DEL".to_string(),
        };
        let end = match self.complete {
            Some(c) => format!("{:.3}", c as f64 / 1e9),
            None => "?".to_string(),
        };
        format!(
            "p{} n{} [{:.3}, {end}] {} {} -> {}",
            self.process,
            self.node,
            self.invoke as f64 / 1e9,
            self.key,
            what,
            self.reply
        )
    }
}

/// The history being recorded: shared by all client threads.
#[derive(Clone)]
pub struct History {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Arc::default(),
        }
    }

    /// Nanoseconds since the history began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn len(&self) -> usize {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counts for the summary line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub ok: usize,
    pub failed: usize,
    pub indeterminate: usize,
}

pub fn counts(ops: &[Op]) -> Counts {
    let mut c = Counts::default();
    for op in ops {
        match op.outcome {
            Outcome::Unknown => c.indeterminate += 1,
            Outcome::Failed => c.failed += 1,
            _ => c.ok += 1,
        }
    }
    c
}
