//! A first end-to-end check of the core: three nodes over a perfect network.

use raftnode::raft::{ConfState, Config, MemStorage, Message, RawNode, ReadState, Role};

struct Node {
    raw: RawNode<MemStorage>,
    storage: MemStorage,
    applied: Vec<Vec<u8>>,
    reads: Vec<ReadState>,
}

fn cluster(n: u64) -> Vec<Node> {
    (1..=n)
        .map(|id| {
            let storage =
                MemStorage::new_with_conf_state(ConfState::with_voters((1..=n).collect()));
            let raw = RawNode::new(&Config::new(id), storage.clone()).unwrap();
            Node {
                raw,
                storage,
                applied: Vec::new(),
                reads: Vec::new(),
            }
        })
        .collect()
}

/// Runs Ready/Advance on every node and delivers all messages until quiet.
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
            n.reads.extend(rd.read_states);
            msgs.extend(rd.messages);
            msgs.extend(rd.persisted_messages);
            for e in rd.committed_entries {
                if !e.data.is_empty() {
                    n.applied.push(e.data);
                }
            }
            n.raw.advance();
        }
        if msgs.is_empty() && nodes.iter().all(|n| !n.raw.has_ready()) {
            return;
        }
        for m in msgs {
            let to = m.to as usize - 1;
            nodes[to].raw.step(m);
        }
    }
}

#[test]
fn three_nodes_elect_a_leader_and_replicate() {
    let mut nodes = cluster(3);
    nodes[0].raw.campaign();
    stabilize(&mut nodes);
    assert_eq!(nodes[0].raw.status().soft_state.role, Role::Leader);
    assert_eq!(nodes[1].raw.status().soft_state.leader, 1);
    nodes[0].raw.propose(b"a".to_vec()).unwrap();
    nodes[1].raw.propose(b"b".to_vec()).unwrap(); // forwarded
    stabilize(&mut nodes);
    for n in &nodes {
        assert_eq!(n.applied, vec![b"a".to_vec(), b"b".to_vec()]);
    }
    // ReadIndex through a follower: answered at the commit index.
    nodes[2].raw.read_index(b"r1".to_vec()).unwrap();
    stabilize(&mut nodes);
    let commit = nodes[0].raw.status().hard_state.commit;
    assert_eq!(
        nodes[2].reads,
        vec![ReadState {
            index: commit,
            context: b"r1".to_vec()
        }]
    );
}

#[test]
fn single_node_commits_alone() {
    let mut nodes = cluster(1);
    nodes[0].raw.campaign();
    stabilize(&mut nodes);
    assert_eq!(nodes[0].raw.status().soft_state.role, Role::Leader);
    nodes[0].raw.propose(b"x".to_vec()).unwrap();
    stabilize(&mut nodes);
    assert_eq!(nodes[0].applied, vec![b"x".to_vec()]);
}
