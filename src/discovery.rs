//! What a node with an empty data dir does when started without `--join`:
//! bootstrap a new cluster, or recover as a member of a running one.
//!
//! The same command line starts a brand-new cluster and restarts a member
//! whose disk was replaced. Bootstrapping in the second case would be
//! wrong twice over: the node would forget the votes it cast (and could
//! vote twice in one term), and the leader, which believes it still holds
//! what it acknowledged, could never repair it. So before writing anything
//! the node asks each peer of `--peers`, on a connection of its own, what
//! it runs (a *probe*, answered by the transport's listener):
//!
//! | answers | decision |
//! | --- | --- |
//! | a running cluster that lists this node | recover (`raft/recovery.rs`), never bootstrap |
//! | every peer answered, each deciding too or freshly bootstrapped | bootstrap, as on any first start |
//! | every peer answered, a running cluster among them, none listing this node | refuse to start |
//! | this node was removed | refuse to start |
//! | otherwise (a peer down, say) | ask again |
//!
//! "Freshly bootstrapped" is a node that holds only the bootstrap entries
//! in term 1 and no cluster ID: nobody there has voted or accepted a write
//! yet (a first election moves to term 2), so the prober may join that
//! bootstrap. Waiting for **every** peer is what keeps a cluster with one
//! intact member from being bootstrapped over it, when the others lost
//! their disks: unavailable until that member is back, but nothing lost.
//! The cost is that a new cluster starts once every member in `--peers`
//! has been started once.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::error::StartError;
use crate::raft::NodeId;
use crate::tls::PeerTls;
use crate::transport::codec::{ProbeReply, Verdict};

/// How long between two rounds of probes.
const ROUND: Duration = Duration::from_millis(300);
/// How often the node says what it is waiting for.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// What a node with an empty data dir does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write the founding membership: a new cluster.
    Bootstrap,
    /// Start empty and recover: a running cluster lists this node, which
    /// lost its data. `term` is the highest term a peer reported.
    Recover { term: u64 },
}

/// Probes the peers until the answers decide; see the module docs.
pub fn discover(
    me: NodeId,
    peers: &BTreeMap<NodeId, String>,
    tls: Option<&PeerTls>,
) -> Result<Decision, StartError> {
    let mut last_report = None::<Instant>;
    loop {
        let mut answers = BTreeMap::new();
        let mut silent = Vec::new();
        for (&id, addr) in peers.iter().filter(|(&id, _)| id != me) {
            match crate::transport::probe(me, id, addr, tls) {
                Ok(reply) => {
                    answers.insert(id, reply);
                }
                Err(e) => silent.push(format!("{id} ({addr}: {e})")),
            }
        }
        if let Some(d) = decide(me, peers, &answers)? {
            match d {
                Decision::Bootstrap => info!(
                    "data dir is empty and no cluster runs at the peers: bootstrapping a new one"
                ),
                Decision::Recover { term } => warn!(
                    "data dir is empty but a running cluster (term {term}) lists node {me}: \
                     recovering from its peers instead of bootstrapping (a replaced disk?)"
                ),
            }
            return Ok(d);
        }
        if last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            last_report = Some(Instant::now());
            let waiting: Vec<String> = peers
                .keys()
                .filter(|&&id| id != me && !answered(answers.get(&id)))
                .map(|id| id.to_string())
                .collect();
            info!(
                "data dir is empty: asking the peers whether a cluster already runs before \
                 bootstrapping one; no answer yet from {} (a new cluster starts once every \
                 member in --peers is up){}",
                waiting.join(","),
                if silent.is_empty() {
                    String::new()
                } else {
                    format!("; unreachable: {}", silent.join(", "))
                }
            );
        }
        thread::sleep(ROUND);
    }
}

/// Whether a reply counts as an answer (a busy peer has not answered).
fn answered(reply: Option<&ProbeReply>) -> bool {
    !matches!(reply, None | Some(ProbeReply::Refused(Verdict::Busy)))
}

/// The decision the answers of one round allow, if any.
pub fn decide(
    me: NodeId,
    peers: &BTreeMap<NodeId, String>,
    answers: &BTreeMap<NodeId, ProbeReply>,
) -> Result<Option<Decision>, StartError> {
    let boot_entries = peers.len() as u64;
    let mut running_elsewhere = Vec::new();
    let mut max_term = 0;
    let mut listed = false;
    for (&id, reply) in answers {
        match *reply {
            ProbeReply::Refused(Verdict::Busy) | ProbeReply::Deciding => {}
            ProbeReply::Refused(Verdict::Removed) => {
                return Err(StartError::Discovery(format!(
                    "node {me} was removed from the cluster (peer {id} says so); an id is never \
                     reused: add a new member with ADD_NODE and start it with --join"
                )));
            }
            ProbeReply::Refused(v) => {
                return Err(StartError::Discovery(format!(
                    "peer {id} refuses node {me}: {v}; is --peers the same on every member?"
                )));
            }
            ProbeReply::Running {
                cluster_id,
                term,
                last_index,
                lists_prober,
            } => {
                max_term = max_term.max(term);
                let fresh = cluster_id == 0 && term <= 1 && last_index <= boot_entries;
                if !fresh {
                    listed |= lists_prober;
                    running_elsewhere.push(format!("{id} (term {term}, last index {last_index})"));
                }
            }
        }
    }
    if listed {
        return Ok(Some(Decision::Recover { term: max_term }));
    }
    let all = peers
        .keys()
        .filter(|&&id| id != me)
        .all(|id| answered(answers.get(id)));
    if !all {
        return Ok(None);
    }
    if !running_elsewhere.is_empty() {
        return Err(StartError::Discovery(format!(
            "a cluster already runs at {} and does not list node {me}: add it with \
             ADD_NODE {me} <address> and start it with --join",
            running_elsewhere.join(", ")
        )));
    }
    Ok(Some(Decision::Bootstrap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: u64) -> BTreeMap<NodeId, String> {
        (1..=n)
            .map(|i| (i, format!("127.0.0.1:{}", 7000 + i)))
            .collect()
    }

    fn running(term: u64, last_index: u64, cluster_id: u64, lists: bool) -> ProbeReply {
        ProbeReply::Running {
            cluster_id,
            term,
            last_index,
            lists_prober: lists,
        }
    }

    fn answers(list: &[(NodeId, ProbeReply)]) -> BTreeMap<NodeId, ProbeReply> {
        list.iter().copied().collect()
    }

    #[test]
    fn a_new_cluster_bootstraps_once_every_peer_answered() {
        let p = peers(3);
        let some = answers(&[(2, ProbeReply::Deciding)]);
        assert_eq!(decide(1, &p, &some).unwrap(), None);
        let busy = answers(&[
            (2, ProbeReply::Deciding),
            (3, ProbeReply::Refused(Verdict::Busy)),
        ]);
        assert_eq!(decide(1, &p, &busy).unwrap(), None);
        // A peer that already bootstrapped, in term 1 with only the
        // bootstrap entries, has not voted or accepted anything.
        let all = answers(&[(2, ProbeReply::Deciding), (3, running(1, 3, 0, true))]);
        assert_eq!(decide(1, &p, &all).unwrap(), Some(Decision::Bootstrap));
        assert_eq!(
            decide(1, &peers(1), &answers(&[])).unwrap(),
            Some(Decision::Bootstrap)
        );
    }

    #[test]
    fn a_running_cluster_that_lists_the_node_makes_it_recover() {
        let p = peers(3);
        // One answer is enough: the others may be down.
        let one = answers(&[(2, running(7, 120, 42, true))]);
        assert_eq!(
            decide(1, &p, &one).unwrap(),
            Some(Decision::Recover { term: 7 })
        );
        // An elected leader (term 2) is a running cluster even before its
        // cluster ID commits.
        let elected = answers(&[(2, ProbeReply::Deciding), (3, running(2, 3, 0, true))]);
        assert_eq!(
            decide(1, &p, &elected).unwrap(),
            Some(Decision::Recover { term: 2 })
        );
    }

    #[test]
    fn a_cluster_that_does_not_list_the_node_or_removed_it_is_refused() {
        let p = peers(3);
        let not_listed = answers(&[(2, running(5, 50, 9, false)), (3, ProbeReply::Deciding)]);
        let e = decide(1, &p, &not_listed).unwrap_err().to_string();
        assert!(e.contains("does not list node 1"), "{e}");
        // Not before every peer answered: another may list it.
        let partial = answers(&[(2, running(5, 50, 9, false))]);
        assert_eq!(decide(1, &p, &partial).unwrap(), None);
        let removed = answers(&[(2, ProbeReply::Refused(Verdict::Removed))]);
        let e = decide(1, &p, &removed).unwrap_err().to_string();
        assert!(e.contains("removed"), "{e}");
    }
}
