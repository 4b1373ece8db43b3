//! The simulated network: one bag of messages in flight.
//!
//! A message may be dropped or duplicated when sent, and is held back a
//! random number of steps before it can be delivered. Delivery picks a
//! random deliverable message (or, half the time, the oldest), which
//! reorders freely. A partition splits the nodes into two sides; messages
//! across it are lost at delivery time, including those already in flight.
//! A crash loses each message the node had not yet put on the wire.

use std::collections::BTreeMap;

use raftnode::raft::{Message, NodeId, Rng};

/// A message in flight.
pub struct Packet {
    pub msg: Message,
    /// The sender's incarnation, for transport reports back to it.
    pub from_inc: u64,
    /// First step at which it may be delivered.
    pub ready_at: u64,
}

#[derive(Default)]
pub struct Network {
    queue: Vec<Packet>,
    /// Side of each node while partitioned; empty when healed.
    side: BTreeMap<NodeId, bool>,
    pub drop_permille: u64,
    pub dup_permille: u64,
    pub max_delay: u64,
}

/// A coin with `permille` chance in a thousand.
pub fn chance(rng: &mut Rng, permille: u64) -> bool {
    rng.below(1000) < permille
}

/// The longest a stale message is held back, in steps.
const STALE_DELAY: u64 = 2000;

/// More in flight than this means the receivers cannot keep up; the oldest
/// messages are lost, as a bounded sender queue would drop them.
const MAX_IN_FLIGHT: usize = 4096;

impl Network {
    /// Puts `msg` on the wire. Returns false if it was lost at once.
    pub fn send(&mut self, rng: &mut Rng, now: u64, msg: Message, from_inc: u64) -> bool {
        if chance(rng, self.drop_permille) {
            return false;
        }
        if chance(rng, self.dup_permille) {
            let ready_at = now + self.delay(rng);
            self.queue.push(Packet {
                msg: msg.clone(),
                from_inc,
                ready_at,
            });
        }
        let ready_at = now + self.delay(rng);
        self.queue.push(Packet {
            msg,
            from_inc,
            ready_at,
        });
        if self.queue.len() > MAX_IN_FLIGHT {
            self.queue.remove(0);
        }
        true
    }

    /// How many steps a message is held back: up to `max_delay`, and now
    /// and then far longer, so that stale messages of old terms arrive.
    fn delay(&self, rng: &mut Rng) -> u64 {
        if self.max_delay > 0 && chance(rng, 5) {
            return rng.below(STALE_DELAY);
        }
        rng.below(self.max_delay + 1)
    }

    /// Takes a deliverable message, if any.
    pub fn pick(&mut self, rng: &mut Rng, now: u64) -> Option<Packet> {
        if self.queue.is_empty() {
            return None;
        }
        let i = rng.below(self.queue.len() as u64) as usize;
        if rng.below(2) == 0 && self.queue[i].ready_at <= now {
            return Some(self.queue.remove(i));
        }
        let i = self.queue.iter().position(|p| p.ready_at <= now)?;
        Some(self.queue.remove(i))
    }

    /// Takes the oldest message regardless of its delay (calm network).
    /// Whether some message in flight matches `f`.
    pub fn any(&self, f: impl Fn(&Message) -> bool) -> bool {
        self.queue.iter().any(|p| f(&p.msg))
    }

    pub fn pop_oldest(&mut self) -> Option<Packet> {
        if self.queue.is_empty() {
            None
        } else {
            Some(self.queue.remove(0))
        }
    }

    /// Whether a partition separates `a` from `b`.
    pub fn blocked(&self, a: NodeId, b: NodeId) -> bool {
        match (self.side.get(&a), self.side.get(&b)) {
            (Some(x), Some(y)) => x != y,
            _ => false,
        }
    }

    pub fn is_partitioned(&self) -> bool {
        !self.side.is_empty()
    }

    /// Splits the nodes: `minority` on one side, `rest` on the other.
    pub fn partition(&mut self, minority: &[NodeId], rest: &[NodeId]) {
        self.side.clear();
        for &id in minority {
            self.side.insert(id, true);
        }
        for &id in rest {
            self.side.insert(id, false);
        }
    }

    pub fn heal(&mut self) {
        self.side.clear();
    }

    /// No more drops, duplicates or delays.
    pub fn calm(&mut self) {
        self.drop_permille = 0;
        self.dup_permille = 0;
        self.max_delay = 0;
        for p in &mut self.queue {
            p.ready_at = 0;
        }
    }

    /// `from` crashed: each of its messages still in flight is lost with
    /// even odds (it had not left the process yet).
    pub fn lose_outbox(&mut self, rng: &mut Rng, from: NodeId) {
        self.queue
            .retain(|p| p.msg.from != from || rng.below(2) == 0);
    }
}
