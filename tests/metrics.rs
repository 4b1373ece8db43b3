//! `--metrics-addr`: real `raftnode` processes scraped over HTTP while a
//! workload runs, the values checked to move as the cluster does, and the
//! exposition checked by Prometheus's own parser (`promtool check
//! metrics`, Debian package `prometheus`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raftnode_testkit::process::{free_port, serial, Client, Cluster};

/// Fast ticks, and snapshots often enough that the workload takes some.
const ARGS: &[&str] = &["--tick-ms", "20", "--snapshot-entries", "200"];

/// One HTTP request on a fresh connection; the whole response.
fn http(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8(out).expect("a UTF-8 response")
}

/// `GET /metrics`: the body, after checking the status and content type.
fn scrape(addr: &str) -> Scrape {
    let resp = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n",
    );
    let (head, body) = resp.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nContent-Length: {}", body.len())),
        "{head}"
    );
    Scrape(body.to_string())
}

/// A scrape's text.
#[derive(Clone)]
struct Scrape(String);

impl Scrape {
    /// The value of the sample named exactly `series` (name and labels as
    /// rendered), or `None` if there is no such line.
    fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().expect("a number"))
        })
    }

    /// Like [`get`], but the series must be there.
    fn v(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no {series} in the scrape:\n{}", self.0))
    }
}

/// Scrapes `addr` until `ok` holds, up to `within`; the last scrape.
fn scrape_until(addr: &str, within: Duration, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        let s = scrape(addr);
        if ok(&s) || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `promtool check metrics` on `text`: `None` when promtool is not
/// installed (allowed only outside CI), else its verdict and output.
fn promtool(text: &str) -> Option<(bool, String)> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is missing in CI: .ci/run installs Debian's prometheus package"
            );
            return None;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success() && said.trim().is_empty(), said))
}

/// Starts a 3-node cluster with metrics on free ports; their addresses.
fn cluster() -> (Cluster, BTreeMap<u64, String>) {
    let mut c = Cluster::new(3, ARGS);
    let mut addrs = BTreeMap::new();
    for node in c.nodes.values_mut() {
        let addr = format!("127.0.0.1:{}", free_port());
        node.args.push("--metrics-addr".into());
        node.args.push(addr.clone());
        addrs.insert(node.id, addr);
        node.spawn();
    }
    (c, addrs)
}

/// Sends `n` pipelined PUTs on one connection; asserts every one is `OK`.
fn put_many(client: &mut Client, tag: &str, n: usize) {
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("PUT {tag}-{i} value-{i}\n"));
    }
    client.send_raw(batch.as_bytes()).unwrap();
    for i in 0..n {
        assert_eq!(client.read_line().unwrap(), "OK", "PUT {tag}-{i}");
    }
}

#[test]
fn scrapes_of_three_nodes_move_with_writes_and_a_leader_change() {
    let _g = serial();
    let (mut c, addrs) = cluster();
    let leader = c
        .wait_leader(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no leader\n{}", c.logs()));
    // Every node knows the leader before the baseline is taken.
    let before: BTreeMap<u64, Scrape> = addrs
        .iter()
        .map(|(id, a)| {
            let s = scrape_until(a, Duration::from_secs(10), |s| {
                s.v("raftnode_server_has_leader") == 1.0
            });
            assert_eq!(s.v("raftnode_server_has_leader"), 1.0, "node {id}");
            (*id, s)
        })
        .collect();

    // The workload: 300 PUTs through each node, and 50 GETs.
    const PUTS: usize = 300;
    for id in 1..=3 {
        let mut cl = c.node(id).client().unwrap();
        put_many(&mut cl, &format!("n{id}"), PUTS);
        for i in 0..50 {
            assert_eq!(
                cl.request(&format!("GET n{id}-{i}")).unwrap(),
                format!("VALUE value-{i}")
            );
        }
    }
    let applied = c
        .wait_converged(3 * PUTS as u64, Duration::from_secs(10))
        .expect("the nodes converge");
    // A connection left open is counted.
    let held = c.node(leader).client().unwrap();

    for (id, addr) in &addrs {
        let (b, a) = (&before[id], scrape(addr));
        let rose = |series: &str| a.v(series) - b.v(series);
        let at_least = (3 * PUTS) as f64;
        // Commits and applies: every node saw every write.
        assert!(
            rose("raftnode_server_proposals_committed_total") >= at_least,
            "node {id}"
        );
        assert!(
            rose("raftnode_server_proposals_applied_total") >= at_least,
            "node {id}"
        );
        assert!(
            a.v("raftnode_server_applied_index") >= applied as f64,
            "node {id}"
        );
        assert!(
            a.v("raftnode_server_commit_index") >= applied as f64,
            "node {id}"
        );
        let status = c.node(*id).status().expect("STATUS");
        assert_eq!(
            a.v("raftnode_server_term"),
            status.num("term") as f64,
            "node {id}"
        );
        assert_eq!(a.v("raftnode_server_proposals_pending"), 0.0, "node {id}");
        assert_eq!(
            a.v("raftnode_server_proposals_failed_total"),
            0.0,
            "node {id}"
        );
        // Fsyncs are counted, and together made every entry durable.
        assert!(
            rose("raftnode_disk_wal_fsync_duration_seconds_count") >= 1.0,
            "node {id}"
        );
        assert!(
            rose("raftnode_disk_wal_fsync_duration_seconds_sum") > 0.0,
            "node {id}"
        );
        assert_eq!(
            a.v("raftnode_disk_wal_fsync_duration_seconds_count"),
            a.v("raftnode_disk_wal_entries_per_fsync_count"),
            "node {id}: one entries-per-fsync value per fsync"
        );
        assert!(
            rose("raftnode_disk_wal_entries_per_fsync_sum") >= at_least,
            "node {id}"
        );
        assert!(
            rose("raftnode_disk_wal_write_bytes_total") >= at_least * 16.0,
            "node {id}: 900 entries, each a request id and a key and value of 12 bytes or more"
        );
        assert!(a.v("raftnode_disk_wal_size_bytes") > 0.0, "node {id}");
        // --snapshot-entries 200: this node took snapshots.
        assert!(
            a.v("raftnode_disk_snapshot_duration_seconds_count") >= 1.0,
            "node {id}"
        );
        assert!(a.v("raftnode_disk_snapshot_size_bytes") > 0.0, "node {id}");
        // Client requests: exactly this node's.
        let put_ok = "raftnode_client_requests_total{command=\"PUT\",code=\"OK\"}";
        assert_eq!(
            a.get(put_ok).unwrap_or(0.0) - b.get(put_ok).unwrap_or(0.0),
            PUTS as f64,
            "node {id}"
        );
        let get_ok = "raftnode_client_requests_total{command=\"GET\",code=\"VALUE\"}";
        assert_eq!(a.v(get_ok), 50.0, "node {id}");
        assert_eq!(
            a.v("raftnode_client_request_duration_seconds_count{command=\"PUT\"}"),
            PUTS as f64,
            "node {id}"
        );
        assert_eq!(
            a.v("raftnode_client_request_duration_seconds_bucket{command=\"PUT\",le=\"+Inf\"}"),
            PUTS as f64,
            "node {id}"
        );
        // Leadership.
        let is_leader = if *id == leader { 1.0 } else { 0.0 };
        assert_eq!(a.v("raftnode_server_is_leader"), is_leader, "node {id}");
        assert!(
            a.v("raftnode_server_leader_changes_seen_total") >= 1.0,
            "node {id}"
        );
        // Peer traffic: the leader sends to and times every follower; the
        // followers hear from it.
        for peer in addrs.keys().filter(|p| *p != id) {
            if *id == leader {
                let to = format!("{{to=\"{peer}\"}}");
                assert!(a.v(&format!("raftnode_network_peer_sent_bytes_total{to}")) > 0.0);
                assert!(
                    a.v(&format!(
                        "raftnode_network_peer_round_trip_time_seconds_count{to}"
                    )) > 0.0,
                    "the leader times heartbeats to {peer}"
                );
            } else if *peer == leader {
                let from = format!("{{from=\"{peer}\"}}");
                let rx = format!("raftnode_network_peer_received_bytes_total{from}");
                assert!(rose(&rx) > (PUTS * 3 * 8) as f64, "node {id} from {peer}");
            }
        }
    }
    let s = scrape(&addrs[&leader]);
    assert!(s.v("raftnode_client_connections") >= 1.0);
    drop(held);

    // The real parser, with its lint, on a leader's and a follower's scrape.
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    for id in [leader, follower] {
        let text = scrape(&addrs[&id]).0;
        match promtool(&text) {
            Some((ok, said)) => assert!(ok, "promtool on node {id}: {said}\n{text}"),
            None => eprintln!("NOTICE: promtool not installed; the scrape was not validated"),
        }
    }

    // kill -9 of the leader: the survivors see a new leader.
    let survivor = follower;
    let changes = scrape(&addrs[&survivor]).v("raftnode_server_leader_changes_seen_total");
    let term = scrape(&addrs[&survivor]).v("raftnode_server_term");
    c.node_mut(leader).kill();
    let after = scrape_until(&addrs[&survivor], Duration::from_secs(15), |s| {
        s.v("raftnode_server_has_leader") == 1.0
            && s.v("raftnode_server_leader_changes_seen_total") > changes
    });
    assert!(
        after.v("raftnode_server_leader_changes_seen_total") > changes,
        "node {survivor} saw no leader change after node {leader} was killed\n{}",
        c.logs()
    );
    assert_eq!(after.v("raftnode_server_has_leader"), 1.0);
    assert!(after.v("raftnode_server_term") > term);
    let new_leader = c.expect_leader(Duration::from_secs(10), "a new leader");
    assert_ne!(new_leader, leader);
    let s = scrape_until(&addrs[&new_leader], Duration::from_secs(5), |s| {
        s.v("raftnode_server_is_leader") == 1.0
    });
    assert_eq!(s.v("raftnode_server_is_leader"), 1.0, "node {new_leader}");
}

#[test]
fn the_endpoint_refuses_what_is_not_a_scrape_and_keeps_serving() {
    let _g = serial();
    let (c, addrs) = cluster();
    c.expect_leader(Duration::from_secs(10), "a leader");
    let addr = &addrs[&1];
    let status = |req: &[u8]| {
        let resp = http(addr, req);
        resp.split(' ').nth(1).unwrap_or("").to_string()
    };
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), "404");
    assert_eq!(
        status(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        "405"
    );
    assert_eq!(status(b"GET /metrics HTTP/2.0\r\n\r\n"), "505");
    assert_eq!(
        status(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
        "400"
    );
    // Exactly the limit and no end of head (more would be left unread,
    // and closing over unread bytes resets the connection).
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.resize(8 << 10, b'a');
    assert_eq!(status(&huge), "431");
    // A client that sends half a request and waits is cut off in time.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut resp = String::new();
    let _ = slow.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 408 "), "{resp}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A client that connects and leaves.
    drop(TcpStream::connect(addr).unwrap());
    // Through all of it, the node kept serving both metrics and clients.
    let s = scrape(addr);
    assert_eq!(s.v("raftnode_server_has_leader"), 1.0);
    assert_eq!(c.node(1).client().unwrap().request("PING").unwrap(), "PONG");
    assert!(c.node(1).child.is_some());
}

/// Connections that send half a request and wait, held open.
fn slow_scrapers(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
            s
        })
        .collect()
}

#[test]
fn slow_scrapers_do_not_hold_up_another_scrape() {
    // Issue 21: one thread served one connection at a time, so 5 clients
    // that each sent half a request delayed a scrape to 9.9 s.
    let _g = serial();
    let (c, addrs) = cluster();
    let leader = c.expect_leader(Duration::from_secs(10), "a leader");
    let mut cl = c.node(leader).client().unwrap();
    assert_eq!(cl.request("PUT k v").unwrap(), "OK");
    let addr = &addrs[&1];
    let slow = slow_scrapers(addr, 5);
    std::thread::sleep(Duration::from_millis(200)); // all of them accepted
    let t = Instant::now();
    let s = scrape(addr);
    let took = t.elapsed();
    println!("a scrape with 5 slow clients connected took {took:?}");
    assert_eq!(s.v("raftnode_server_has_leader"), 1.0);
    // The head timeout is 2 s: a scrape served after a slow client's
    // timeout would take at least that.
    assert!(
        took < Duration::from_millis(1500),
        "the scrape took {took:?}"
    );
    // Each slow client is cut off by its own timeout, at about the same time.
    for mut s in slow {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 408 "), "{resp}");
    }
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    // More slow clients than serving threads (8): the rest are answered
    // 503 at once, never queued behind them.
    let t = Instant::now();
    let mut slow = slow_scrapers(addr, 12);
    std::thread::sleep(Duration::from_millis(300));
    // Well before the 2 s head timeout: only the 503s have come.
    let mut busy = 0;
    for s in &mut slow {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {} // being served
            Ok(n) => {
                let resp = String::from_utf8_lossy(&buf[..n]);
                assert!(resp.starts_with("HTTP/1.1 503 "), "{resp}");
                assert!(resp.contains("\r\nRetry-After: 1\r\n"), "{resp}");
                busy += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(busy, 4, "12 slow clients, 8 served at once");
    let resp = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 503 "), "{resp}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(addr, b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503 ") {
        assert!(
            Instant::now() < deadline,
            "still busy after the slow clients left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(scrape(addr).v("raftnode_server_has_leader"), 1.0);
    // The data is as it was, and a write succeeds.
    assert_eq!(cl.request("GET k").unwrap(), "VALUE v");
    assert_eq!(cl.request("PUT k w").unwrap(), "OK");
    assert_eq!(cl.request("GET k").unwrap(), "VALUE w");
}
