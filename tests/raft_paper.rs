//! The consensus core checked against the Raft paper ("In Search of an
//! Understandable Consensus Algorithm", extended version) and Diego Ongaro's
//! thesis, one test per rule, named after the section it comes from.
//!
//! Tests drive the public `RawNode` API through the shared harness
//! (`raftnode_testkit::harness`): a `Cluster` over `MemStorage`, where nothing moves
//! unless a test says so. Where a rule is about a single node's reaction, the
//! test steps hand-made messages into it and inspects what it sends back.

use raftnode::raft::{ConfChangeKind, Error, Message, MessageBody, NodeId, ReadState, Role};
use raftnode_testkit::harness::cluster::conf;
use raftnode_testkit::harness::{append, ent, msg, Cluster, Filter, Options};

// ---- helpers ------------------------------------------------------------

/// The paper's basic algorithm: no PreVote, no CheckQuorum.
fn plain() -> Options {
    Options {
        pre_vote: false,
        check_quorum: false,
        ..Options::default()
    }
}

/// A cluster of `n` in which node 1 has won term 1 and everything settled.
fn with_leader(n: u64, opts: Options) -> Cluster {
    let mut c = Cluster::new(n, opts);
    c.campaign(1);
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Leader);
    c
}

/// Runs node `id`'s Ready and returns the messages it sent, taking them off
/// the network.
fn sent_by(c: &mut Cluster, id: NodeId) -> Vec<Message> {
    c.process_ready(id);
    let (mine, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut c.queue)
        .into_iter()
        .partition(|m| m.from == id);
    c.queue = rest;
    mine
}

fn vote(pre: bool, last_index: u64, last_term: u64) -> MessageBody {
    MessageBody::RequestVote {
        pre,
        last_index,
        last_term,
        transfer: false,
        campaign: 0,
    }
}

fn accept(index: u64) -> MessageBody {
    MessageBody::AppendResponse {
        index,
        reject: false,
        reject_hint: 0,
        hint_term: 0,
        recovery: 0,
    }
}

/// Whether `ms` holds a vote response from `from` and whether it granted.
fn vote_granted(ms: &[Message], from: NodeId) -> Option<bool> {
    ms.iter().find_map(|m| match m.body {
        MessageBody::RequestVoteResponse { reject, .. } if m.from == from => Some(!reject),
        _ => None,
    })
}

fn terms(c: &Cluster, id: NodeId) -> Vec<u64> {
    c.node(id).log().iter().map(|e| e.term).collect()
}

fn no_anomalies(c: &Cluster) {
    assert!(c.anomalies.is_empty(), "{:?}", c.anomalies);
    assert!(
        c.invariant_violations().is_empty(),
        "{:?}",
        c.invariant_violations()
    );
}

// ---- §5.1: terms ---------------------------------------------------------

/// Reference: section 5.1
/// "If a server's current term is smaller than the other's, it updates its
/// current term to the larger value. If a candidate or leader discovers that
/// its term is out of date, it immediately reverts to follower state."
#[test]
fn section_5_1_higher_term_turns_every_role_into_follower() {
    for role in [Role::Follower, Role::Candidate, Role::Leader] {
        for body in [
            append(0, 0, vec![], 0),
            MessageBody::Heartbeat {
                commit: 0,
                context: vec![],
            },
            vote(false, 5, 5),
        ] {
            let mut c = Cluster::new(3, plain());
            match role {
                Role::Follower => {}
                Role::Candidate => c.campaign(1),
                _ => {
                    c.campaign(1);
                    c.stabilize();
                }
            }
            assert_eq!(c.node(1).role(), role);
            let name = body.name();
            c.step_raw(1, msg(2, 1, 7, body));
            let n = c.node(1);
            assert_eq!(n.term(), 7, "{role:?} on {name}");
            assert_eq!(n.role(), Role::Follower, "{role:?} on {name}");
        }
    }
}

/// Reference: section 5.1
/// "If a server receives a request with a stale term number, it rejects the
/// request." A deposed leader's append changes nothing, and its answer
/// carries the newer term so the sender can step down.
#[test]
fn section_5_1_stale_term_request_is_rejected() {
    let mut c = with_leader(3, Options::default());
    c.set_log(2, &[1, 3], Some(3), 0, 1);
    let before = c.node(2).log_terms();
    c.step_raw(2, msg(1, 2, 1, append(2, 3, vec![ent(3, 1)], 3)));
    c.step_raw(2, msg(3, 2, 2, vote(false, 9, 2)));
    let out = sent_by(&mut c, 2);
    let n = c.node(2);
    assert_eq!(n.log_terms(), before, "stale append must not touch the log");
    assert_eq!((n.term(), n.status().hard_state.vote), (3, 0));
    assert!(
        out.iter().all(|m| m.term == 3),
        "answers carry the current term: {out:?}"
    );
    assert!(
        vote_granted(&out, 2).is_none(),
        "stale vote request gets no grant"
    );
}

// ---- §5.2: leader election ------------------------------------------------

/// Reference: section 5.2
/// "If a follower receives no communication over a period of time called the
/// election timeout, then it ... begins an election": it increments its
/// term, votes for itself and sends RequestVote to every other server.
#[test]
fn section_5_2_follower_starts_election_after_timeout() {
    let mut c = Cluster::new(3, plain());
    let mut ticks = 0;
    while c.node(2).role() == Role::Follower {
        c.tick(2, 1);
        ticks += 1;
        assert!(ticks < 20, "no election after 2 x election timeout");
    }
    assert!(
        ticks >= 10,
        "campaigned after {ticks} ticks, before the timeout"
    );
    let st = c.node(2).status();
    assert_eq!(st.soft_state.role, Role::Candidate);
    assert_eq!((st.hard_state.term, st.hard_state.vote), (1, 2));
    let mut to: Vec<NodeId> = sent_by(&mut c, 2)
        .iter()
        .filter(|m| m.term == 1 && matches!(m.body, MessageBody::RequestVote { pre: false, .. }))
        .map(|m| m.to)
        .collect();
    to.sort();
    assert_eq!(to, vec![1, 3]);
}

/// Reference: section 5.2
/// "A candidate wins an election if it receives votes from a majority of
/// the servers in the full cluster for the same term"; it returns to
/// follower once a majority has refused, and otherwise keeps waiting.
#[test]
fn section_5_2_candidate_wins_with_a_majority_of_votes() {
    // (cluster size, votes from 2.., expected role)
    type Case = (u64, &'static [(NodeId, bool)], Role);
    let cases: &[Case] = &[
        (1, &[], Role::Leader),
        (3, &[(2, true)], Role::Leader),
        (3, &[(2, false)], Role::Candidate),
        (3, &[(2, false), (3, false)], Role::Follower),
        (5, &[(2, true)], Role::Candidate),
        (5, &[(2, true), (3, true)], Role::Leader),
        (5, &[(2, false), (3, false)], Role::Candidate),
        (5, &[(2, false), (3, false), (4, false)], Role::Follower),
        (
            5,
            &[(2, true), (3, false), (4, false), (5, true)],
            Role::Leader,
        ),
    ];
    for (n, votes, want) in cases {
        let mut c = Cluster::new(*n, plain());
        c.campaign(1);
        for &(from, granted) in votes.iter() {
            let body = MessageBody::RequestVoteResponse {
                pre: false,
                reject: !granted,
                campaign: 0,
            };
            c.step_raw(1, msg(from, 1, 1, body));
        }
        assert_eq!(c.node(1).role(), *want, "{n} nodes, votes {votes:?}");
        assert_eq!(c.node(1).term(), 1);
    }
}

/// Reference: section 5.2
/// "Each server will vote for at most one candidate in a given term, on a
/// first-come-first-served basis." A repeated request from the candidate it
/// voted for is granted again (the answer may have been lost).
#[test]
fn section_5_2_voter_votes_at_most_once_per_term() {
    let mut c = Cluster::new(3, plain());
    c.step_raw(1, msg(2, 1, 1, vote(false, 0, 0)));
    assert_eq!(vote_granted(&sent_by(&mut c, 1), 1), Some(true));
    c.step_raw(1, msg(3, 1, 1, vote(false, 0, 0)));
    assert_eq!(vote_granted(&sent_by(&mut c, 1), 1), Some(false));
    c.step_raw(1, msg(2, 1, 1, vote(false, 0, 0)));
    assert_eq!(vote_granted(&sent_by(&mut c, 1), 1), Some(true));
    // The vote is durable: a restarted node still refuses 3.
    c.restart(1);
    c.step_raw(1, msg(3, 1, 1, vote(false, 0, 0)));
    assert_eq!(vote_granted(&sent_by(&mut c, 1), 1), Some(false));
    assert_eq!(c.node(1).status().hard_state.vote, 2);
}

/// Reference: section 5.2
/// "Raft uses randomized election timeouts ... chosen randomly from a fixed
/// interval": each timeout falls in [election, 2 * election), they vary from
/// one election to the next and from node to node, and a seed replays them.
#[test]
fn section_5_2_randomized_election_timeouts_differ() {
    fn timeouts(seed_node: NodeId, elections: usize) -> Vec<usize> {
        let mut c = Cluster::new(5, plain());
        let mut out = Vec::new();
        let mut ticks = 0;
        let mut term = c.node(seed_node).term();
        while out.len() < elections {
            c.tick(seed_node, 1);
            ticks += 1;
            let t = c.node(seed_node).term();
            if t != term {
                out.push(ticks);
                ticks = 0;
                term = t;
            }
        }
        out
    }
    let first = timeouts(1, 100);
    assert!(first.iter().all(|&t| (10..20).contains(&t)), "{first:?}");
    let distinct: std::collections::BTreeSet<_> = first.iter().collect();
    assert!(distinct.len() >= 5, "too little spread: {distinct:?}");
    assert_eq!(first, timeouts(1, 100), "same seed, same timeouts");
    let per_node: Vec<Vec<usize>> = (1..=5).map(|id| timeouts(id, 3)).collect();
    let distinct_nodes: std::collections::BTreeSet<_> = per_node.iter().collect();
    assert!(
        distinct_nodes.len() > 1,
        "every node draws the same: {per_node:?}"
    );
}

/// Reference: section 5.2
/// "If the leader's term ... is at least as large as the candidate's current
/// term, then the candidate recognizes the leader as legitimate and returns
/// to follower state. If the term in the RPC is smaller ... the candidate
/// rejects the RPC and continues in candidate state."
#[test]
fn section_5_2_candidate_steps_down_on_append_from_leader_of_its_term() {
    let mut c = Cluster::new(3, plain());
    c.campaign(1); // candidate in term 1
    c.campaign(1); // its election timed out: candidate again, in term 2
    assert_eq!((c.node(1).role(), c.node(1).term()), (Role::Candidate, 2));
    c.step_raw(1, msg(2, 1, 1, append(0, 0, vec![], 0)));
    assert_eq!(c.node(1).role(), Role::Candidate, "stale append is ignored");
    c.step_raw(1, msg(2, 1, 2, append(0, 0, vec![ent(1, 2)], 0)));
    let n = c.node(1);
    assert_eq!((n.role(), n.term(), n.leader()), (Role::Follower, 2, 2));
}

/// Reference: section 5.2
/// "If many followers become candidates at the same time, votes could be
/// split so that no candidate obtains a majority. When this happens, each
/// candidate will time out and start a new election."
#[test]
fn section_5_2_split_vote_resolved_by_a_later_election() {
    let mut c = Cluster::new(4, plain());
    c.campaign(1);
    c.campaign(3);
    c.process_ready_all();
    c.deliver(&Filter {
        from: Some(vec![1]),
        to: Some(vec![2]),
        ..Filter::default()
    });
    c.deliver(&Filter {
        from: Some(vec![3]),
        to: Some(vec![4]),
        ..Filter::default()
    });
    c.stabilize();
    assert!(c.leader().is_none(), "2 of 4 votes is not a majority");
    for _ in 0..40 {
        c.tick_all(1);
        c.stabilize();
        if c.leader().is_some() {
            break;
        }
    }
    let leader = c.leader().expect("a later election succeeds");
    assert!(c.node(leader).term() >= 2);
    no_anomalies(&c);
}

// ---- §5.3: log replication ------------------------------------------------

/// Reference: section 5.3
/// "The leader appends the command to its log as a new entry, then issues
/// AppendEntries RPCs in parallel to each of the other servers"; the entry
/// is committed once a majority has it, and then applied everywhere.
#[test]
fn section_5_3_leader_appends_replicates_and_commits() {
    let mut c = with_leader(3, Options::default());
    c.propose(1, "put a=1").unwrap();
    let out = sent_by(&mut c, 1);
    assert_eq!(out.len(), 2);
    for m in &out {
        match &m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                assert_eq!((*prev_index, *prev_term, *commit), (1, 1, 1));
                assert_eq!(entries.len(), 1);
                assert_eq!((entries[0].index, entries[0].term), (2, 1));
                assert_eq!(entries[0].data, b"put a=1");
            }
            other => panic!("expected append, got {other:?}"),
        }
    }
    assert_eq!(
        c.node(1).commit(),
        1,
        "not committed before a majority has it"
    );
    c.queue.extend(out);
    c.deliver(&Filter::to(2));
    c.process_ready(2);
    c.deliver(&Filter::to(1));
    c.process_ready(1);
    assert_eq!(c.node(1).commit(), 2, "leader and 2 are a majority");
    c.stabilize();
    for id in 1..=3 {
        assert_eq!(
            c.node(id).machine.kv.get("a").map(String::as_str),
            Some("1")
        );
    }
    no_anomalies(&c);
}

/// Reference: section 5.3
/// "If the follower does not find an entry in its log with the same index
/// and term, then it refuses the new entries." A matching append is taken.
#[test]
fn section_5_3_follower_consistency_check() {
    let mut c = Cluster::new(3, plain());
    c.set_log(2, &[1, 1, 1], Some(1), 0, 1);
    // prev beyond the end of the log
    c.step_raw(2, msg(1, 2, 2, append(4, 2, vec![ent(5, 2)], 1)));
    // prev present, but with another term
    c.step_raw(2, msg(1, 2, 2, append(3, 2, vec![ent(4, 2)], 1)));
    let out = sent_by(&mut c, 2);
    let rejected: Vec<u64> = out
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::AppendResponse {
                index,
                reject: true,
                ..
            } => Some(index),
            _ => None,
        })
        .collect();
    assert_eq!(rejected, vec![4, 3]);
    assert_eq!(
        terms(&c, 2),
        vec![1, 1, 1],
        "a refused append changes nothing"
    );
    // prev matches: accepted; the conflicting entry 3/1 after it is replaced.
    c.step_raw(2, msg(1, 2, 2, append(2, 1, vec![ent(3, 2), ent(4, 2)], 1)));
    let out = sent_by(&mut c, 2);
    assert!(
        matches!(
            out[0].body,
            MessageBody::AppendResponse {
                index: 4,
                reject: false,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(terms(&c, 2), vec![1, 1, 2, 2]);
}

/// Reference: section 5.3, Figure 7
/// "The leader handles inconsistencies by forcing the followers' logs to
/// duplicate its own." The leader of term 8 meets each of the six follower
/// logs (a)-(f) of Figure 7 (missing entries, extra uncommitted entries, or
/// both) and brings every one to match its own log exactly.
#[test]
fn section_5_3_figure_7_leader_repairs_every_follower_log() {
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [(&str, &[u64]); 6] = [
        ("a", &[1, 1, 1, 4, 4, 5, 5, 6, 6]),
        ("b", &[1, 1, 1, 4]),
        ("c", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]),
        ("d", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]),
        ("e", &[1, 1, 1, 4, 4, 4, 4]),
        ("f", &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]),
    ];
    for (name, follower) in followers {
        let mut c = Cluster::new(3, plain());
        // Everyone agrees entries 1-3 are committed. Node 3 has an empty
        // log and will vote for the leader, so the leader wins term 8 even
        // when the follower under test, more up to date, refuses.
        c.set_log(1, &leader_log, Some(7), 0, 3);
        c.set_log(2, follower, Some(7), 0, 3);
        c.set_log(3, &[1, 1, 1], Some(7), 0, 3);
        c.campaign(1);
        c.stabilize();
        assert_eq!(
            (c.node(1).role(), c.node(1).term()),
            (Role::Leader, 8),
            "({name})"
        );
        let want: Vec<u64> = leader_log.iter().copied().chain([8]).collect();
        assert_eq!(terms(&c, 1), want, "({name}) leader log");
        assert_eq!(terms(&c, 2), want, "({name}) follower log");
        assert_eq!(c.node(2).commit(), 11, "({name})");
        no_anomalies(&c);
    }
}

// ---- §5.4: safety -----------------------------------------------------------

/// Reference: section 5.4.1
/// "The voter denies its vote if its own log is more up-to-date than that
/// of the candidate": compare last terms, then, on equal terms, lengths.
#[test]
fn section_5_4_1_vote_refused_to_candidate_with_out_of_date_log() {
    // The voter's log ends with 2/2.
    let cases = [
        ((1, 1), false), // lower last term
        ((3, 1), false), // lower last term, longer log
        ((1, 2), false), // same last term, shorter
        ((2, 2), true),  // identical
        ((3, 2), true),  // same last term, longer
        ((1, 3), true),  // higher last term, shorter
    ];
    for ((last_index, last_term), want) in cases {
        let mut c = Cluster::new(3, plain());
        c.set_log(1, &[1, 2], Some(2), 0, 0);
        c.step_raw(1, msg(2, 1, 3, vote(false, last_index, last_term)));
        let got = vote_granted(&sent_by(&mut c, 1), 1);
        assert_eq!(got, Some(want), "candidate last {last_index}/{last_term}");
        let vote = c.node(1).status().hard_state.vote;
        assert_eq!(vote, if want { 2 } else { 0 });
    }
}

/// Reference: section 5.4.2, Figure 8
/// "Raft never commits log entries from previous terms by counting
/// replicas. Only log entries from the leader's current term are committed
/// by counting replicas; once an entry from the current term has been
/// committed in this way, then all prior entries are committed indirectly."
/// As in Figure 8 (c): S1 leads term 4 with 2/2 from its own term 2; S2 and
/// S3 report having it, a majority with S1, yet nothing commits until they
/// also have 3/4.
#[test]
fn section_5_4_2_figure_8_no_commit_by_counting_old_term_replicas() {
    let mut c = Cluster::new(5, plain());
    c.set_log(1, &[1, 2], Some(3), 0, 1);
    c.set_log(2, &[1], Some(3), 0, 1);
    c.set_log(3, &[1], Some(3), 0, 1);
    c.set_log(4, &[1], Some(3), 0, 1);
    c.set_log(5, &[1, 3], Some(3), 5, 1);
    c.partition(vec![vec![5]]);
    c.campaign(1);
    c.stabilize_only(&Filter {
        types: Some(vec!["vote".into(), "vote_response".into()]),
        ..Filter::default()
    });
    assert_eq!((c.node(1).role(), c.node(1).term()), (Role::Leader, 4));
    c.process_ready(1); // S1 persists its no-op 3/4
    c.drop(&Filter::default());
    assert_eq!(terms(&c, 1), vec![1, 2, 4]);
    c.step_raw(1, msg(2, 1, 4, accept(2)));
    c.step_raw(1, msg(3, 1, 4, accept(2)));
    assert_eq!(
        c.node(1).commit(),
        1,
        "2/2 is on S1, S2, S3, but not from term 4"
    );
    c.step_raw(1, msg(2, 1, 4, accept(3)));
    assert_eq!(c.node(1).commit(), 1, "3/4 is only on S1 and S2");
    c.step_raw(1, msg(3, 1, 4, accept(3)));
    assert_eq!(
        c.node(1).commit(),
        3,
        "3/4 on a majority commits 2/2 with it"
    );
    no_anomalies(&c);
}

/// Reference: section 5.4.2, Figure 8 (d)
/// Why the rule matters: an entry of an earlier term that sits on a
/// majority can still be overwritten by a later leader. S5 (last entry 2/3)
/// wins term 5 and replaces 2/2 everywhere; since nobody committed 2/2,
/// nobody applied it.
#[test]
fn section_5_4_2_figure_8_old_term_entry_on_majority_can_be_overwritten() {
    let mut c = Cluster::new(5, plain());
    c.set_log(1, &[1, 2], Some(4), 1, 1);
    c.set_log(2, &[1, 2], Some(4), 1, 1);
    c.set_log(3, &[1, 2], Some(4), 1, 1);
    c.set_log(4, &[1], Some(4), 1, 1);
    c.set_log(5, &[1, 3], Some(4), 5, 1);
    c.partition(vec![vec![1]]); // S1 has crashed
    c.campaign(5);
    c.stabilize();
    assert_eq!((c.node(5).role(), c.node(5).term()), (Role::Leader, 5));
    for id in 2..=5 {
        assert_eq!(terms(&c, id), vec![1, 3, 5], "node {id}");
    }
    no_anomalies(&c);
}

// ---- §6 (thesis §4): membership changes -------------------------------------

/// Reference: section 6 (thesis 4.1)
/// Adding a voter: the new configuration is used once the change is applied,
/// and from then on a majority of the new configuration is needed. The new
/// node starts from the bootstrap membership and ends with the same
/// configuration as everyone else.
#[test]
fn section_6_add_voter() {
    let mut c = with_leader(3, Options::default());
    let bootstrap = c.node(1).status().conf_state;
    c.add_node(4, bootstrap);
    c.propose_conf(1, conf(ConfChangeKind::AddNode, 4)).unwrap();
    c.process_ready(1);
    assert_eq!(
        c.node(1).status().conf_state.voters,
        vec![1, 2, 3],
        "appended is not applied"
    );
    c.stabilize();
    assert_eq!(c.node(1).status().conf_state.voters, vec![1, 2, 3, 4]);
    c.tick(1, 1);
    c.stabilize();
    for id in 1..=4 {
        assert_eq!(
            c.node(id).status().conf_state.voters,
            vec![1, 2, 3, 4],
            "node {id}"
        );
    }
    c.partition(vec![vec![3, 4]]);
    c.propose(1, "put a=1").unwrap();
    c.stabilize();
    assert_eq!(c.node(1).commit(), 2, "2 of 4 is not a majority");
    c.heal();
    c.tick(1, 1);
    c.stabilize();
    assert_eq!(c.node(1).commit(), 3);
    no_anomalies(&c);
}

/// Reference: section 6 (thesis 4.1)
/// Removing a voter: once applied, the leader stops replicating to it and a
/// majority of the remaining voters suffices.
#[test]
fn section_6_remove_voter() {
    let mut c = with_leader(3, Options::default());
    c.propose_conf(1, conf(ConfChangeKind::RemoveNode, 3))
        .unwrap();
    c.stabilize();
    let st = c.node(1).status();
    assert_eq!(st.conf_state.voters, vec![1, 2]);
    assert!(!st.progress.contains_key(&3));
    c.partition(vec![vec![3]]);
    c.propose(1, "put a=1").unwrap();
    let out = sent_by(&mut c, 1);
    assert!(
        out.iter().all(|m| m.to != 3),
        "nothing for the removed node"
    );
    c.queue.extend(out);
    c.stabilize();
    assert_eq!(c.node(1).commit(), 3, "1 and 2 are a majority of 1,2");
    no_anomalies(&c);
}

/// Reference: section 6 (thesis 4.1)
/// "The leader does not begin a new configuration change until the
/// previous one has been committed" (here: applied).
#[test]
fn section_6_one_membership_change_at_a_time() {
    let mut c = with_leader(3, Options::default());
    c.propose_conf(1, conf(ConfChangeKind::AddNode, 4)).unwrap();
    let second = c.propose_conf(1, conf(ConfChangeKind::AddNode, 5));
    assert!(
        matches!(second, Err(Error::ProposalDropped(_))),
        "{second:?}"
    );
    c.propose(1, "put a=1")
        .expect("normal proposals are not held up");
    c.stabilize();
    c.propose_conf(1, conf(ConfChangeKind::AddNode, 5))
        .expect("accepted once the first change is applied");
}

/// Reference: section 6 (thesis 4.2.2)
/// A leader that is removed steps down once the change is applied, hands
/// over to a caught-up voter, and never campaigns again.
#[test]
fn section_6_removed_leader_steps_down() {
    let mut c = with_leader(3, Options::default());
    c.propose_conf(1, conf(ConfChangeKind::RemoveNode, 1))
        .unwrap();
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Follower);
    let leader = c.leader().expect("a voter took over");
    assert_ne!(leader, 1);
    assert_eq!(c.node(leader).status().conf_state.voters, vec![2, 3]);
    c.tick(1, 100);
    assert_eq!(
        c.node(1).role(),
        Role::Follower,
        "a non-member never campaigns"
    );
    no_anomalies(&c);
}

// ---- §6.4 (thesis): ReadIndex -------------------------------------------------

/// Reference: section 6.4 (thesis)
/// A read index is released only after a heartbeat round acknowledged by a
/// majority, and is the leader's commit index when the request arrived.
#[test]
fn section_6_4_read_index_needs_a_majority_heartbeat_round() {
    let mut c = with_leader(3, Options::default());
    c.read_index(1, "r1").unwrap();
    let out = sent_by(&mut c, 1);
    let acked: Vec<NodeId> = out
        .iter()
        .filter(|m| matches!(&m.body, MessageBody::Heartbeat { context, .. } if context == b"r1"))
        .map(|m| m.to)
        .collect();
    assert_eq!(acked, vec![2, 3]);
    c.process_ready(1);
    assert!(c.node(1).reads.is_empty(), "no answer before any ack");
    let ack = MessageBody::HeartbeatResponse {
        context: b"r1".to_vec(),
        recovery: 0,
    };
    c.step_raw(1, msg(2, 1, 1, ack));
    c.process_ready(1);
    assert_eq!(
        c.node(1).reads,
        vec![ReadState {
            index: 1,
            context: b"r1".to_vec()
        }]
    );
}

/// Reference: section 6.4 (thesis)
/// "The leader must ... have committed an entry from its current term"
/// before it can serve a read: until then its commit index may lag behind
/// what its predecessor committed.
#[test]
fn section_6_4_new_leader_defers_reads_until_it_commits_in_its_term() {
    let mut c = Cluster::new(3, Options::default());
    c.set_log(1, &[1, 1, 1], Some(1), 0, 3);
    c.set_log(2, &[1, 1, 1], Some(1), 0, 2);
    c.set_log(3, &[1, 1, 1], Some(1), 0, 2);
    c.partition(vec![vec![1]]);
    c.campaign(2);
    c.stabilize_only(&Filter {
        types: Some(
            ["prevote", "prevote_response", "vote", "vote_response"]
                .map(String::from)
                .to_vec(),
        ),
        ..Filter::default()
    });
    assert_eq!(c.node(2).role(), Role::Leader);
    c.read_index(2, "r").unwrap();
    c.process_ready(2);
    assert!(c.node(2).reads.is_empty());
    c.stabilize();
    assert_eq!(
        c.node(2).reads,
        vec![ReadState {
            index: 4,
            context: b"r".to_vec()
        }]
    );
}

// ---- thesis §3.10: leadership transfer --------------------------------------

/// Reference: section 3.10 (thesis)
/// The leader brings the target up to date, refusing proposals meanwhile,
/// then sends TimeoutNow; the target campaigns at once and wins.
#[test]
fn section_3_10_leadership_transfer_catches_the_target_up_first() {
    let mut c = with_leader(3, Options::default());
    c.partition(vec![vec![3]]);
    c.propose(1, "put a=1").unwrap();
    c.stabilize();
    c.heal();
    c.transfer(1, 3).unwrap();
    let refused = c.propose(1, "put b=2");
    assert!(
        matches!(refused, Err(Error::ProposalDropped(_))),
        "{refused:?}"
    );
    let out = sent_by(&mut c, 1);
    assert!(
        out.iter().all(|m| m.body != MessageBody::TimeoutNow),
        "3 lags: no TimeoutNow yet"
    );
    c.queue.extend(out);
    c.stabilize();
    assert_eq!(c.leader(), Some(3));
    assert_eq!(c.node(3).term(), 2);
    assert_eq!(c.node(3).machine.kv.get("a").map(String::as_str), Some("1"));
    no_anomalies(&c);
}

/// Reference: section 3.10 (thesis)
/// "If the transfer does not complete after about an election timeout, the
/// prior leader aborts the transfer and resumes accepting client requests."
#[test]
fn section_3_10_leadership_transfer_aborted_after_election_timeout() {
    let mut c = with_leader(3, Options::default());
    c.partition(vec![vec![3]]);
    c.propose(1, "put a=1").unwrap();
    c.stabilize();
    c.transfer(1, 3).unwrap();
    assert_eq!(c.node(1).status().lead_transferee, 3);
    for _ in 0..10 {
        c.tick(1, 1);
        c.stabilize();
    }
    assert_eq!(c.node(1).status().lead_transferee, 0);
    assert_eq!(c.node(1).role(), Role::Leader);
    c.propose(1, "put b=2").expect("accepting proposals again");
}

// ---- thesis §9.6: PreVote ----------------------------------------------------

/// Reference: section 9.6 (thesis)
/// A PreVote round changes no term and no vote: a partitioned node that
/// keeps timing out stays at its term, and rejoins without forcing an
/// election.
#[test]
fn section_9_6_prevote_keeps_a_partitioned_node_from_bumping_its_term() {
    let mut c = with_leader(3, Options::default());
    c.partition(vec![vec![3]]);
    for _ in 0..10 {
        c.tick(3, 20);
        c.stabilize();
    }
    assert_eq!(c.node(3).term(), 1);
    assert_eq!(c.node(3).role(), Role::PreCandidate);
    c.heal();
    c.tick(1, 1);
    c.stabilize();
    assert_eq!((c.node(1).role(), c.node(1).term()), (Role::Leader, 1));
    assert_eq!((c.node(3).role(), c.node(3).leader()), (Role::Follower, 1));
}

/// Reference: section 9.6 (thesis)
/// A PreVote is granted under the same conditions as a vote (up-to-date
/// log, no known leader), but the voter records nothing.
#[test]
fn section_9_6_prevote_granted_without_changing_term_or_vote() {
    let mut c = Cluster::new(3, Options::default());
    c.set_log(1, &[1, 2], Some(2), 0, 0);
    c.step_raw(1, msg(2, 1, 3, vote(true, 2, 2)));
    c.step_raw(1, msg(3, 1, 3, vote(true, 1, 2)));
    let out = sent_by(&mut c, 1);
    let answer = |to: NodeId| out.iter().find(|m| m.to == to).map(|m| m.body.clone());
    let granted = MessageBody::RequestVoteResponse {
        pre: true,
        reject: false,
        campaign: 0,
    };
    let refused = MessageBody::RequestVoteResponse {
        pre: true,
        reject: true,
        campaign: 0,
    };
    assert_eq!(answer(2), Some(granted), "log as up to date");
    assert_eq!(answer(3), Some(refused), "shorter log");
    let hs = c.node(1).status().hard_state;
    assert_eq!((hs.term, hs.vote), (2, 0));
}

// ---- thesis §6.2: CheckQuorum --------------------------------------------------

/// Reference: section 6.2 (thesis)
/// A leader that has not heard from a majority for an election timeout
/// steps down.
#[test]
fn section_6_2_check_quorum_leader_without_majority_steps_down() {
    let mut c = with_leader(3, Options::default());
    c.partition(vec![vec![1]]);
    c.tick(1, 10); // the first check still counts the answers of the election
    assert_eq!(c.node(1).role(), Role::Leader);
    c.tick(1, 10);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).term(), 1);
}

/// Reference: section 6.2 (thesis)
/// "If a server receives a RequestVote request within the minimum election
/// timeout of hearing from a current leader, it does not update its term or
/// grant its vote", unless the election is a leadership transfer.
#[test]
fn section_6_2_follower_in_lease_ignores_vote_requests() {
    let mut c = with_leader(3, Options::default());
    c.step_raw(2, msg(3, 2, 5, vote(false, 9, 9)));
    assert!(sent_by(&mut c, 2).is_empty(), "ignored, not even refused");
    assert_eq!((c.node(2).term(), c.node(2).leader()), (1, 1));
    let transfer = MessageBody::RequestVote {
        pre: false,
        last_index: 9,
        last_term: 9,
        transfer: true,
        campaign: 0,
    };
    c.step_raw(2, msg(3, 2, 5, transfer));
    assert_eq!(vote_granted(&sent_by(&mut c, 2), 2), Some(true));
    assert_eq!(c.node(2).term(), 5);
}
