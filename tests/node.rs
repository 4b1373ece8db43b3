//! The node as a program: real `raftnode` processes on loopback, driven
//! through the client protocol of `docs/PROTOCOL.md`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use raftnode_testkit::process::{binary, free_port, serial, Client, Cluster, TempDir};

const FAST: &[&str] = &["--tick-ms", "20"];

#[test]
fn three_nodes_serve_1000_puts_spread_over_all_nodes_and_every_node_reads_them_back() {
    let _g = serial();
    let c = Cluster::start(3, FAST);
    c.expect_leader(Duration::from_secs(10), "a leader");
    let mut clients: Vec<Client> = (1..=3).map(|id| c.node(id).client().unwrap()).collect();
    for i in 0..1000 {
        let r = clients[i % 3]
            .request(&format!("PUT key-{i} value {i}"))
            .unwrap();
        assert_eq!(r, "OK", "PUT key-{i} via node {}\n{}", i % 3 + 1, c.logs());
    }
    for (n, cl) in clients.iter_mut().enumerate() {
        for i in 0..1000 {
            let r = cl.request(&format!("GET key-{i}")).unwrap();
            assert_eq!(
                r,
                format!("VALUE value {i}"),
                "GET key-{i} on node {}",
                n + 1
            );
        }
    }
}

#[test]
fn killing_the_leader_elects_a_new_one_that_serves_writes_within_2s_and_the_old_one_catches_up() {
    let _g = serial();
    let mut c = Cluster::start(3, FAST);
    let old = c.expect_leader(Duration::from_secs(10), "a leader");
    let mut cl = c.node(old).client().unwrap();
    for i in 0..50 {
        assert_eq!(cl.request(&format!("PUT before-{i} x")).unwrap(), "OK");
    }
    c.node_mut(old).kill();
    let killed_at = Instant::now();
    let other = if old == 1 { 2 } else { 1 };
    let seen = std::cell::RefCell::new(Vec::new());
    let r = c.request_until(
        other,
        "PUT after-failover yes",
        |r| {
            seen.borrow_mut()
                .push(format!("{:?} {r}", killed_at.elapsed()));
            r == "OK"
        },
        Duration::from_secs(5),
    );
    let failover = killed_at.elapsed();
    assert_eq!(
        r.as_deref(),
        Some("OK"),
        "no write served after the leader died\n{}",
        c.logs()
    );
    println!("failover: first write acknowledged {failover:?} after kill -9 of leader {old}");
    assert!(
        failover < Duration::from_secs(2),
        "failover took {failover:?}; replies on the way: {:?}\n{}",
        seen.borrow(),
        c.logs()
    );

    c.node_mut(old).spawn();
    let applied = c.wait_converged(52, Duration::from_secs(10));
    assert!(
        applied.is_some(),
        "old leader did not catch up\n{}",
        c.logs()
    );
    let mut back = c.node(old).client().unwrap();
    assert_eq!(back.request("GET after-failover").unwrap(), "VALUE yes");
    for i in 0..50 {
        assert_eq!(back.request(&format!("GET before-{i}")).unwrap(), "VALUE x");
    }
}

#[test]
fn kill_9_of_all_nodes_mid_stream_loses_no_acknowledged_write() {
    let _g = serial();
    let mut c = Cluster::start(3, FAST);
    c.expect_leader(Duration::from_secs(10), "a leader");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6u64 {
        let addr = c.node(w % 3 + 1).client_addr.clone();
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(thread::spawn(move || {
            let Ok(mut cl) = Client::connect(&addr) else {
                return;
            };
            cl.set_timeout(Duration::from_secs(2));
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let key = format!("w{w}-{i}");
                match cl.request(&format!("PUT {key} v-{key}")) {
                    Ok(r) if r == "OK" => acked.lock().unwrap().push(key),
                    Ok(_) => {}
                    Err(_) => return, // node died: outcome unknown
                }
            }
        }));
    }
    thread::sleep(Duration::from_millis(800));
    for id in 1..=3 {
        c.node_mut(id).kill();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too few writes before the crash: {}",
        acked.len()
    );
    for id in 1..=3 {
        c.node_mut(id).spawn();
    }
    c.expect_leader(Duration::from_secs(10), "a leader after restart");
    let mut cl = c.node(1).client().unwrap();
    for key in &acked {
        let r = cl.request(&format!("GET {key}")).unwrap();
        assert_eq!(
            r,
            format!("VALUE v-{key}"),
            "acknowledged write {key} lost\n{}",
            c.logs()
        );
    }
    println!(
        "{} acknowledged writes survived kill -9 of all three nodes",
        acked.len()
    );
}

#[test]
fn bad_client_input_gets_bad_request_and_the_connection_stays_usable() {
    let _g = serial();
    let c = Cluster::start(1, FAST);
    c.expect_leader(Duration::from_secs(10), "a leader");
    let mut cl = c.node(1).client().unwrap();
    let cases: &[&[u8]] = &[
        b"\x01\x02garbage\xff\n",
        b"FROBNICATE x\n",
        b"GET\n",
        b"PUT onlykey\n",
        b"CAS k v\n",
        b"GET k\x00ey\n",
        b"PUT \xc3\x28 v\n",
        b"\n",
        b"ADD_NODE zero 1.2.3.4:1\n",
    ];
    for raw in cases {
        cl.send_raw(raw).unwrap();
        let r = cl.read_line().unwrap();
        assert!(r.starts_with("ERR BAD_REQUEST "), "{raw:?} got {r:?}");
        assert!(
            r.len() > "ERR BAD_REQUEST ".len(),
            "error without a message: {r:?}"
        );
    }
    assert_eq!(cl.request("PUT k fine").unwrap(), "OK");
    assert_eq!(cl.request("GET k").unwrap(), "VALUE fine");

    // A 2 MiB line: refused, then the connection is closed.
    let mut big = b"PUT big ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 2 << 20));
    big.push(b'\n');
    let _ = cl.send_raw(&big);
    let r = cl.read_line().unwrap();
    assert!(r.starts_with("ERR BAD_REQUEST "), "{r}");
    assert!(
        cl.read_line().is_err(),
        "connection should close after an over-long line"
    );

    // The node keeps serving.
    let mut fresh = c.node(1).client().unwrap();
    assert_eq!(fresh.request("PING").unwrap(), "PONG");
    assert_eq!(fresh.request("GET k").unwrap(), "VALUE fine");
}

#[test]
fn random_bytes_on_the_peer_port_do_not_disturb_the_cluster() {
    let _g = serial();
    let c = Cluster::start(3, FAST);
    let leader = c.expect_leader(Duration::from_secs(10), "a leader");
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for id in 1..=3 {
        let addr = c.node(id).peer_addr.clone();
        for round in 0..20 {
            let Ok(mut s) = TcpStream::connect(&addr) else {
                continue;
            };
            let len = (next() % 4096) as usize + 1;
            let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 4 == 0 {
                // A valid-looking length prefix followed by garbage.
                junk[..4].copy_from_slice(&64u32.to_le_bytes());
            }
            let _ = s.write_all(&junk);
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            let _ = s.read(&mut [0u8; 16]);
        }
    }
    let mut cl = c.node(leader).client().unwrap();
    assert_eq!(cl.request("PUT after-junk ok").unwrap(), "OK");
    for id in 1..=3 {
        let mut cl = c.node(id).client().unwrap();
        assert_eq!(
            cl.request("GET after-junk").unwrap(),
            "VALUE ok",
            "node {id}\n{}",
            c.logs()
        );
    }
}

/// A member of a new cluster waits until every member in `--peers` has
/// answered its start-up probe. Meanwhile it must still say that it lives
/// and what it is doing, and refuse work at once instead of hanging.
#[test]
fn a_member_waiting_for_its_peers_answers_ping_and_status_and_refuses_the_rest() {
    let _g = serial();
    let mut c = Cluster::new(3, FAST);
    let resp_addr = format!("127.0.0.1:{}", free_port());
    let args = &mut c.node_mut(1).args;
    args.extend(["--resp-addr".to_string(), resp_addr.clone()]);
    c.node_mut(1).spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut cl = loop {
        match c.node(1).client() {
            Ok(cl) => break cl,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("node 1 does not take clients: {e}\n{}", c.logs()),
        }
    };
    cl.set_timeout(Duration::from_secs(2));
    assert_eq!(cl.request("PING").unwrap(), "PONG");
    assert_eq!(
        cl.request("STATUS").unwrap(),
        "STATUS id=1 role=follower term=0 leader=0 commit=0 applied=0 last=0 snapshot=0 \
         members=1,2,3 starting=1"
    );
    for req in ["PUT k v", "GET k", "SESSION", "INCR n"] {
        let r = cl.request(req).unwrap();
        assert!(
            r.starts_with("ERR NO_LEADER this node is starting"),
            "{req}: {r}"
        );
    }
    // The Redis port too: PING, INFO from the same local view, errors.
    let mut redis = TcpStream::connect(&resp_addr).unwrap();
    redis
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut ask = |req: &[u8]| -> String {
        redis.write_all(req).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = redis.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(ask(b"*1\r\n$4\r\nPING\r\n"), "+PONG\r\n");
    let set = ask(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    assert!(set.starts_with("-NO_LEADER this node is starting"), "{set}");
    let info = ask(b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n");
    assert!(info.contains("raft_term:0\r\n"), "{info}");
    assert!(info.contains("raft_leader_id:0\r\n"), "{info}");

    // Still waiting a second later: the cluster needs all three.
    thread::sleep(Duration::from_secs(1));
    assert!(cl.request("STATUS").unwrap().ends_with(" starting=1"));

    // The others come, the cluster starts, and the same connection is served.
    c.node_mut(2).spawn();
    c.node_mut(3).spawn();
    c.expect_leader(Duration::from_secs(10), "a leader once all three run");
    assert_eq!(cl.request("PUT k v").unwrap(), "OK");
    assert_eq!(cl.request("GET k").unwrap(), "VALUE v");
    let status = cl.request("STATUS").unwrap();
    assert!(!status.contains("starting"), "{status}");
    assert!(!status.contains("term=0 "), "{status}");
}

fn run_expect_failure(args: &[&str]) -> String {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("run raftnode");
    assert!(!out.status.success(), "raftnode {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    err.lines()
        .filter(|l| l.starts_with("raftnode:") || l.starts_with("error:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_second_raftnode_on_the_same_data_dir_fails_with_a_clear_error() {
    let _g = serial();
    let c = Cluster::start(1, FAST);
    c.expect_leader(Duration::from_secs(10), "a leader");
    let n = c.node(1);
    let data = n.data_dir.to_string_lossy().into_owned();
    let peers = format!("1=127.0.0.1:{}", free_port());
    let client = format!("127.0.0.1:{}", free_port());
    let err = run_expect_failure(&[
        "--id",
        "1",
        "--peers",
        &peers,
        "--client-addr",
        &client,
        "--data-dir",
        &data,
    ]);
    assert!(
        err.to_lowercase().contains("lock"),
        "unclear error: {err:?}"
    );

    // Same client address: refused before touching the disk.
    let other = TempDir::new("second");
    let d2 = other.0.join("d").to_string_lossy().into_owned();
    let err = run_expect_failure(&[
        "--id",
        "1",
        "--peers",
        &peers,
        "--client-addr",
        &n.client_addr,
        "--data-dir",
        &d2,
    ]);
    assert!(
        err.contains("in use") || err.contains("Address"),
        "unclear error: {err:?}"
    );
}

#[test]
fn start_up_errors_are_one_clear_line() {
    let dir = TempDir::new("cli");
    let d = dir.0.join("node").to_string_lossy().into_owned();
    let p = free_port();
    // A data dir of another node.
    let peers1 = format!("1=127.0.0.1:{p}");
    let mut first = Command::new(binary())
        .args([
            "--id",
            "1",
            "--peers",
            &peers1,
            "--client-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
            &d,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(500));
    let _ = first.kill();
    let _ = first.wait();
    let peers2 = format!("2=127.0.0.1:{p}");
    let err = run_expect_failure(&[
        "--id",
        "2",
        "--peers",
        &peers2,
        "--client-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        &d,
    ]);
    assert!(err.contains("belongs to node 1"), "{err:?}");
    // Bad flags.
    assert!(!run_expect_failure(&["--peers", "1=nonsense"]).is_empty());
    assert!(!run_expect_failure(&["--id", "0"]).is_empty());
    assert!(!run_expect_failure(&["--peers", "2=127.0.0.1:1"]).is_empty()); // own id missing
                                                                            // --help explains the flags.
    let out = Command::new(binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for flag in [
        "--peers",
        "--join",
        "--tick-ms",
        "--snapshot-entries",
        "--request-timeout-ms",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

/// A `GET` pipelined behind a `PUT` on one connection waits for the `PUT`'s
/// reply. That reply is written by the ready thread itself when few replies
/// leave together (`reply.rs`, `Outbox::release`); the I/O thread must then
/// still be told to start the waiting `GET`, or it would sit until its
/// deadline (5 s by default). 300 rounds, each under a second, and one
/// connection that pipelines 3 puts and a get.
#[test]
fn a_get_pipelined_behind_a_put_is_answered_at_once_when_the_put_reply_is_written_directly() {
    let _g = serial();
    let c = Cluster::start(3, FAST);
    let leader = c.expect_leader(Duration::from_secs(10), "a leader");
    let mut cl = c.node(leader).client().unwrap();
    cl.set_timeout(Duration::from_secs(10));
    let mut slowest = Duration::ZERO;
    for i in 0..300 {
        let start = Instant::now();
        cl.send_raw(format!("PUT k{i} v{i}\nGET k{i}\n").as_bytes())
            .unwrap();
        assert_eq!(cl.read_line().unwrap(), "OK", "PUT k{i}");
        assert_eq!(cl.read_line().unwrap(), format!("VALUE v{i}"), "GET k{i}");
        slowest = slowest.max(start.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a pipelined PUT+GET took {slowest:?}\n{}",
        c.logs()
    );
    cl.send_raw(b"PUT a 1\nPUT b 2\nPUT c 3\nGET b\n").unwrap();
    let got: Vec<String> = (0..4).map(|_| cl.read_line().unwrap()).collect();
    assert_eq!(got, ["OK", "OK", "OK", "VALUE 2"]);
}
