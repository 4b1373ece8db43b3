//! Regression tests for core bugs the cluster simulation (`tests/sim`) found,
//! each reduced to a few deterministic steps over a perfect network.

use raftnode::raft::{
    ConfChange, ConfChangeKind, ConfState, Config, EntryKind, HardState, MemStorage, Message,
    MessageBody, RawNode, Role, Storage,
};

struct Node {
    raw: RawNode<MemStorage>,
    storage: MemStorage,
}

fn node(id: u64, storage: MemStorage) -> Node {
    let raw = RawNode::new(&Config::new(id), storage.clone()).unwrap();
    Node { raw, storage }
}

fn founders(n: u64) -> Vec<Node> {
    let cs = ConfState::with_voters((1..=n).collect());
    (1..=n)
        .map(|id| node(id, MemStorage::new_with_conf_state(cs.clone())))
        .collect()
}

/// Runs the Ready loop on every node and delivers every message (and
/// reports snapshots delivered) until the cluster is quiet.
fn stabilize(nodes: &mut [Node]) {
    loop {
        let mut msgs: Vec<Message> = Vec::new();
        for n in nodes.iter_mut() {
            if !n.raw.has_ready() {
                continue;
            }
            let rd = n.raw.ready();
            if let Some(s) = &rd.snapshot {
                n.storage.apply_snapshot(s.clone()).unwrap();
            }
            n.storage.append(&rd.entries).unwrap();
            if let Some(hs) = rd.hard_state {
                n.storage.set_hard_state(hs);
            }
            msgs.extend(rd.messages);
            msgs.extend(rd.persisted_messages);
            for e in rd.committed_entries {
                if e.kind == EntryKind::ConfChange {
                    let cc = ConfChange::decode(&e.data).unwrap();
                    n.raw.apply_conf_change(&cc);
                }
            }
            n.raw.advance();
        }
        if msgs.is_empty() && nodes.iter().all(|n| !n.raw.has_ready()) {
            return;
        }
        for m in msgs {
            let (from, to) = (m.from, m.to);
            let is_snapshot = m.body.name() == "snapshot";
            let Some(i) = nodes.iter().position(|n| n.raw.id() == to) else {
                continue;
            };
            nodes[i].raw.step(m);
            if is_snapshot {
                let j = nodes.iter().position(|n| n.raw.id() == from).unwrap();
                nodes[j].raw.report_snapshot(to, true);
            }
        }
    }
}

/// Ticks every node and stabilizes, `ticks` times.
fn run_ticks(nodes: &mut [Node], ticks: usize) {
    for _ in 0..ticks {
        for n in nodes.iter_mut() {
            n.raw.tick();
        }
        stabilize(nodes);
    }
}

/// Found by the simulation (seed 38): a member added to a cluster bootstrapped
/// with `new_with_conf_state` that had not compacted its log received the log
/// from index 1, which does not hold the bootstrap membership. Applying its
/// own AddNode it concluded it was the only voter, elected itself alone and
/// committed entries of its own: two leaders in one term, diverging logs.
/// A member added to such a cluster starts from the founding membership, as
/// `MemStorage::new_with_conf_state` documents; then replaying the log gives
/// it the right membership.
#[test]
fn new_member_learns_the_bootstrap_membership_before_the_log() {
    let mut nodes = founders(3);
    nodes[0].raw.campaign();
    stabilize(&mut nodes);
    assert_eq!(nodes[0].raw.status().soft_state.role, Role::Leader);
    nodes[0].raw.propose(b"a".to_vec()).unwrap();
    stabilize(&mut nodes);

    let founding = ConfState::with_voters(vec![1, 2, 3]);
    nodes.push(node(4, MemStorage::new_with_conf_state(founding)));
    let add = ConfChange {
        kind: ConfChangeKind::AddNode,
        node_id: 4,
        context: vec![],
    };
    nodes[0].raw.propose_conf_change(&add).unwrap();
    stabilize(&mut nodes);
    run_ticks(&mut nodes, 3);

    let st = nodes[3].raw.status();
    assert_eq!(st.conf_state.voters, vec![1, 2, 3, 4]);
    assert_eq!(st.soft_state.leader, 1);
    assert_eq!(
        st.hard_state.commit,
        nodes[0].raw.status().hard_state.commit
    );
    // The membership survives a restart of the new member.
    assert_eq!(nodes[3].storage.initial_state().1.voters, vec![1, 2, 3]);

    // Cut off from the others, the new member cannot win an election alone.
    let mut alone = vec![nodes.pop().unwrap()];
    run_ticks(&mut alone, 50);
    assert_ne!(alone[0].raw.status().soft_state.role, Role::Leader);
}

/// Found by the simulation (seed 94000, PreVote and CheckQuorum off): voter 1
/// had fallen far behind, still believed the membership was 1,2,3 and had
/// run its term up campaigning among 1,2,3 (2 and 3 had been removed). The
/// leader, 8, was unknown to it, so its vote requests never reached 8, and
/// it silently dropped 8's heartbeats of the lower term: it could never
/// rejoin. A node now answers a stale append or heartbeat from a sender it
/// does not know as a voter, so the leader learns the higher term.
#[test]
fn stale_heartbeat_from_an_unknown_leader_is_answered_with_our_term() {
    let storage = MemStorage::new_with_conf_state(ConfState::with_voters(vec![1, 2, 3]));
    storage.set_hard_state(HardState {
        term: 9,
        vote: 1,
        commit: 0,
    });
    let mut config = Config::new(1);
    config.pre_vote = false;
    config.check_quorum = false;
    let mut raw = RawNode::new(&config, storage).unwrap();
    let heartbeat = |from| Message {
        from,
        to: 1,
        term: 4,
        body: MessageBody::Heartbeat {
            commit: 0,
            context: vec![],
        },
    };
    // From a voter it knows, a stale heartbeat is ignored as in etcd: its own
    // vote requests will carry its term to that node.
    raw.step(heartbeat(2));
    assert!(!raw.has_ready());
    // From a leader it does not know, it answers with its term.
    raw.step(heartbeat(8));
    let rd = raw.ready();
    let answers: Vec<&Message> = rd.messages.iter().chain(&rd.persisted_messages).collect();
    assert_eq!(answers.len(), 1);
    assert_eq!((answers[0].to, answers[0].term), (8, 9));
    assert_eq!(answers[0].body.name(), "append_response");
}
