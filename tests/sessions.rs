//! Client sessions on real `raftnode` processes (`docs/PROTOCOL.md` §3): a
//! retried write is answered from the session table on any node, after a
//! leader kill, a snapshot and a restart of every node; sessions expire in
//! log time; the connection rules hold.

use std::process::Command;
use std::time::{Duration, Instant};

use raftnode_testkit::process::{binary, serial, Client, Cluster};

const FAST: &[&str] = &["--tick-ms", "20"];

/// Sends `line` to node `id` until the reply is not an error that leaves
/// the outcome open (`TIMEOUT`, `NO_LEADER`, `LEADER_CHANGED`,
/// `UNAVAILABLE`, a dropped connection), first resuming `session` on the
/// connection if given. This is how a session client retries.
fn until_definite(c: &Cluster, id: u64, session: Option<&str>, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(mut cl) = c.node(id).client() {
            cl.set_timeout(Duration::from_secs(3));
            let resumed = match session {
                None => true,
                Some(s) => cl
                    .request(&format!("SESSION {s}"))
                    .is_ok_and(|r| r == format!("SESSION {s}")),
            };
            if resumed {
                if let Ok(r) = cl.request(line) {
                    let open = ["TIMEOUT", "NO_LEADER", "LEADER_CHANGED", "UNAVAILABLE"]
                        .iter()
                        .any(|code| r.starts_with(&format!("ERR {code}")));
                    if !open {
                        return r;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no definite answer to {line:?} on node {id}\n{}", c.logs());
}

/// Opens a session; returns its id, `<index>-<32 hex digits>`.
fn open_session(cl: &mut Client) -> String {
    let r = cl.request("SESSION").unwrap();
    let id = r
        .strip_prefix("SESSION ")
        .unwrap_or_else(|| panic!("SESSION answered {r:?}"));
    let (index, secret) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("session id {id:?}"));
    assert!(index.parse::<u64>().is_ok_and(|i| i >= 1), "{id}");
    assert!(
        secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    id.to_string()
}

#[test]
fn a_retry_gets_the_original_reply_on_any_node_after_a_leader_kill_a_snapshot_and_a_full_restart() {
    let _g = serial();
    let mut c = Cluster::start(3, FAST);
    let leader = c.expect_leader(Duration::from_secs(10), "a leader");
    let follower = if leader == 1 { 2 } else { 1 };
    let mut cl = c.node(follower).client().unwrap();
    let s = open_session(&mut cl);
    assert_eq!(cl.request("#1 INCR c").unwrap(), "VALUE 1");
    assert_eq!(cl.request("#2 APPEND log a").unwrap(), "OK");
    // The same numbers again, on every node: the original replies.
    for id in 1..=3 {
        assert_eq!(until_definite(&c, id, Some(&s), "#1 INCR c"), "VALUE 1");
        assert_eq!(until_definite(&c, id, Some(&s), "#2 APPEND log a"), "OK");
    }
    assert_eq!(until_definite(&c, leader, None, "GET c"), "VALUE 1");
    assert_eq!(until_definite(&c, leader, None, "GET log"), "VALUE a");

    // After the leader dies, on the new leader and the others.
    c.node_mut(leader).kill();
    for id in (1..=3).filter(|&i| i != leader) {
        assert_eq!(until_definite(&c, id, Some(&s), "#1 INCR c"), "VALUE 1");
    }
    c.node_mut(leader).spawn();
    assert_eq!(until_definite(&c, leader, Some(&s), "#3 INCR c"), "VALUE 2");

    // After a snapshot on every node (the table is in it) and a restart of
    // all of them, which loads the table from the snapshot.
    for id in 1..=3 {
        let r = until_definite(&c, id, None, "SNAPSHOT");
        assert!(r.starts_with("OK "), "SNAPSHOT on {id}: {r}");
    }
    for id in 1..=3 {
        c.node_mut(id).kill();
    }
    for id in 1..=3 {
        c.node_mut(id).spawn();
    }
    c.expect_leader(Duration::from_secs(10), "a leader after the restart");
    for id in 1..=3 {
        assert_eq!(until_definite(&c, id, Some(&s), "#1 INCR c"), "VALUE 1");
        assert_eq!(until_definite(&c, id, Some(&s), "#3 INCR c"), "VALUE 2");
    }
    assert_eq!(until_definite(&c, 1, Some(&s), "#4 INCR c"), "VALUE 3");
    assert_eq!(until_definite(&c, 2, None, "GET c"), "VALUE 3");
    assert_eq!(until_definite(&c, 3, None, "GET log"), "VALUE a");
}

#[test]
fn connection_rules_pipelining_and_unknown_sessions() {
    let _g = serial();
    let c = Cluster::start(1, FAST);
    c.expect_leader(Duration::from_secs(10), "a leader");
    let mut cl = c.node(1).client().unwrap();
    // A tag without a session; a tag on a read.
    let r = cl.request("#1 INCR x").unwrap();
    assert!(r.starts_with("ERR BAD_REQUEST"), "{r}");
    // SESSION and tagged writes sent at once: the writes wait for the id.
    cl.send_raw(b"SESSION\n#1 INCR x\n#1 INCR x\n#2 GET x\nINCR x\n#2 INCR x\n")
        .unwrap();
    let replies: Vec<String> = (0..6).map(|_| cl.read_line().unwrap()).collect();
    assert!(replies[0].starts_with("SESSION "), "{replies:?}");
    assert_eq!(replies[1..3], ["VALUE 1", "VALUE 1"], "{replies:?}");
    assert!(replies[3].starts_with("ERR BAD_REQUEST"), "{replies:?}");
    assert_eq!(replies[4..], ["VALUE 2", "VALUE 3"], "{replies:?}");
    // An unknown session, as a resume and for a tagged write after it.
    let r = cl
        .request("SESSION 999999-000102030405060708090a0b0c0d0e0f")
        .unwrap();
    assert!(r.starts_with("ERR SESSION_EXPIRED "), "{r}");
    let r = cl.request("#3 INCR x").unwrap();
    assert!(r.starts_with("ERR SESSION_EXPIRED "), "{r}");
    assert_eq!(
        cl.request("GET x").unwrap(),
        "VALUE 3",
        "nothing was applied"
    );
    // INCR and APPEND errors change nothing.
    assert_eq!(cl.request("PUT t text").unwrap(), "OK");
    let r = cl.request("INCR t").unwrap();
    assert!(r.starts_with("ERR BAD_REQUEST"), "{r}");
    assert_eq!(cl.request("GET t").unwrap(), "VALUE text");
}

#[test]
fn an_idle_session_expires_in_log_time_and_a_used_one_does_not() {
    let _g = serial();
    let c = Cluster::start(1, &["--tick-ms", "20", "--session-ttl-ms", "1500"]);
    c.expect_leader(Duration::from_secs(10), "a leader");
    let mut idle = c.node(1).client().unwrap();
    let mut busy = c.node(1).client().unwrap();
    open_session(&mut idle);
    open_session(&mut busy);
    let start = Instant::now();
    let mut seq = 0;
    while start.elapsed() < Duration::from_millis(4000) {
        seq += 1;
        let r = busy.request(&format!("#{seq} INCR busy")).unwrap();
        assert_eq!(r, format!("VALUE {seq}"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = idle.request("#1 INCR idle").unwrap();
    assert!(r.starts_with("ERR SESSION_EXPIRED "), "{r}");
    assert_eq!(idle.request("GET idle").unwrap(), "NOT_FOUND");
}

#[test]
fn help_explains_the_session_flags() {
    let out = Command::new(binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--session-ttl-ms", "--max-sessions"] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let out = Command::new(binary())
        .args(["--session-ttl-ms", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a TTL under 1000 ms must be refused");
}
