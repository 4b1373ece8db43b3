//! A node hears no stranger, with or without a leader, in plain mode too.
//!
//! The outside probe found that a node that knew no leader (just restarted,
//! or past its election timeout, or giving up its lease for a leadership
//! transfer) listened to a non-member that presented the cluster ID: it
//! followed the stranger at a higher term and applied its forged append,
//! and one heartbeat at a term near 2^63 stopped the cluster for good.
//! Each test here replays one of those attacks against a 3-node cluster,
//! without TLS and with peer TLS (where the stranger holds a certificate
//! for its own id from the cluster's CA), and ends with data, membership,
//! term and leader as they should be and a write that succeeds:
//!
//! - `restart_window`: a follower is killed and restarted while node 99
//!   sprays it with heartbeats at a higher term and an append that writes
//!   `base0 = EVIL`;
//! - `election_timeout`: the leader is paused past the followers' election
//!   timeout while node 99 sprays both followers;
//! - `transfer`: leadership is handed back and forth while node 99 sprays
//!   every node with vote requests marked as transfers and heartbeats;
//! - `term_jump`: in plain mode anyone can pose as a member (only TLS
//!   stops that), but even a message in a member's name cannot move a
//!   node's term by more than 2^16 at once, nor to the top of the space.
//!
//! The core's rule is in `src/raft/strangers.rs`; the scenario scripts
//! `tests/scenarios/defence_*` show each case step by step.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use raftnode::kv::{encode_command, Command, RequestId};
use raftnode::raft::{Entry, EntryKind, Message, MessageBody, NodeId};
use raftnode::transport::codec::Verdict;
use raftnode_testkit::process::attack::{Certs, RawPeer, Wire};
use raftnode_testkit::process::baseline::{self, status_of, Baseline};
use raftnode_testkit::process::{serial, Cluster, TempDir};

/// Election timeout 2-4 s: a loaded 2-core machine must not cause an
/// election that the checks would blame on an attack.
const ARGS: &[&str] = &["--tick-ms", "50", "--election-ticks", "40"];
const STRANGER: NodeId = 99;
const LONG: Duration = Duration::from_secs(20);

// ---- the attacker -----------------------------------------------------------

/// A thread that keeps dialling one node as `from` and sending it the same
/// messages every few milliseconds, redialling whenever the node is down or
/// drops the connection, until stopped.
struct Spray {
    stop: Arc<AtomicBool>,
    welcomed: Arc<AtomicU64>,
    handle: JoinHandle<u64>,
}

impl Spray {
    /// Sprays every 10 ms.
    fn start(
        addr: String,
        wire: Wire,
        from: NodeId,
        to: NodeId,
        cluster_id: u64,
        msgs: Vec<Message>,
    ) -> Spray {
        let pause = Duration::from_millis(10);
        Spray::every(pause, addr, wire, from, to, cluster_id, msgs)
    }

    /// Sprays every `pause`.
    fn every(
        pause: Duration,
        addr: String,
        wire: Wire,
        from: NodeId,
        to: NodeId,
        cluster_id: u64,
        msgs: Vec<Message>,
    ) -> Spray {
        let stop = Arc::new(AtomicBool::new(false));
        let welcomed = Arc::new(AtomicU64::new(0));
        let (stop2, welcomed2) = (stop.clone(), welcomed.clone());
        let handle = thread::spawn(move || {
            let mut sent = 0u64;
            let mut peer: Option<RawPeer> = None;
            while !stop2.load(Ordering::Relaxed) {
                if peer.is_none() {
                    match RawPeer::dial(&addr, &wire, from, to, cluster_id) {
                        Ok((p, Verdict::Welcome)) => {
                            welcomed2.fetch_add(1, Ordering::Relaxed);
                            peer = Some(p);
                        }
                        _ => {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    }
                }
                let ok = peer
                    .as_mut()
                    .is_some_and(|p| msgs.iter().all(|m| p.send(m).is_ok()));
                if ok {
                    sent += msgs.len() as u64;
                } else {
                    peer = None;
                }
                thread::sleep(pause);
            }
            sent
        });
        Spray {
            stop,
            welcomed,
            handle,
        }
    }

    /// Stops the thread; returns how many messages it sent and on how many
    /// welcomed connections.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.handle.join().unwrap_or(0);
        (sent, self.welcomed.load(Ordering::Relaxed))
    }
}

fn put(key: &str, value: &str) -> Vec<u8> {
    encode_command(
        RequestId {
            node: STRANGER,
            seq: 1,
        },
        &Command::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        },
    )
}

/// What a leader of `term` would send `to` to take it over: a heartbeat,
/// and an append right after the node's last entry (`last` of term
/// `last_term`) that writes `base0 = EVIL` and commits it.
fn takeover(from: NodeId, to: NodeId, term: u64, last: u64, last_term: u64) -> Vec<Message> {
    let entry = Entry {
        index: last + 1,
        term,
        kind: EntryKind::Normal,
        data: put("base0", "EVIL"),
    };
    vec![
        Message {
            from,
            to,
            term,
            body: MessageBody::Heartbeat {
                commit: last,
                context: Vec::new(),
            },
        },
        Message {
            from,
            to,
            term,
            body: MessageBody::Append {
                prev_index: last,
                prev_term: last_term,
                entries: vec![entry],
                commit: last + 1,
            },
        },
    ]
}

/// The stranger's wire: plain TCP, or TLS with a CA-signed certificate for
/// `node-99` (the strongest stranger: one the cluster's CA vouches for as
/// a node, but that no member added).
fn stranger_wire(certs: Option<&Certs>) -> Wire {
    match certs {
        None => Wire::Plain,
        Some(certs) => {
            certs.issue_node(STRANGER);
            Wire::tls_as(certs, certs, STRANGER)
        }
    }
}

/// After an attack during which leadership may legitimately have moved:
/// every node agrees on one leader that is a member and on its term, which
/// moved by at most a few elections; the base keys are intact everywhere;
/// and a fresh write commits and is read back from every node.
fn check_unharmed(c: &Cluster, b: &Baseline, what: &str) {
    let leader = c.expect_leader(LONG, what);
    assert!((1..=3).contains(&leader), "{what}: leader {leader}");
    let deadline = Instant::now() + LONG;
    let term = loop {
        let seen: Vec<(u64, u64, String)> = (1..=3)
            .map(|id| {
                let s = status_of(c, id);
                let members = s.fields.get("members").cloned().unwrap_or_default();
                (s.num("term"), s.num("leader"), members)
            })
            .collect();
        if seen.iter().all(|s| *s == seen[0]) {
            assert_eq!(seen[0].2, b.members, "{what}: membership changed");
            assert!(
                (1..=3).contains(&seen[0].1),
                "{what}: nodes follow {}",
                seen[0].1
            );
            break seen[0].0;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: nodes disagree: {seen:?}\n{}",
            c.logs()
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        term <= b.term + 8,
        "{what}: term went from {} to {term}\n{}",
        b.term,
        c.logs()
    );
    let leader = c.expect_leader(LONG, what);
    let mut cl = c.node(leader).client().expect("client");
    let probe = format!("PUT probe after {what}");
    assert_eq!(cl.request(&probe).expect("write"), "OK", "{what}");
    for id in 1..=3 {
        let mut cl = c.node(id).client().expect("client");
        for (k, v) in &b.keys {
            let r = cl.request(&format!("GET {k}")).expect("read");
            assert_eq!(r, format!("VALUE {v}"), "GET {k} on node {id} after {what}");
        }
        let r = cl.request("GET probe").expect("read");
        assert_eq!(r, format!("VALUE after {what}"), "node {id} after {what}");
    }
    println!(
        "  {what}: unharmed (leader {leader}, term {} -> {term})",
        b.term
    );
}

/// The leader's last index and its term, from its STATUS.
fn last_entry(c: &Cluster, b: &Baseline) -> (u64, u64) {
    let s = status_of(c, b.leader);
    (s.num("last"), s.num("term"))
}

// ---- the attacks ------------------------------------------------------------

fn restart_window(certs: Option<&Certs>) {
    let (mut c, cluster_id) = baseline::start(ARGS, certs);
    let mut b = Baseline::take(&c);
    let wire = stranger_wire(certs);
    let f = b.followers()[0];
    let (last, last_term) = last_entry(&c, &b);
    c.node_mut(f).kill();
    let msgs = takeover(STRANGER, f, b.term + 1, last, last_term);
    let spray = Spray::start(
        c.node(f).peer_addr.clone(),
        wire,
        STRANGER,
        f,
        cluster_id,
        msgs,
    );
    c.node_mut(f).spawn();
    thread::sleep(Duration::from_secs(3));
    let (sent, welcomed) = spray.stop();
    println!("  restart window: {sent} messages from node {STRANGER} on {welcomed} connections");
    assert!(
        sent > 0,
        "the stranger never got in: the attack proves nothing"
    );
    let watch = b.watch(&c);
    b.check(&c, "a stranger sprayed a restarting follower", watch);
}

fn election_timeout(certs: Option<&Certs>) {
    let (mut c, cluster_id) = baseline::start(ARGS, certs);
    let b = Baseline::take(&c);
    let wire = stranger_wire(certs);
    let (last, last_term) = last_entry(&c, &b);
    let sprays: Vec<Spray> = b
        .followers()
        .into_iter()
        .map(|f| {
            let msgs = takeover(STRANGER, f, b.term + 1, last, last_term);
            let addr = c.node(f).peer_addr.clone();
            Spray::start(addr, wire.clone(), STRANGER, f, cluster_id, msgs)
        })
        .collect();
    // Past the longest election timeout (4 s): the followers' leases end.
    c.node_mut(b.leader).pause();
    thread::sleep(Duration::from_secs(5));
    c.node_mut(b.leader).resume();
    let sent: u64 = sprays.into_iter().map(|s| s.stop().0).sum();
    println!("  election timeout: {sent} messages from node {STRANGER}");
    assert!(
        sent > 0,
        "the stranger never got in: the attack proves nothing"
    );
    check_unharmed(
        &c,
        &b,
        "a stranger sprayed followers past their election timeout",
    );
}

fn transfer(certs: Option<&Certs>) {
    let (c, cluster_id) = baseline::start(ARGS, certs);
    let b = Baseline::take(&c);
    let wire = stranger_wire(certs);
    let (last, _) = last_entry(&c, &b);
    let sprays: Vec<Spray> = (1..=3)
        .map(|to| {
            let mut msgs = Vec::new();
            for term in b.term + 1..=b.term + 3 {
                msgs.push(Message {
                    from: STRANGER,
                    to,
                    term,
                    body: MessageBody::RequestVote {
                        pre: false,
                        last_index: last + 1000,
                        last_term: term,
                        transfer: true,
                        campaign: 0,
                    },
                });
                msgs.extend(takeover(STRANGER, to, term, last, b.term));
            }
            let addr = c.node(to).peer_addr.clone();
            // A follower knows no leader only between granting the
            // transfer's vote and hearing the new leader: spray densely.
            let pause = Duration::from_millis(1);
            Spray::every(pause, addr, wire.clone(), STRANGER, to, cluster_id, msgs)
        })
        .collect();
    let mut leader = b.leader;
    for round in 0..8 {
        let target = (1..=3).find(|&id| id != leader).unwrap_or(1);
        let mut cl = c.node(leader).client().expect("client");
        let r = cl
            .request(&format!("TRANSFER_LEADER {target}"))
            .expect("transfer");
        println!("  transfer round {round}: {leader} -> {target}: {r}");
        thread::sleep(Duration::from_millis(500));
        leader = c.expect_leader(LONG, "a leader after the transfer");
        assert!((1..=3).contains(&leader), "round {round}: leader {leader}");
    }
    let sent: u64 = sprays.into_iter().map(|s| s.stop().0).sum();
    println!("  transfer: {sent} messages from node {STRANGER}");
    assert!(
        sent > 0,
        "the stranger never got in: the attack proves nothing"
    );
    check_unharmed(
        &c,
        &b,
        "a stranger sprayed votes during leadership transfers",
    );
}

/// Plain mode only: posing as a member needs no more than its id there.
fn term_jump() {
    let (c, cluster_id) = baseline::start(ARGS, None);
    let mut b = Baseline::take(&c);
    let [f, other] = b.followers()[..] else {
        panic!("two followers");
    };
    let watch = b.watch(&c);
    for term in [
        b.term + (1 << 20),
        b.term + (1 << 40),
        (1 << 63) - 1,
        u64::MAX,
    ] {
        let hb = Message {
            from: other,
            to: f,
            term,
            body: MessageBody::Heartbeat {
                commit: 0,
                context: Vec::new(),
            },
        };
        let (mut p, v) = RawPeer::dial(&c.node(f).peer_addr, &Wire::Plain, other, f, cluster_id)
            .expect("posing as a member");
        assert_eq!(v, Verdict::Welcome, "plain mode lets a member's id in");
        p.send(&hb).expect("send");
    }
    thread::sleep(Duration::from_secs(1));
    b.check(
        &c,
        "a member's id sent heartbeats at terms far ahead",
        watch,
    );
}

// ---- the tests --------------------------------------------------------------

#[test]
fn plain_stranger_unheard_in_a_restart_window() {
    let _g = serial();
    restart_window(None);
}

#[test]
fn plain_stranger_unheard_past_the_election_timeout() {
    let _g = serial();
    election_timeout(None);
}

#[test]
fn plain_stranger_unheard_during_leadership_transfers() {
    let _g = serial();
    transfer(None);
}

#[test]
fn plain_one_message_cannot_jump_the_term() {
    let _g = serial();
    term_jump();
}

fn with_certs(f: impl FnOnce(&Certs)) {
    let dir = TempDir::new("certs");
    if let Some(certs) = Certs::make(&dir.0, 3) {
        f(&certs);
    }
}

#[test]
fn tls_stranger_unheard_in_a_restart_window() {
    let _g = serial();
    with_certs(|certs| restart_window(Some(certs)));
}

#[test]
fn tls_stranger_unheard_past_the_election_timeout() {
    let _g = serial();
    with_certs(|certs| election_timeout(Some(certs)));
}

#[test]
fn tls_stranger_unheard_during_leadership_transfers() {
    let _g = serial();
    with_certs(|certs| transfer(Some(certs)));
}
