//! One-shot reply slots, the registry of requests waiting for their entry
//! to apply, and the per-connection answer queue.
//!
//! Every client request gets exactly one reply, produced on the node or
//! ready thread and consumed by the connection's writer thread. A crossbeam
//! channel per request worked, but its blocking receive spins and calls
//! `sched_yield` before it parks; with two threads per connection on a
//! 2-core machine that was a fifth of the node's CPU in the benchmark's
//! profile. A mutex and a condvar park at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::protocol::Reply;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Slot {
    reply: Mutex<Option<Reply>>,
    ready: Condvar,
}

/// The sending half of a reply slot; the first reply wins.
#[derive(Clone)]
pub struct ReplyTx(Arc<Slot>);

/// The receiving half of a reply slot.
pub struct ReplyRx(Arc<Slot>);

/// A fresh reply slot.
pub fn reply_slot() -> (ReplyTx, ReplyRx) {
    let slot = Arc::new(Slot::default());
    (ReplyTx(slot.clone()), ReplyRx(slot))
}

impl ReplyTx {
    /// Delivers `reply` unless one was delivered already. Never blocks.
    pub fn send(&self, reply: Reply) {
        let mut r = lock(&self.0.reply);
        if r.is_none() {
            *r = Some(reply);
            self.0.ready.notify_one();
        }
    }
}

impl ReplyRx {
    /// Waits for the reply until `deadline`; `None` if it did not come.
    pub fn recv_deadline(&self, deadline: Instant) -> Option<Reply> {
        let mut r = lock(&self.0.reply);
        loop {
            if let Some(reply) = r.take() {
                return Some(reply);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            r = match self.0.ready.wait_timeout(r, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// Requests this node proposed, waiting for their entry to apply, by
/// request id. Client threads register them, the ready thread answers them
/// as entries apply, the node thread when a proposal is refused or the
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

/// An unbounded FIFO between one producer and one consumer thread that
/// parks without spinning. Closed when the producer says so.
pub struct Queue<T> {
    inner: Mutex<(VecDeque<T>, bool)>,
    ready: Condvar,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            inner: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
        }
    }
}

impl<T> Queue<T> {
    pub fn push(&self, item: T) {
        lock(&self.inner).0.push_back(item);
        self.ready.notify_one();
    }

    /// No more items will come; `pop` returns `None` once drained.
    pub fn close(&self) {
        lock(&self.inner).1 = true;
        self.ready.notify_one();
    }

    /// The next item, waiting for it; `None` once closed and drained.
    pub fn pop(&self) -> Option<T> {
        let mut g = lock(&self.inner);
        loop {
            if let Some(item) = g.0.pop_front() {
                return Some(item);
            }
            if g.1 {
                return None;
            }
            g = match self.ready.wait(g) {
                Ok(g) => g,
                Err(e) => e.into_inner(),
            };
        }
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.inner).0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_first_reply_wins_and_a_missing_one_times_out() {
        let (tx, rx) = reply_slot();
        tx.send(Reply::Ok);
        tx.send(Reply::Pong);
        assert_eq!(rx.recv_deadline(Instant::now()), Some(Reply::Ok));
        let (_tx, rx) = reply_slot();
        assert_eq!(
            rx.recv_deadline(Instant::now() + Duration::from_millis(5)),
            None
        );
    }

    #[test]
    fn a_reply_from_another_thread_wakes_the_receiver() {
        let (tx, rx) = reply_slot();
        let t = std::thread::spawn(move || tx.send(Reply::Deleted));
        assert_eq!(
            rx.recv_deadline(Instant::now() + Duration::from_secs(5)),
            Some(Reply::Deleted)
        );
        t.join().unwrap();
    }

    #[test]
    fn the_queue_is_fifo_and_ends_when_closed() {
        let q = Arc::new(Queue::default());
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            for i in 0..100 {
                q2.push(i);
            }
            q2.close();
        });
        let got: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        t.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }
}
