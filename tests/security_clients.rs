//! Issue 12, "How it is proven", on the client port: bounded memory for
//! unread replies, no execution of a truncated request, certain refusals
//! answered at once, the exact line limit, `--max-clients`, the shared
//! token, and client TLS with and without client certificates. The raft
//! port's attacks are in `tests/security.rs`.

use std::io;
use std::net::Shutdown;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use raftnode_testkit::process::attack::{Certs, TlsClient};
use raftnode_testkit::process::baseline::{Watch, RSS_LIMIT_KIB};
use raftnode_testkit::process::{serial, Client, Cluster, TempDir};

const FAST: &[&str] = &["--tick-ms", "20"];
const LONG: Duration = Duration::from_secs(20);
/// docs/PROTOCOL.md §2: the longest line, without its `\n`.
const MAX_LINE: usize = 1_050_624;
/// How fast a refusal that is certain must come (a request that waits
/// instead gets `ERR TIMEOUT` after 5 s).
const AT_ONCE: Duration = Duration::from_secs(1);

/// One node with `extra` flags, leading.
fn one_node(extra: &[&str]) -> Cluster {
    let c = one_node_started(extra);
    c.expect_leader(LONG, "the node leads");
    c
}

/// One node with `extra` flags, started; its STATUS may need AUTH or TLS,
/// so the caller waits for it with [`wait_until`].
fn one_node_started(extra: &[&str]) -> Cluster {
    let args: Vec<&str> = FAST.iter().chain(extra).copied().collect();
    Cluster::start(1, &args)
}

/// Polls `ok` until it holds, for at most `LONG`.
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !ok() {
        assert!(Instant::now() < deadline, "never {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads reply lines until the node closes the connection; returns them.
/// Fails if it is still open after `LONG`.
fn lines_until_closed(cl: &mut Client) -> Vec<String> {
    cl.set_timeout(LONG);
    let mut lines = Vec::new();
    loop {
        match cl.read_line() {
            Ok(l) => lines.push(l),
            Err(e) => {
                assert!(
                    !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                    "the connection is still open after {LONG:?}; read {lines:?}"
                );
                return lines;
            }
        }
    }
}

#[test]
fn a_thousand_pipelined_gets_of_a_1_mib_value_hold_no_copies_and_are_all_answered() {
    let _g = serial();
    let t0 = Instant::now();
    let c = one_node(&[]);
    let value = "v".repeat(1 << 20);
    let mut cl = c.node(1).client().unwrap();
    assert_eq!(cl.request(&format!("PUT big {value}")).unwrap(), "OK");
    let pid = c.node(1).pid().unwrap();
    let watch = Watch::start(vec![(1, pid)]);
    cl.send_raw("GET big\n".repeat(1000).as_bytes()).unwrap();
    // The node answers all it read while this client reads nothing.
    std::thread::sleep(Duration::from_secs(3));
    let p = watch.peek()[&1];
    let grew = p.peak_rss.saturating_sub(p.rss_before);
    println!(
        "RSS {} KiB before, peak {} KiB (+{grew} KiB) with 1,000 unread 1 MiB replies",
        p.rss_before, p.peak_rss
    );
    assert!(grew <= RSS_LIMIT_KIB, "RSS grew by {grew} KiB");
    let read_from = Instant::now();
    for i in 0..1000 {
        let r = cl.read_line().unwrap_or_else(|e| panic!("reply {i}: {e}"));
        assert!(
            r.len() == 6 + value.len() && r.starts_with("VALUE v"),
            "reply {i}: {}...",
            &r[..r.len().min(40)]
        );
    }
    assert_eq!(cl.request("PING").unwrap(), "PONG");
    let p = watch.stop()[&1];
    let grew = p.peak_rss.saturating_sub(p.rss_before);
    println!(
        "read 1,000 replies (1 GiB) in {:?}; peak RSS growth +{grew} KiB; took {:?}",
        read_from.elapsed(),
        t0.elapsed()
    );
    assert!(
        grew <= RSS_LIMIT_KIB,
        "RSS grew by {grew} KiB while draining"
    );
}

#[test]
fn five_thousand_pipelined_gets_are_all_answered() {
    // More than the 1,024 requests a connection may have in flight: the
    // node stops reading at the limit and must read on once it has room.
    let _g = serial();
    let c = one_node(&[]);
    let mut cl = c.node(1).client().unwrap();
    assert_eq!(cl.request("PUT k v").unwrap(), "OK");
    cl.send_raw("GET k\n".repeat(5000).as_bytes()).unwrap();
    for i in 0..5000 {
        let r = cl.read_line().unwrap_or_else(|e| panic!("reply {i}: {e}"));
        assert_eq!(r, "VALUE v", "reply {i}");
    }
    assert_eq!(cl.request("PING").unwrap(), "PONG");
}

#[test]
fn an_unterminated_last_line_followed_by_fin_is_not_executed() {
    let _g = serial();
    let c = one_node(&[]);
    // The control: the same request with its newline is executed.
    let mut cl = c.node(1).client().unwrap();
    cl.send_raw(b"PUT whole value\n").unwrap();
    cl.shutdown(Shutdown::Write).unwrap();
    assert_eq!(lines_until_closed(&mut cl), ["OK"]);

    let mut cl = c.node(1).client().unwrap();
    cl.send_raw(b"PUT k truncated").unwrap();
    cl.shutdown(Shutdown::Write).unwrap();
    assert_eq!(lines_until_closed(&mut cl), Vec::<String>::new());

    let mut cl = c.node(1).client().unwrap();
    assert_eq!(cl.request("GET whole").unwrap(), "VALUE value");
    assert_eq!(cl.request("GET k").unwrap(), "NOT_FOUND");
}

#[test]
fn a_line_of_exactly_the_limit_is_parsed_and_one_byte_more_closes_the_connection() {
    let _g = serial();
    let c = one_node(&[]);
    // "PUT k " and a value that fills the line to the limit: parsed, and
    // refused for its value, which is over 1 MiB.
    let mut at_limit = b"PUT k ".to_vec();
    at_limit.resize(MAX_LINE, b'x');
    let mut cl = c.node(1).client().unwrap();
    cl.send_raw(&at_limit).unwrap();
    cl.send_raw(b"\n").unwrap();
    let r = cl.read_line().unwrap();
    assert!(
        r.starts_with("ERR BAD_REQUEST value is"),
        "a line of {MAX_LINE} bytes: {r}"
    );
    assert_eq!(cl.request("PING").unwrap(), "PONG", "still usable");

    let mut over = at_limit;
    over.push(b'x');
    let mut cl = c.node(1).client().unwrap();
    cl.send_raw(&over).unwrap();
    let lines = lines_until_closed(&mut cl);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("ERR BAD_REQUEST line longer than"),
        "a line of {} bytes: {}",
        MAX_LINE + 1,
        lines[0]
    );
}

#[test]
fn max_clients_refuses_the_sixth_with_busy_and_serves_again_after_one_closes() {
    let _g = serial();
    let c = one_node(&["--max-clients", "5"]);
    // wait_leader's STATUS connections count until the node sees them close.
    let mut five: Vec<Client> = Vec::new();
    wait_until("five clients served", || {
        while five.len() < 5 {
            let mut cl = c.node(1).client().unwrap();
            if cl.request("PING").ok().as_deref() != Some("PONG") {
                return false;
            }
            five.push(cl);
        }
        true
    });
    let mut sixth = c.node(1).client().unwrap();
    let lines = lines_until_closed(&mut sixth);
    assert!(
        lines.len() == 1 && lines[0].starts_with("ERR BUSY "),
        "the sixth client got {lines:?}"
    );
    drop(five.remove(0));
    let r = c.request_until(1, "PING", |r| r == "PONG", LONG);
    assert_eq!(
        r.as_deref(),
        Some("PONG"),
        "no client served after one closed"
    );
    for cl in &mut five {
        assert_eq!(cl.request("PING").unwrap(), "PONG");
    }
}

#[test]
fn with_an_auth_token_nothing_but_auth_is_served_and_a_wrong_token_closes() {
    let _g = serial();
    let dir = TempDir::new("token");
    let token = dir.0.join("token");
    std::fs::write(&token, "s3cret-t0ken-0f-16-bytes\n").unwrap();
    let c = one_node_started(&["--auth-token-file", token.to_str().unwrap()]);
    wait_until("leading", || {
        let Ok(mut cl) = c.node(1).client() else {
            return false;
        };
        cl.request("AUTH s3cret-t0ken-0f-16-bytes").ok().as_deref() == Some("OK")
            && cl
                .request("STATUS")
                .is_ok_and(|s| s.contains(" role=leader "))
    });

    let mut cl = c.node(1).client().unwrap();
    let r = cl.request("PING").unwrap();
    assert!(r.starts_with("ERR NOAUTH "), "PING before AUTH: {r}");
    let r = cl
        .request("AUTH s3cret-t0ken-0f-16-bytes-0f-16-bytez")
        .unwrap();
    assert!(r.starts_with("ERR NOAUTH "), "a wrong token: {r}");
    assert_eq!(lines_until_closed(&mut cl), Vec::<String>::new());

    let mut cl = c.node(1).client().unwrap();
    assert_eq!(cl.request("AUTH s3cret-t0ken-0f-16-bytes").unwrap(), "OK");
    assert_eq!(cl.request("PUT secret 42").unwrap(), "OK");
    assert_eq!(cl.request("GET secret").unwrap(), "VALUE 42");

    let mut cl = c.node(1).client().unwrap();
    let r = cl.request("GET secret").unwrap();
    assert!(r.starts_with("ERR NOAUTH "), "GET before AUTH: {r}");
}

/// Sends a plaintext request to a TLS client port: it must get no reply
/// and be closed.
fn plaintext_is_refused(addr: &str) {
    let mut cl = Client::connect(addr).unwrap();
    cl.send_raw(b"PING\n").unwrap();
    let lines = lines_until_closed(&mut cl);
    assert!(
        !lines.iter().any(|l| l.contains("PONG")),
        "a plaintext client was answered: {lines:?}"
    );
}

#[test]
fn client_tls_serves_and_client_cert_auth_refuses_clients_without_a_valid_certificate() {
    let _g = serial();
    let (dir, other_dir) = (TempDir::new("certs"), TempDir::new("other-ca"));
    let Some(certs) = Certs::make(&dir.0, 1) else {
        return;
    };
    let other = Certs::make(&other_dir.0, 1).expect("a second CA");
    let (cert, key, ca) = (certs.node_cert(1), certs.node_key(1), certs.ca());
    let s = |p: &PathBuf| p.display().to_string();
    let tls = [
        "--cert-file".to_string(),
        s(&cert),
        "--key-file".into(),
        s(&key),
    ];
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();

    let leads = |addr: &str, cert: Option<(PathBuf, PathBuf)>| {
        wait_until("leading", || {
            TlsClient::connect(addr, &ca, cert.clone())
                .and_then(|mut cl| cl.request("STATUS"))
                .is_ok_and(|s| s.contains(" role=leader "))
        })
    };

    // TLS only: any client that trusts the CA.
    let c = one_node_started(&tls);
    let addr = &c.node(1).client_addr;
    leads(addr, None);
    let mut cl = TlsClient::connect(addr, &ca, None).unwrap();
    assert_eq!(cl.request("PUT over tls").unwrap(), "OK");
    assert_eq!(cl.request("GET over").unwrap(), "VALUE tls");
    plaintext_is_refused(addr);
    drop(c);

    // Client certificates from the CA required.
    let ca_arg = s(&ca);
    let mut auth = tls.clone();
    auth.extend(["--trusted-ca-file", &ca_arg, "--client-cert-auth"]);
    let c = one_node_started(&auth);
    let addr = &c.node(1).client_addr;
    let client_cert = Some((certs.client_cert(), certs.client_key()));
    leads(addr, client_cert.clone());
    let mut cl = TlsClient::connect(addr, &ca, client_cert).unwrap();
    assert_eq!(cl.request("PUT with cert").unwrap(), "OK");
    assert_eq!(cl.request("GET with").unwrap(), "VALUE cert");
    let foreign = Some((other.client_cert(), other.client_key()));
    for (what, cert) in [("no certificate", None), ("another CA's", foreign)] {
        // TLS 1.3: the refusal may come after the client's handshake.
        let r = TlsClient::connect(addr, &ca, cert).and_then(|mut cl| {
            cl.set_timeout(LONG);
            cl.request("PING")
        });
        match r {
            Ok(line) => panic!("a client with {what} was answered: {line}"),
            Err(e) => println!("a client with {what}: refused ({e})"),
        }
    }
    plaintext_is_refused(addr);
}

#[test]
fn remove_node_and_transfer_leader_refuse_what_is_certain_at_once() {
    let _g = serial();
    let c = Cluster::start(3, &["--tick-ms", "50"]);
    let leader = c.expect_leader(LONG, "a leader");
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let mut cl = c.node(leader).client().unwrap();
    let mut via_follower = c.node(followers[0]).client().unwrap();

    let refused_at_once = |cl: &mut Client, line: &str| {
        let t = Instant::now();
        let r = cl.request(line).unwrap();
        let took = t.elapsed();
        assert!(r.starts_with("ERR BAD_REQUEST "), "{line}: {r}");
        assert!(took < AT_ONCE, "{line} was answered after {took:?}: {r}");
        println!("{line}: {r} ({took:?})");
    };
    for cl in [&mut cl, &mut via_follower] {
        refused_at_once(cl, "REMOVE_NODE +2");
        refused_at_once(cl, "REMOVE_NODE -1");
        refused_at_once(cl, "REMOVE_NODE 99");
        refused_at_once(cl, "TRANSFER_LEADER 99");
    }
    let status = c.node(leader).status().expect("STATUS");
    assert_eq!(status.fields["members"], "1,2,3", "nothing was removed");

    // Every member in turn: the last voter stays.
    for (i, f) in followers.iter().enumerate() {
        assert_eq!(cl.request(&format!("REMOVE_NODE {f}")).unwrap(), "OK");
        refused_at_once(&mut cl, &format!("REMOVE_NODE {f}"));
        if i == 0 {
            refused_at_once(&mut cl, &format!("TRANSFER_LEADER {f}"));
        }
    }
    refused_at_once(&mut cl, &format!("REMOVE_NODE {leader}"));
    let status = c.node(leader).status().expect("STATUS");
    assert_eq!(status.fields["members"], leader.to_string());
    assert_eq!(cl.request("PUT still alive").unwrap(), "OK");
    assert_eq!(cl.request("GET still").unwrap(), "VALUE alive");

    // The removed nodes say so (once they learn it, from the log or from
    // their peers' verdict).
    for f in followers {
        let r = c.request_until(f, "GET still", |r| r.starts_with("ERR REMOVED "), LONG);
        assert!(
            r.is_some(),
            "removed node {f} never answered ERR REMOVED\n{}",
            c.logs()
        );
    }
}
