//! How replies travel back to client connections, and the registry of
//! requests waiting for their entry to apply.
//!
//! Every client request gets exactly one reply. The thread that has it (the
//! node thread, the ready thread, the snapshot thread) calls
//! [`ReplyTx::send`], which puts it in the client server's [`Outbox`] and
//! wakes the server's I/O thread, at most once per batch: a thread that
//! answers a hundred requests of one Ready causes one wake-up, not a hundred.
//! The I/O thread puts each reply in its connection's slot and writes the
//! slots out in request order (`server/conn.rs`); the first reply for a slot
//! wins, so a late answer to a request that already timed out is dropped.
//!
//! The ready thread *holds* the outbox while it applies a batch. When it
//! releases it with at most [`DIRECT_MAX`] replies queued and the I/O thread
//! is idle, it writes them itself (`server::IoState::deliver`): the reply
//! then leaves without any wake-up of the I/O thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::protocol::Reply;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a reply goes: a connection, and the request's place in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addressee {
    pub conn: usize,
    pub seq: u64,
}

/// Replies on their way to the client I/O thread.
pub struct Outbox {
    queue: Mutex<Vec<(Addressee, Reply)>>,
    /// Set while a wake-up is on its way; cleared by the I/O thread before
    /// it drains, so a reply pushed after the drain wakes it again.
    woken: AtomicBool,
    wake: Box<dyn Fn() + Send + Sync>,
    /// Set between [`Outbox::hold`] and [`Outbox::release`].
    held: AtomicBool,
    /// Writes the queued replies from the calling thread if the reader is
    /// idle; false if it could not (see [`Outbox::set_direct`]).
    direct: OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
}

/// At most this many replies, held and then released together, are written
/// by the releasing thread itself; more go to the I/O thread, so that the
/// ready thread does not spend a large batch's socket writes on its own
/// path (those writes also wake each client).
pub const DIRECT_MAX: usize = 4;

impl Outbox {
    /// An outbox that calls `wake` to rouse its reader.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Outbox {
        Outbox {
            queue: Mutex::default(),
            woken: AtomicBool::new(false),
            wake: Box::new(wake),
            held: AtomicBool::new(false),
            direct: OnceLock::new(),
        }
    }

    /// How a releasing thread may write replies itself: `direct` writes
    /// everything queued and returns true, or returns false (the reader is
    /// busy, or must still look at a connection) and the reader is woken.
    pub fn set_direct(&self, direct: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.direct.set(Box::new(direct));
    }

    fn push(&self, to: Addressee, reply: Reply) {
        lock(&self.queue).push((to, reply));
        if !self.held.load(Ordering::Acquire) && !self.woken.swap(true, Ordering::AcqRel) {
            (self.wake)();
        }
    }

    /// Replies pushed from now on (by any thread) wait for
    /// [`Outbox::release`] instead of waking the reader: the ready thread
    /// holds the outbox while it applies a batch.
    pub fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }

    /// Ends a hold. Up to [`DIRECT_MAX`] queued replies are written by the
    /// calling thread if the reader is idle; otherwise the reader is woken,
    /// once.
    pub fn release(&self) {
        self.held.store(false, Ordering::Release);
        let queued = lock(&self.queue).len();
        if queued == 0 {
            return;
        }
        if queued <= DIRECT_MAX {
            if let Some(direct) = self.direct.get() {
                if direct() {
                    return;
                }
            }
        }
        if !self.woken.swap(true, Ordering::AcqRel) {
            (self.wake)();
        }
    }

    /// Everything pushed so far (the I/O thread's side).
    pub fn drain(&self, into: &mut Vec<(Addressee, Reply)>) {
        self.woken.store(false, Ordering::Release);
        std::mem::swap(&mut *lock(&self.queue), into);
    }

    /// Wakes the reader without a reply (to make it look at something else).
    pub fn nudge(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            (self.wake)();
        }
    }
}

/// The sending half of one request's reply.
#[derive(Clone)]
pub struct ReplyTx {
    outbox: Arc<Outbox>,
    to: Addressee,
}

impl ReplyTx {
    pub fn new(outbox: Arc<Outbox>, to: Addressee) -> ReplyTx {
        ReplyTx { outbox, to }
    }

    /// Delivers `reply`. Never blocks on the client.
    pub fn send(&self, reply: Reply) {
        self.outbox.push(self.to, reply);
    }
}

/// Requests this node proposed, waiting for their entry to apply, by
/// request id. The client server registers them, the ready thread answers
/// them as entries apply, the node thread when a proposal is refused or the
/// leader changes.
#[derive(Default)]
pub struct Pending {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, ReplyTx>>,
}

impl Pending {
    /// Starts this incarnation's request ids at `base`. Entries proposed by
    /// an earlier incarnation of the node can still be applied after a
    /// restart, and they would answer whichever request of this incarnation
    /// had the same id; ids must therefore never repeat across restarts.
    pub fn start_ids_at(&self, base: u64) {
        self.next_id.store(base, Ordering::Relaxed);
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<u64, ReplyTx>> {
        lock(&self.waiting)
    }

    /// Registers a request that will be answered through `reply`; returns
    /// its id, which travels in the proposed entry.
    pub fn register(&self, reply: ReplyTx) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.waiting().insert(id, reply);
        id
    }

    /// Answers request `id`, if someone still waits for it.
    pub fn answer(&self, id: u64, reply: Reply) {
        if let Some(tx) = self.waiting().remove(&id) {
            tx.send(reply);
        }
    }

    /// Answers every waiting request with `reply`.
    pub fn answer_all(&self, reply: &Reply) {
        for (_, tx) in self.waiting().drain() {
            tx.send(reply.clone());
        }
    }

    /// Forgets request `id` (its client gave up).
    pub fn forget(&self, id: u64) {
        self.waiting().remove(&id);
    }

    /// How many requests wait.
    pub fn len(&self) -> usize {
        self.waiting().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// An outbox whose wakes are counted and whose direct writer counts
    /// its calls and answers `direct_ok`.
    fn counted(direct_ok: bool) -> (Arc<Outbox>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = wakes.clone();
        let outbox = Arc::new(Outbox::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        }));
        let directs = Arc::new(AtomicUsize::new(0));
        let d = directs.clone();
        let o = Arc::downgrade(&outbox);
        outbox.set_direct(move || {
            d.fetch_add(1, Ordering::Relaxed);
            if direct_ok {
                if let Some(o) = o.upgrade() {
                    o.drain(&mut Vec::new());
                }
            }
            direct_ok
        });
        (outbox, wakes, directs)
    }

    fn push_n(outbox: &Arc<Outbox>, n: u64) {
        for seq in 0..n {
            ReplyTx::new(outbox.clone(), Addressee { conn: 7, seq }).send(Reply::Ok);
        }
    }

    #[test]
    fn a_held_small_batch_is_written_by_the_releasing_thread_without_a_wake() {
        let (outbox, wakes, directs) = counted(true);
        outbox.hold();
        push_n(&outbox, DIRECT_MAX as u64);
        assert_eq!(wakes.load(Ordering::Relaxed), 0, "no wake while held");
        outbox.release();
        assert_eq!(directs.load(Ordering::Relaxed), 1);
        assert_eq!(wakes.load(Ordering::Relaxed), 0);
        // Not held: the next reply wakes the reader as before.
        push_n(&outbox, 1);
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_held_large_batch_or_a_busy_reader_gets_one_wake() {
        let (outbox, wakes, directs) = counted(true);
        outbox.hold();
        push_n(&outbox, DIRECT_MAX as u64 + 1);
        outbox.release();
        assert_eq!(
            directs.load(Ordering::Relaxed),
            0,
            "too many to write directly"
        );
        assert_eq!(wakes.load(Ordering::Relaxed), 1);

        let (outbox, wakes, directs) = counted(false);
        outbox.hold();
        push_n(&outbox, 1);
        outbox.release();
        assert_eq!(directs.load(Ordering::Relaxed), 1);
        assert_eq!(
            wakes.load(Ordering::Relaxed),
            1,
            "the reader could not be bypassed"
        );
        // An empty release does nothing.
        let (outbox, wakes, directs) = counted(true);
        outbox.hold();
        outbox.release();
        assert_eq!(
            directs.load(Ordering::Relaxed) + wakes.load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn a_batch_of_replies_wakes_the_reader_once() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = wakes.clone();
        let outbox = Arc::new(Outbox::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        }));
        let txs: Vec<ReplyTx> = (0..100)
            .map(|seq| ReplyTx::new(outbox.clone(), Addressee { conn: 7, seq }))
            .collect();
        for tx in &txs {
            tx.send(Reply::Ok);
        }
        assert_eq!(wakes.load(Ordering::Relaxed), 1);
        let mut got = Vec::new();
        outbox.drain(&mut got);
        assert_eq!(got.len(), 100);
        assert_eq!(got[99].0, Addressee { conn: 7, seq: 99 });
        // After a drain, the next reply wakes the reader again.
        txs[0].send(Reply::Pong);
        assert_eq!(wakes.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn pending_requests_are_answered_once() {
        let outbox = Arc::new(Outbox::new(|| {}));
        let p = Pending::default();
        p.start_ids_at(1000);
        let id = p.register(ReplyTx::new(outbox.clone(), Addressee { conn: 1, seq: 0 }));
        assert_eq!(id, 1001);
        p.answer(id, Reply::Ok);
        p.answer(id, Reply::Deleted);
        let mut got = Vec::new();
        outbox.drain(&mut got);
        assert_eq!(got, vec![(Addressee { conn: 1, seq: 0 }, Reply::Ok)]);
        assert!(p.is_empty());
    }
}
