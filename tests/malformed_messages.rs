//! Malformed and unexpected messages are ignored or rejected, never a panic.
//!
//! The network may deliver anything: messages with stale terms, from nodes
//! that are not members, addressed to someone else, carrying indexes outside
//! any log, entries that do not follow each other, or responses of a type
//! the receiving role never asked for. Each test feeds such messages to nodes
//! in every role and checks that the node keeps its invariants
//! (`applied <= committed <= last_index`, term and commit never go back) and
//! that the cluster can still elect a leader and commit afterwards, with no
//! safety violation.
//!
//! What is *not* tested here is a lying leader: a message that is well formed
//! and consistent with the sender's claimed role (an append from the current
//! leader with plausible entries) is indistinguishable from a real one, and
//! Raft does not defend against Byzantine peers.

use raftnode::raft::{
    ConfChangeKind, ConfState, Config, Entry, EntryKind, HardState, MemStorage, Message,
    MessageBody, NodeId, RawNode, Rng, Role, Snapshot, SnapshotMeta, Storage,
};
use raftnode_testkit::harness::cluster::conf;
use raftnode_testkit::harness::{append, msg, Cluster, Filter, Options};
use raftnode_testkit::ready;

const STRANGER: NodeId = 99;

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: b"put bad=1".to_vec(),
    }
}

fn resp(index: u64, reject: bool, reject_hint: u64, hint_term: u64) -> MessageBody {
    MessageBody::AppendResponse {
        index,
        reject,
        reject_hint,
        hint_term,
        recovery: 0,
    }
}

fn snapshot(index: u64, term: u64, voters: Vec<NodeId>) -> MessageBody {
    MessageBody::Snapshot {
        snapshot: Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                conf_state: ConfState::with_voters(voters),
            },
            data: Vec::new(),
        },
    }
}

/// Messages node `id` must survive, built from its current state. None of
/// them is a plausible message from a correct peer.
fn malformed_for(c: &Cluster, id: NodeId) -> Vec<Message> {
    let st = c.node(id).status();
    let term = st.hard_state.term;
    let stale = term.saturating_sub(1);
    let last = st.last_index;
    let commit = st.hard_state.commit;
    let last_term = c.node(id).log().last().map_or(0, |e| e.term);
    // A member other than `id` to impersonate; its own leader if it has one.
    let peer = match st.soft_state.leader {
        0 => {
            if id == 1 {
                2
            } else {
                1
            }
        }
        l if l != id => l,
        _ => {
            if id == 1 {
                2
            } else {
                1
            }
        }
    };
    let hb = |commit| MessageBody::Heartbeat {
        commit,
        context: Vec::new(),
    };
    let max = u64::MAX;
    let mut ms = vec![
        // Addressing: not for us, from nobody, from ourselves.
        msg(peer, STRANGER, term + 1, hb(commit)),
        msg(peer, 0, term + 1, append(last, last_term, vec![], max)),
        msg(0, id, term + 1, hb(max)),
        msg(id, id, term + 1, append(0, 0, vec![ent(1, term + 1)], max)),
        // Stale terms: every type.
        msg(
            peer,
            id,
            stale,
            append(last, last_term, vec![ent(last + 1, stale)], max),
        ),
        msg(peer, id, stale, hb(max)),
        msg(peer, id, stale, snapshot(max, stale, vec![peer])),
        msg(peer, id, stale, MessageBody::TimeoutNow),
        msg(
            peer,
            id,
            stale,
            MessageBody::RequestVote {
                pre: false,
                last_index: max,
                last_term: max,
                transfer: true,
                campaign: 0,
            },
        ),
        msg(
            peer,
            id,
            stale,
            MessageBody::RequestVoteResponse {
                pre: false,
                reject: false,
                campaign: 0,
            },
        ),
        msg(peer, id, stale, resp(last, false, 0, 0)),
        msg(
            peer,
            id,
            stale,
            MessageBody::ReadIndexResponse {
                index: max,
                context: b"x".to_vec(),
            },
        ),
        // Strangers: answers to questions never asked of them.
        msg(STRANGER, id, term, resp(last, false, 0, 0)),
        msg(STRANGER, id, term, resp(max, true, max, max)),
        msg(
            STRANGER,
            id,
            term,
            MessageBody::HeartbeatResponse {
                context: b"r".to_vec(),
                recovery: 0,
            },
        ),
        msg(
            STRANGER,
            id,
            term,
            MessageBody::RequestVoteResponse {
                pre: false,
                reject: false,
                campaign: 0,
            },
        ),
        msg(
            STRANGER,
            id,
            term + 1,
            MessageBody::RequestVoteResponse {
                pre: true,
                reject: false,
                campaign: 0,
            },
        ),
        msg(
            STRANGER,
            id,
            0,
            MessageBody::TransferLeader { target: STRANGER },
        ),
        // Append responses with indexes outside any log.
        msg(peer, id, term, resp(max, false, 0, 0)),
        msg(peer, id, term, resp(last + 1000, false, 0, 0)),
        msg(peer, id, term, resp(max, true, max, 0)),
        msg(peer, id, term, resp(last, true, max, 0)),
        msg(peer, id, term, resp(last, true, max, max)),
        msg(peer, id, term, resp(0, true, 0, 0)),
        msg(peer, id, term, resp(0, false, 0, 0)),
        // Answers of the wrong type for most roles.
        msg(
            peer,
            id,
            term,
            MessageBody::HeartbeatResponse {
                context: b"never-asked".to_vec(),
                recovery: 0,
            },
        ),
        msg(
            peer,
            id,
            term,
            MessageBody::RequestVoteResponse {
                pre: true,
                reject: false,
                campaign: 0,
            },
        ),
        msg(
            peer,
            id,
            term,
            MessageBody::ReadIndexResponse {
                index: max,
                context: b"never-asked".to_vec(),
            },
        ),
        // Forwarded requests that make no sense.
        msg(
            peer,
            id,
            0,
            MessageBody::Propose {
                entries: vec![Entry {
                    index: max,
                    term: max,
                    kind: EntryKind::ConfChange,
                    data: vec![7, 7],
                }],
            },
        ),
        msg(peer, id, 0, MessageBody::Propose { entries: vec![] }),
        msg(peer, id, 0, MessageBody::TransferLeader { target: 0 }),
        msg(peer, id, 0, MessageBody::TransferLeader { target: id }),
    ];
    // Appends that fail validation, at the current term from the node's
    // leader (or a peer): non-contiguous, duplicated, decreasing, from the
    // future, overflowing, or trying to rewrite committed entries.
    let t = term.max(1);
    for body in [
        append(
            last,
            last_term,
            vec![ent(last + 2, t), ent(last + 3, t)],
            commit,
        ),
        append(
            last,
            last_term,
            vec![ent(last + 1, t), ent(last + 1, t)],
            commit,
        ),
        append(
            last,
            last_term,
            vec![ent(last + 1, t), ent(last + 2, 0)],
            commit,
        ),
        append(last, last_term, vec![ent(last + 1, t + 5)], commit),
        append(last, last_term, vec![ent(last, t)], commit),
        append(max, max, vec![ent(0, t)], max),
        append(max, max, vec![], max),
        append(max - 1, t, vec![ent(max, t)], max),
        append(last + 100, t, vec![ent(last + 101, t)], max),
        append(0, 0, vec![ent(1, t), ent(3, t)], 0),
        append(0, 0, vec![ent(1, t + 1)], max),
    ] {
        ms.push(msg(peer, id, term, body));
    }
    // A rewrite of the committed entry at `commit`, if there is one.
    if commit > 0 {
        let prev_term = c
            .node(id)
            .log()
            .iter()
            .find(|e| e.index == commit - 1)
            .map_or(0, |e| e.term);
        ms.push(msg(
            peer,
            id,
            term,
            append(commit - 1, prev_term, vec![ent(commit, t)], commit),
        ));
    }
    // Snapshots that are no use: empty, or older than what is committed.
    ms.push(msg(peer, id, term, snapshot(0, 0, vec![])));
    ms.push(msg(peer, id, term, snapshot(commit, t, vec![1, 2, 3])));
    ms
}

/// Checks node `id`'s invariants and that term and commit did not go back.
fn check(c: &Cluster, id: NodeId, before: HardState, what: &str) {
    let st = c.node(id).status();
    let hs = st.hard_state;
    assert!(
        st.applied <= hs.commit && hs.commit <= st.last_index,
        "node {id} after {what}: applied={} commit={} last={}",
        st.applied,
        hs.commit,
        st.last_index
    );
    assert!(
        hs.term >= before.term && hs.commit >= before.commit,
        "node {id} went back after {what}: {before:?} -> {hs:?}"
    );
    assert!(c.anomalies.is_empty(), "after {what}: {:?}", c.anomalies);
}

/// Feeds node `id` every malformed message, running its Ready after each.
fn feed(c: &mut Cluster, id: NodeId) -> usize {
    let ms = malformed_for(c, id);
    let n = ms.len();
    for m in ms {
        let what = format!("{m:?}");
        let before = c.node(id).status().hard_state;
        c.step_raw(id, m);
        c.process_ready(id);
        check(c, id, before, &what);
    }
    n
}

/// After the abuse: the network is repaired and the cluster must elect a
/// leader, commit a new entry on every voter, and have broken no rule.
fn recovers(c: &mut Cluster, voters: &[NodeId], label: &str) {
    c.heal();
    c.stabilize();
    let mut leader = None;
    for _ in 0..300 {
        c.tick_all(1);
        c.stabilize();
        if let Some(l) = c.leader() {
            if voters
                .iter()
                .all(|&v| c.node(v).leader() == l && c.node(v).term() == c.node(l).term())
            {
                leader = Some(l);
                break;
            }
        }
    }
    let leader =
        leader.unwrap_or_else(|| panic!("{label}: no stable leader: {:?}", c.raft_state()));
    c.propose(leader, "put after=abuse")
        .unwrap_or_else(|e| panic!("{label}: leader {leader} refuses: {e}"));
    c.stabilize();
    c.tick_all(1);
    c.stabilize();
    for &v in voters {
        assert_eq!(
            c.node(v).machine.kv.get("after").map(String::as_str),
            Some("abuse"),
            "{label}: node {v} did not apply the new entry: {:?}",
            c.raft_state()
        );
    }
    assert!(c.anomalies.is_empty(), "{label}: {:?}", c.anomalies);
    assert!(
        c.invariant_violations().is_empty(),
        "{label}: {:?}",
        c.invariant_violations()
    );
}

/// A settled cluster of voters 1-3 and learner 4, leader 1, with a few
/// committed entries.
fn settled(opts: Options) -> Cluster {
    let mut c = Cluster::new(3, opts);
    c.add_node(4, ConfState::with_voters(vec![1, 2, 3]));
    c.campaign(1);
    c.stabilize();
    c.propose_conf(1, conf(ConfChangeKind::AddLearner, 4))
        .unwrap();
    c.stabilize();
    for i in 0..3 {
        c.propose(1, &format!("put k{i}=v")).unwrap();
    }
    c.stabilize();
    c.tick(1, 1);
    c.stabilize();
    assert_eq!(c.node(4).status().conf_state.learners, vec![4]);
    c
}

#[test]
fn malformed_messages_to_every_role_are_survived() {
    let mut total = 0;
    // Leader, follower and learner of a settled cluster.
    for (id, role) in [(1, Role::Leader), (2, Role::Follower), (4, Role::Follower)] {
        let mut c = settled(Options::default());
        assert_eq!(c.node(id).role(), role);
        total += feed(&mut c, id);
        recovers(&mut c, &[1, 2, 3], &format!("node {id} ({role:?})"));
    }
    // A pre-candidate and a candidate whose election is still open.
    for (pre_vote, role) in [(true, Role::PreCandidate), (false, Role::Candidate)] {
        let mut c = settled(Options {
            pre_vote,
            ..Options::default()
        });
        c.partition(vec![vec![2]]);
        c.campaign(2);
        c.process_ready(2);
        assert_eq!(c.node(2).role(), role);
        total += feed(&mut c, 2);
        recovers(&mut c, &[1, 2, 3], &format!("{role:?}"));
    }
    // A node removed from the configuration, and one that just restarted.
    let mut c = settled(Options::default());
    c.propose_conf(1, conf(ConfChangeKind::RemoveNode, 3))
        .unwrap();
    c.stabilize();
    total += feed(&mut c, 3);
    recovers(&mut c, &[1, 2], "removed node");
    let mut c = settled(Options::default());
    c.restart(2);
    total += feed(&mut c, 2);
    recovers(&mut c, &[1, 2, 3], "restarted follower");
    assert!(total > 250, "only {total} messages fed");
}

/// A heartbeat's commit index is capped by the leader at what the follower
/// is known to hold, so one beyond the follower's log is malformed. It must
/// not make the follower commit entries it holds but the leader may not:
/// here 2's uncommitted tail 3/1, written by a deposed leader, which the
/// new leader replaces with 3/2.
#[test]
fn heartbeat_commit_beyond_the_log_commits_nothing() {
    let mut c = Cluster::new(3, Options::default());
    c.set_log(1, &[1, 1], Some(1), 0, 2);
    c.set_log(2, &[1, 1, 1], Some(1), 0, 2);
    c.set_log(3, &[1, 1], Some(1), 0, 2);
    c.partition(vec![vec![2]]);
    c.campaign(1);
    c.stabilize();
    c.propose(1, "put a=1").unwrap();
    c.stabilize();
    assert_eq!(c.node(1).log_terms().last(), Some(&(4, 2)));
    // Leader 1's heartbeat reaches 2 (whose tail 3/1 it does not share)
    // with a commit index from nowhere.
    let hb = MessageBody::Heartbeat {
        commit: u64::MAX,
        context: Vec::new(),
    };
    c.step_raw(2, msg(1, 2, 2, hb));
    c.process_ready(2);
    assert_eq!(c.node(2).commit(), 2, "3/1 is not known to be committed");
    c.heal();
    c.tick(1, 1);
    c.stabilize();
    assert_eq!(c.node(2).log_terms(), c.node(1).log_terms());
    assert!(c.anomalies.is_empty(), "{:?}", c.anomalies);
}

/// A rejection whose hint is the largest index there is must not overflow
/// when the leader computes where to probe next (a panic in debug builds).
#[test]
fn append_rejection_with_huge_hint_is_harmless() {
    let mut c = settled(Options::default());
    // Put 2 in probe state with one append outstanding.
    c.report_unreachable(1, 2);
    c.propose(1, "put x=1").unwrap();
    c.process_ready(1);
    let next = c.node(1).status().progress[&2].next;
    c.step_raw(1, msg(2, 1, 1, resp(next - 1, true, u64::MAX, 0)));
    let p = c.node(1).status().progress[&2];
    assert!(p.next >= 1 && p.next <= next, "{p:?}");
    c.drop(&Filter::default());
    recovers(&mut c, &[1, 2, 3], "huge hint");
}

/// Random messages, with fields drawn near the interesting values (0, the
/// current term and last index, their neighbours and `u64::MAX`), stepped
/// into one node between random ticks, proposals and Ready/Advance steps,
/// including while a Ready is outstanding. Nothing may panic, and the
/// node's cursors and term must stay in order after every step.
#[test]
fn random_messages_never_break_a_node() {
    // FUZZ_SEEDS=3000 runs a longer campaign (a few seconds in release).
    let seeds: u64 = std::env::var("FUZZ_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut roles_seen = std::collections::BTreeSet::new();
    for seed in 1..=seeds {
        let mut rng = Rng::new(seed);
        let storage = MemStorage::new_with_conf_state(ConfState::with_voters(vec![1, 2, 3]));
        let mut config = Config::new(1);
        config.seed = seed;
        config.pre_vote = seed % 2 == 0;
        config.check_quorum = seed % 3 != 0;
        let mut node = RawNode::new(&config, storage.clone()).unwrap();
        let mut outstanding = None;
        let mut prev = node.status().hard_state;
        for step in 0..3000 {
            let st = node.status();
            let term = st.hard_state.term;
            let last = st.last_index;

            match rng.below(20) {
                0 => node.tick(),
                1 => {
                    let _ = node.propose(b"put r=1".to_vec());
                }
                2 => node.campaign(),
                3 => {
                    let _ = node.read_index(format!("r{step}").into_bytes());
                }
                4 | 5 => {
                    if outstanding.is_none() && node.has_ready() {
                        outstanding = Some(node.ready());
                    } else if let Some(rd) = outstanding.take() {
                        complete_ready(&storage, &mut node, rd);
                    }
                }
                _ => {
                    let from = [2, 3, 2, 3, 1, 0, STRANGER][rng.below(7) as usize];
                    let to = if rng.below(10) == 0 { STRANGER } else { 1 };
                    let mterm = pick(&mut rng, term);
                    let idx = pick(&mut rng, last);
                    let t2 = pick(&mut rng, term);
                    let n = rng.below(4);
                    let entries: Vec<Entry> = (0..n)
                        .map(|i| {
                            ent(
                                pick(&mut rng, idx.saturating_add(i + 1)),
                                pick(&mut rng, term),
                            )
                        })
                        .collect();
                    let body = match rng.below(17) {
                        0 | 1 => append(idx, t2, entries, pick(&mut rng, last)),
                        2 => resp(
                            pick(&mut rng, last),
                            rng.below(2) == 0,
                            pick(&mut rng, last),
                            pick(&mut rng, term),
                        ),
                        3 => MessageBody::Heartbeat {
                            commit: pick(&mut rng, last),
                            context: Vec::new(),
                        },
                        4 => MessageBody::HeartbeatResponse {
                            context: format!("r{}", rng.below(50)).into_bytes(),
                            recovery: rng.below(3),
                        },
                        5 => MessageBody::RequestVote {
                            pre: rng.below(2) == 0,
                            last_index: idx,
                            last_term: t2,
                            transfer: rng.below(4) == 0,
                            campaign: 0,
                        },
                        6 => MessageBody::RequestVoteResponse {
                            pre: rng.below(2) == 0,
                            reject: rng.below(2) == 0,
                            campaign: 0,
                        },
                        7 => snapshot(pick(&mut rng, last), t2, vec![1, 2, 3]),
                        8 => MessageBody::TimeoutNow,
                        9 => MessageBody::Propose { entries },
                        10 => MessageBody::ReadIndexResponse {
                            index: pick(&mut rng, last),
                            context: b"x".to_vec(),
                        },
                        11 => MessageBody::TransferLeader {
                            target: pick(&mut rng, 2),
                        },
                        12 => MessageBody::TermQuery,
                        13 => MessageBody::TermReport {
                            term: pick(&mut rng, term),
                        },
                        14 => MessageBody::Recovering {
                            id: rng.below(3),
                            last_index: idx,
                            last_term: t2,
                        },
                        15 => MessageBody::RecoveryAck {
                            id: rng.below(3),
                            target: pick(&mut rng, last),
                        },
                        _ => MessageBody::RecoveryDone { id: rng.below(3) },
                    };
                    node.step(msg(from, to, mterm, body));
                }
            }
            let st = node.status();
            let hs = st.hard_state;
            assert!(
                st.applied <= hs.commit && hs.commit <= st.last_index,
                "seed {seed} step {step}: applied={} commit={} last={}",
                st.applied,
                hs.commit,
                st.last_index
            );
            assert!(
                hs.term >= prev.term && hs.commit >= prev.commit,
                "seed {seed} step {step}: {prev:?} -> {hs:?}"
            );
            prev = hs;
            roles_seen.insert(format!("{}", st.soft_state.role));
        }
    }
    assert_eq!(
        roles_seen.len(),
        4,
        "the node should have been in every role: {roles_seen:?}"
    );
}

/// A value near `around`: itself, a neighbour, a little above, 0 or the maximum.
fn pick(rng: &mut Rng, around: u64) -> u64 {
    match rng.below(8) {
        0 => 0,
        1 => u64::MAX,
        2 => around.saturating_sub(1),
        3 => around.saturating_add(1),
        4 => around.saturating_add(rng.below(5)),
        _ => around,
    }
}

/// The application's half of a Ready: persist, apply conf changes, advance.
fn complete_ready(storage: &MemStorage, node: &mut RawNode<MemStorage>, rd: raftnode::raft::Ready) {
    if let Err(e) = ready::persist(storage, &rd) {
        panic!("{e}");
    }
    for e in &rd.committed_entries {
        if e.kind == EntryKind::ConfChange {
            if let Ok(cc) = raftnode::raft::ConfChange::decode(&e.data) {
                node.apply_conf_change(&cc);
            }
        }
    }
    node.advance();
    let _ = storage.last_index();
}
