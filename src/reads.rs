//! Linearizable reads waiting for their read index to be applied.
//!
//! The node thread issues read-index requests for a batch of reads under
//! one context and tells the ready thread ([`ReadNotice::Batch`]) before the
//! Ready that carries the answer can reach it. The ready thread matches each
//! [`ReadState`] to its batch and serves the batch once the applied index
//! reaches the read index (thesis §6.4): the value served is then at least
//! as new as anything committed when the read arrived.

use std::collections::HashMap;
#[cfg(test)]
use std::sync::Arc;
use std::time::Instant;

use crate::kv::KvStore;
use crate::protocol::{ErrorCode, Reply};
use crate::raft::ReadState;
use crate::reply::ReplyTx;

/// What the node thread tells the ready thread about reads.
pub enum ReadNotice {
    /// Reads issued under read-index context `ctx`.
    Batch(Vec<u8>, Vec<ReadWaiter>),
    /// The leader changed: read-index requests in flight may be lost.
    LeaderChanged,
    /// The batch of context `ctx` cannot get its read index (its request
    /// could not reach the leader): answer its reads with this reply now.
    Fail(Vec<u8>, Reply),
    /// TEST ONLY (`RAFTNODE_DEBUG_UNSAFE_LOCAL_READS`): reads to serve from
    /// local state without a read index.
    Local(Vec<ReadWaiter>),
}

/// Largest sum of value bytes one [`Query::MGet`] may answer with (4 MiB);
/// over it, the read is refused rather than held and written out.
pub const MAX_MGET_BYTES: usize = 4 << 20;

/// What a linearizable read asks of the store. Several keys are read at
/// one applied index, so `MGET` and `EXISTS` see one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// One key's value (`GET`).
    Get(Vec<u8>),
    /// Several keys' values, in order (RESP's `MGET`).
    MGet(Vec<Vec<u8>>),
    /// How many of the keys are held, a key named twice counting twice
    /// (RESP's `EXISTS`).
    Exists(Vec<Vec<u8>>),
    /// How many keys the store holds (RESP's `DBSIZE`).
    Len,
}

impl Query {
    /// The answer from the store as it stands.
    pub fn answer(&self, kv: &KvStore) -> Reply {
        match self {
            Query::Get(key) => match kv.get_shared(key) {
                Some(v) => Reply::Value(v),
                None => Reply::NotFound,
            },
            Query::MGet(keys) => {
                let values: Vec<_> = keys.iter().map(|k| kv.get_shared(k)).collect();
                let bytes: usize = values.iter().flatten().map(|v| v.len()).sum();
                if bytes > MAX_MGET_BYTES {
                    let msg = format!(
                        "the values add up to {bytes} bytes, over the {MAX_MGET_BYTES}-byte \
                         limit of one MGET; ask for fewer keys"
                    );
                    return Reply::error(ErrorCode::BadRequest, msg);
                }
                Reply::Values(values)
            }
            Query::Exists(keys) => {
                Reply::Count(keys.iter().filter(|k| kv.get(k).is_some()).count() as u64)
            }
            Query::Len => Reply::Count(kv.len() as u64),
        }
    }
}

/// A read waiting for its read index to be applied.
pub struct ReadWaiter {
    pub query: Query,
    pub reply: ReplyTx,
    pub deadline: Instant,
}

/// The ready thread's reads: batches waiting for a read index, and batches
/// waiting for the applied index to reach theirs.
#[derive(Default)]
pub struct ReadQueue {
    by_context: HashMap<Vec<u8>, Vec<ReadWaiter>>,
    /// In read-index order.
    waiting: Vec<(u64, Vec<ReadWaiter>)>,
}

impl ReadQueue {
    pub fn notice(&mut self, notice: ReadNotice) {
        match notice {
            ReadNotice::Batch(ctx, waiters) => {
                self.by_context.insert(ctx, waiters);
            }
            ReadNotice::Local(waiters) => self.waiting.push((0, waiters)),
            ReadNotice::Fail(ctx, reply) => {
                // Already answered if its read state came first.
                for w in self.by_context.remove(&ctx).into_iter().flatten() {
                    w.reply.send(reply.clone());
                }
            }
            ReadNotice::LeaderChanged => {
                // Read states already received stay valid; requests whose
                // answer has not come may never come.
                let msg = "leader changed while the read was in flight; retry";
                self.fail_unanswered(&Reply::error(ErrorCode::LeaderChanged, msg));
            }
        }
    }

    /// A read index arrived for one of the batches.
    pub fn read_state(&mut self, rs: ReadState) {
        if let Some(w) = self.by_context.remove(&rs.context) {
            self.waiting.push((rs.index, w));
        }
    }

    /// Answers every read whose read index is applied.
    pub fn serve(&mut self, applied: u64, kv: &KvStore) {
        let now = Instant::now();
        self.waiting.retain(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters {
                if w.deadline > now {
                    w.reply.send(w.query.answer(kv));
                }
            }
            false
        });
        // Batches whose read state never came (leader change) are dropped
        // once all their clients have timed out.
        self.by_context
            .retain(|_, ws| ws.iter().any(|w| w.deadline > now));
    }

    fn fail_unanswered(&mut self, reply: &Reply) {
        for (_, ws) in self.by_context.drain() {
            for w in ws {
                w.reply.send(reply.clone());
            }
        }
    }

    /// Fails every read still waiting (the node is stopping).
    pub fn fail_all(&mut self, reply: &Reply) {
        self.fail_unanswered(reply);
        for (_, ws) in self.waiting.drain(..) {
            for w in ws {
                w.reply.send(reply.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Command;

    #[test]
    fn queries_read_one_state_and_mget_is_bounded() {
        let mut kv = KvStore::new();
        for (k, v) in [
            ("a", vec![b'1']),
            ("big1", vec![0; 3 << 20]),
            ("big2", vec![0; 2 << 20]),
        ] {
            kv.apply(Command::Put {
                key: k.as_bytes().to_vec(),
                value: v,
            });
        }
        let keys = |ks: &[&str]| ks.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            Query::MGet(keys(&["a", "nope"])).answer(&kv),
            Reply::Values(vec![Some(Arc::from(&b"1"[..])), None])
        );
        assert_eq!(
            Query::Exists(keys(&["a", "a", "nope"])).answer(&kv),
            Reply::Count(2)
        );
        assert_eq!(Query::Len.answer(&kv), Reply::Count(3));
        assert_eq!(Query::Get(b"nope".to_vec()).answer(&kv), Reply::NotFound);
        // 3 MiB fits; 5 MiB is refused rather than held.
        assert!(matches!(
            Query::MGet(keys(&["big1", "a"])).answer(&kv),
            Reply::Values(_)
        ));
        match Query::MGet(keys(&["big1", "big2"])).answer(&kv) {
            Reply::Error(ErrorCode::BadRequest, msg) => assert!(msg.contains("ask for fewer keys")),
            other => panic!("{other:?}"),
        }
    }
}
