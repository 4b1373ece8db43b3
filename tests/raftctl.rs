//! `raftctl` as a user runs it, against real 3-node clusters on free ports:
//! every subcommand, its output and exit code; an endpoint that is down;
//! and a leader killed while `raftctl incr` and `raftctl put` run in a loop,
//! where every invocation must end with a definite answer and the counter
//! must count each increment exactly once; and TLS with an auth token.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use raftnode_testkit::process::{make_certs, serial, Cluster, TempDir};

const FAST: &[&str] = &["--tick-ms", "20", "--request-timeout-ms", "2000"];

/// The endpoints of nodes `ids`, comma separated.
fn endpoints(c: &Cluster, ids: &[u64]) -> String {
    ids.iter()
        .map(|&id| c.node(id).client_addr.clone())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `raftctl --endpoints <eps> <args>`.
fn raftctl(eps: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raftctl"))
        .args(["--endpoints", eps, "--timeout-ms", "20000"])
        .args(args)
        .output()
        .expect("run raftctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim_end().to_string()
}

/// Runs raftctl and checks its exit code; returns its stdout.
fn expect(eps: &str, args: &[&str], code: i32) -> String {
    let o = raftctl(eps, args);
    assert_eq!(
        o.status.code(),
        Some(code),
        "raftctl {args:?}: stdout {:?} stderr {:?}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

fn three_nodes() -> Cluster {
    let c = Cluster::start(3, FAST);
    assert!(
        c.wait_leader(Duration::from_secs(10)).is_some(),
        "no leader"
    );
    c
}

#[test]
fn every_key_value_subcommand_prints_its_answer_and_exits_with_its_code() {
    let _s = serial();
    let c = three_nodes();
    let all = endpoints(&c, &[1, 2, 3]);
    let eps = all.as_str();
    assert_eq!(expect(eps, &["put", "greeting", "hello world"], 0), "OK");
    assert_eq!(expect(eps, &["get", "greeting"], 0), "hello world");
    assert_eq!(expect(eps, &["get", "absent"], 1), "");
    assert_eq!(
        expect(eps, &["--json", "get", "greeting"], 0),
        r#"{"key":"greeting","found":true,"value":"hello world"}"#
    );
    assert_eq!(expect(eps, &["put", "lock", "free"], 0), "OK");
    assert_eq!(
        expect(eps, &["cas", "lock", "taken", "x"], 1),
        "MISMATCH free"
    );
    assert_eq!(expect(eps, &["cas", "lock", "free", "mine now"], 0), "OK");
    assert_eq!(expect(eps, &["get", "lock"], 0), "mine now");
    assert_eq!(expect(eps, &["cas", "nolock", "a", "b"], 1), "NOT_FOUND");
    for n in 1..=3 {
        assert_eq!(expect(eps, &["incr", "visits"], 0), n.to_string());
    }
    assert_eq!(
        expect(eps, &["--json", "incr", "visits"], 0),
        r#"{"key":"visits","value":4}"#
    );
    assert_eq!(expect(eps, &["append", "log", "a"], 0), "OK");
    assert_eq!(expect(eps, &["append", "log", " b"], 0), "OK");
    assert_eq!(expect(eps, &["get", "log"], 0), "a b");
    assert_eq!(expect(eps, &["del", "log"], 0), "DELETED");
    assert_eq!(expect(eps, &["del", "log"], 1), "NOT_FOUND");
    assert_eq!(
        expect(eps, &["--json", "del", "log"], 1),
        r#"{"key":"log","deleted":false}"#
    );
    // Refused before sending: usage.
    assert_eq!(expect(eps, &["put", "a key", "v"], 2), "");
    assert_eq!(expect(eps, &["put", "k", "two\nlines"], 2), "");
    let json = expect(eps, &["--json", "get", "a b"], 2);
    assert!(json.starts_with(r#"{"error":{"kind":"invalid""#), "{json}");
    // A node answers an error that means nothing was done: refused.
    let json = expect(eps, &["--json", "incr", "greeting"], 5);
    assert!(json.contains(r#""code":"BAD_REQUEST""#), "{json}");
    assert_eq!(expect(eps, &["get", "greeting"], 0), "hello world");
}

#[test]
fn cluster_subcommands_status_members_snapshot_transfer_remove_and_add() {
    let _s = serial();
    let mut c = Cluster::new(4, FAST);
    // Nodes 1-3 bootstrap; node 4 joins later.
    let first: Vec<String> = (1..=3)
        .map(|id| format!("{id}={}", c.node(id).peer_addr))
        .collect();
    for id in 1..=4 {
        let n = c.node_mut(id);
        if id <= 3 {
            n.peers = first.join(",");
            n.spawn();
        } else {
            n.args.push("--join".into());
        }
    }
    let leader = c.expect_leader(Duration::from_secs(10), "leader");
    let all = endpoints(&c, &[1, 2, 3]);
    let eps = all.as_str();

    let table = expect(eps, &["status"], 0);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("ENDPOINT"), "{table}");
    for id in 1..=3u64 {
        let row = lines[id as usize];
        assert!(row.starts_with(&c.node(id).client_addr), "{table}");
        assert!(row.contains(" ms"), "{table}");
        assert!(row.contains("1,2,3"), "{table}");
    }
    assert_eq!(table.matches(" leader ").count(), 1, "{table}");
    let json = expect(eps, &["--json", "status"], 0);
    assert!(json.contains(r#""answered":3,"unanswered":0"#), "{json}");
    assert_eq!(json.matches(r#""role":"leader""#).count(), 1, "{json}");

    let members = expect(eps, &["--json", "members"], 0);
    assert!(members.contains(r#""voters":[1,2,3]"#), "{members}");
    assert!(
        members.contains(&format!(r#""leader":{leader}"#)),
        "{members}"
    );
    assert!(expect(eps, &["members"], 0).starts_with("ID"));

    let index: u64 = expect(eps, &["snapshot"], 0).parse().expect("an index");
    assert!(index > 0);

    let target = if leader == 1 { 2 } else { 1 };
    assert_eq!(
        expect(eps, &["transfer-leader", &target.to_string()], 0),
        "OK"
    );
    assert_eq!(c.wait_leader(Duration::from_secs(5)), Some(target));

    let gone = if target == 3 { 2 } else { 3 };
    assert_eq!(expect(eps, &["remove-node", &gone.to_string()], 0), "OK");
    // Node 4 keeps the --peers of all four that Cluster::new gave it.
    let addr4 = c.node(4).peer_addr.clone();
    c.node_mut(4).spawn();
    assert_eq!(expect(eps, &["add-node", "4", &addr4], 0), "OK");
    let remaining: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&i| i != gone).collect();
    let eps_now = endpoints(&c, &remaining);
    let want = format!(
        r#""voters":[{}]"#,
        remaining
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = expect(&eps_now, &["--json", "members"], 0);
        if m.contains(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members never became {want}: {m}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Unknown node id: refused, nothing done.
    let json = expect(&eps_now, &["--json", "remove-node", "99"], 5);
    assert!(json.contains("BAD_REQUEST"), "{json}");
}

#[test]
fn with_an_endpoint_down_status_says_so_and_commands_go_through_the_others() {
    let _s = serial();
    let mut c = three_nodes();
    let leader = c.expect_leader(Duration::from_secs(5), "leader");
    let down = if leader == 2 { 3 } else { 2 };
    c.node_mut(down).kill();
    // The dead endpoint first: raftctl must move on to the next.
    let order: Vec<u64> = std::iter::once(down)
        .chain((1..=3).filter(|&i| i != down))
        .collect();
    let eps = endpoints(&c, &order);

    let o = raftctl(&eps, &["status"]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    let table = stdout(&o);
    let dead_row = table
        .lines()
        .find(|l| l.starts_with(&c.node(down).client_addr))
        .expect("a row for the dead endpoint");
    assert!(dead_row.contains("no answer"), "{table}");
    assert!(table.contains("1 of 3 endpoints did not answer"), "{table}");
    let json = stdout(&raftctl(&eps, &["--json", "status"]));
    assert!(json.contains(r#""answered":2,"unanswered":1"#), "{json}");
    assert!(json.contains(r#""ok":false"#), "{json}");

    assert_eq!(expect(&eps, &["put", "k", "v"], 0), "OK");
    assert_eq!(expect(&eps, &["get", "k"], 0), "v");
    assert_eq!(expect(&eps, &["incr", "n"], 0), "1");
    assert!(expect(&eps, &["--json", "members"], 0).contains(r#""voters":[1,2,3]"#));

    // Only the dead endpoint: unavailable, nothing changed.
    let only = c.node(down).client_addr.clone();
    let o = Command::new(env!("CARGO_BIN_EXE_raftctl"))
        .args(["--endpoints", &only, "--timeout-ms", "500", "put", "k", "w"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(expect(&eps, &["get", "k"], 0), "v");
}

#[test]
fn a_leader_killed_during_a_loop_of_raftctl_writes_leaves_exact_counters() {
    let _s = serial();
    let mut c = three_nodes();
    let eps = endpoints(&c, &[1, 2, 3]);
    let stop = Arc::new(AtomicBool::new(false));
    // Writers: sequential raftctl invocations, each must end with exit 0.
    let spawn_loop = |what: &'static str| {
        let (eps, stop) = (eps.clone(), stop.clone());
        thread::spawn(move || {
            let mut answers = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                let o = match what {
                    "incr" => raftctl(&eps, &["incr", "counter"]),
                    _ => raftctl(&eps, &["put", &format!("key-{i}"), &format!("value-{i}")]),
                };
                answers.push((o.status.code(), stdout(&o), t.elapsed()));
            }
            answers
        })
    };
    let incrs = spawn_loop("incr");
    let puts = spawn_loop("put");
    let mut kills = 0;
    for _ in 0..2 {
        thread::sleep(Duration::from_millis(1500));
        let leader = c.expect_leader(Duration::from_secs(10), "leader");
        c.node_mut(leader).kill();
        kills += 1;
        thread::sleep(Duration::from_millis(1500));
        c.node_mut(leader).spawn();
    }
    thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let incrs = incrs.join().unwrap();
    let puts = puts.join().unwrap();

    // Every invocation had a definite answer...
    for (code, out, _) in incrs.iter().chain(&puts) {
        assert_eq!(
            *code,
            Some(0),
            "an invocation ended without an answer: {out:?}"
        );
    }
    // Some of them ran through the elections (and were retried there).
    let slow = incrs
        .iter()
        .chain(&puts)
        .filter(|(_, _, t)| *t > Duration::from_millis(100))
        .count();
    let longest = incrs.iter().chain(&puts).map(|a| a.2).max().unwrap();
    assert!(slow > 0, "no invocation overlapped an election");
    // ...each increment counted once: the answers are 1, 2, 3, ... with
    // no number skipped (a duplicate would skip one) or repeated.
    let values: Vec<u64> = incrs.iter().map(|(_, o, _)| o.parse().unwrap()).collect();
    let want: Vec<u64> = (1..=values.len() as u64).collect();
    assert_eq!(values, want);
    assert_eq!(
        expect(&eps, &["get", "counter"], 0),
        values.len().to_string()
    );
    // ...and every acknowledged put is there.
    for i in 1..=puts.len() {
        assert_eq!(
            expect(&eps, &["get", &format!("key-{i}")], 0),
            format!("value-{i}")
        );
    }
    println!(
        "leader killed {kills} times during {} raftctl incr and {} raftctl put, all answered, \
         counter exact; {slow} took over 100 ms, the longest {longest:?}",
        incrs.len(),
        puts.len()
    );
    assert!(
        incrs.len() >= 20 && puts.len() >= 20,
        "the loops hardly ran"
    );
}

#[test]
fn tls_and_an_auth_token_end_to_end() {
    let _s = serial();
    let dir = TempDir::new("raftctl-tls");
    let certs = make_certs(&dir.0, 1);
    let token = dir.0.join("token");
    std::fs::write(&token, "s3cret-t0ken-0f-16-bytes\n").unwrap();
    let wrong = dir.0.join("wrong");
    std::fs::write(&wrong, "guess\n").unwrap();
    let f = |n: &str| certs.join(n).display().to_string();
    let (cert, key, ca) = (f("node-1.pem"), f("node-1.key"), f("ca.pem"));
    let token = token.display().to_string();
    let wrong = wrong.display().to_string();
    let c = Cluster::start(
        1,
        &[
            "--tick-ms",
            "20",
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--auth-token-file",
            &token,
        ],
    );
    let eps = c.node(1).client_addr.clone();
    let secure = ["--cacert", ca.as_str(), "--token-file", token.as_str()];
    let with = |extra: &[&str]| -> Vec<String> {
        secure.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        raftctl(&eps, &args)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while run(with(&["status"])).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the TLS node never answered");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(run(with(&["put", "k", "over tls"])).status.code(), Some(0));
    let o = run(with(&["get", "k"]));
    assert_eq!(stdout(&o), "over tls");
    // No token, or a wrong one: the node refuses, nothing was done.
    let o = run(vec![
        "--cacert".into(),
        ca.clone(),
        "put".into(),
        "k".into(),
        "x".into(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(vec![
        "--cacert".into(),
        ca.clone(),
        "--token-file".into(),
        wrong.clone(),
        "put".into(),
        "k".into(),
        "x".into(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Plain TCP to the TLS port, or a certificate that does not name the
    // expected server: no answer.
    let o = run(vec![
        "--token-file".into(),
        token.clone(),
        "--timeout-ms".into(),
        "800".into(),
        "get".into(),
        "k".into(),
    ]);
    assert_eq!(o.status.code(), Some(3));
    let o = run(with(&[
        "--tls-server-name",
        "node-9",
        "--timeout-ms",
        "800",
        "get",
        "k",
    ]));
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(stdout(&run(with(&["get", "k"]))), "over tls");
}
