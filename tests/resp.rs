//! Issue 16, "The Redis protocol": `--resp-addr` against the real tools
//! of Debian's `redis-tools` (`redis-cli`, `redis-benchmark`), on clusters
//! of real processes with free ports.
//!
//! - `redis-cli` sends each supported command (and some refused ones) and
//!   its printed reply is checked; writes and reads go to different nodes;
//! - `redis-cli --pipe` mass-inserts 100,000 keys, which are then counted
//!   and sampled through the line protocol of another node;
//! - `redis-benchmark -t set,get -n 100000 -c 50` runs against a follower
//!   of a 3-node cluster and its output is parsed;
//! - malformed frames from Redis's own `tests/unit/protocol.tcl` go over a
//!   raw socket: each gets `-ERR Protocol error` and the connection closes,
//!   while the node keeps serving;
//! - `AUTH` and TLS work with `redis-cli -a` and `--tls`.
//!
//! The tools must be installed (`.ci/run` installs them): with `CI=true` a
//! missing tool fails the test; elsewhere the test says so and passes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use raftnode_testkit::process::attack::Certs;
use raftnode_testkit::process::{free_port, serial, Client, Cluster, TempDir};

const FAST: &[&str] = &["--tick-ms", "20"];
const LONG: Duration = Duration::from_secs(20);

/// Whether redis-cli and redis-benchmark are installed; with `CI=true`
/// their absence is a failure.
fn tools_present() -> bool {
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let present = have("redis-cli") && have("redis-benchmark");
    if !present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "redis-cli and redis-benchmark must be installed in CI (.ci/run installs redis-tools)"
        );
        eprintln!(
            "SKIPPED: redis-cli or redis-benchmark is not installed (apt-get install redis-tools)"
        );
    }
    present
}

/// A started cluster of `n` nodes, each with a RESP port; returns the
/// cluster and the nodes' RESP addresses (index 0 is node 1).
fn resp_cluster(n: u64, extra: &[&str]) -> (Cluster, Vec<String>) {
    let args: Vec<&str> = FAST.iter().chain(extra).copied().collect();
    let mut c = Cluster::new(n, &args);
    let mut addrs = Vec::new();
    for node in c.nodes.values_mut() {
        let addr = format!("127.0.0.1:{}", free_port());
        node.args.extend(["--resp-addr".to_string(), addr.clone()]);
        node.spawn();
        addrs.push(addr);
    }
    (c, addrs)
}

fn host_port(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').expect("host:port")
}

/// Runs redis-cli against `addr` with `args`, feeding it `stdin`.
fn cli_output(addr: &str, args: &[&str], stdin: &[u8]) -> Output {
    let (host, port) = host_port(addr);
    let mut child = Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("feed redis-cli");
    drop(input);
    child.wait_with_output().expect("redis-cli output")
}

/// redis-cli's printed reply to one command (`--no-raw`: typed output
/// such as `(integer) 2`, `(nil)`, `"value"`), without the last newline.
fn cli(addr: &str, args: &[&str]) -> String {
    let out = cli_output(addr, &[&["--no-raw"], args].concat(), b"");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim_end_matches('\n').to_string()
}

/// Waits until the node at `addr` answers `SET` over RESP (a leader is
/// known and writes commit).
fn wait_writable(addr: &str) {
    let deadline = Instant::now() + LONG;
    while cli(addr, &["SET", "warmup", "1"]) != "OK" {
        assert!(Instant::now() < deadline, "{addr} never took a write");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ids of a follower and of the leader.
fn follower_and_leader(c: &Cluster) -> (u64, u64) {
    let leader = c.expect_leader(LONG, "a leader");
    let follower = c.nodes.keys().copied().find(|&id| id != leader).unwrap();
    (follower, leader)
}

#[test]
fn redis_cli_gets_redis_answers_from_any_node() {
    if !tools_present() {
        return;
    }
    let _g = serial();
    let (c, resp) = resp_cluster(3, &[]);
    let (f, l) = follower_and_leader(&c);
    let (fa, la) = (&resp[f as usize - 1], &resp[l as usize - 1]);
    wait_writable(fa);
    // (node, command, what redis-cli prints); writes and reads alternate
    // between a follower and the leader.
    let steps: &[(&str, &[&str], &str)] = &[
        (fa, &["PING"], "PONG"),
        (la, &["PING", "hi there"], "\"hi there\""),
        (fa, &["ECHO", "x y"], "\"x y\""),
        (fa, &["SET", "greeting", "hello world"], "OK"),
        (la, &["GET", "greeting"], "\"hello world\""),
        (la, &["GET", "missing"], "(nil)"),
        (fa, &["SET", "greeting", "other", "NX"], "(nil)"),
        (la, &["SET", "fresh", "1", "XX"], "(nil)"),
        (fa, &["SET", "fresh", "1", "nx"], "OK"),
        (la, &["SET", "fresh", "2", "XX"], "OK"),
        (fa, &["GET", "fresh"], "\"2\""),
        (la, &["MSET", "a", "1", "b", "2", "c", "3"], "OK"),
        (
            fa,
            &["MGET", "a", "nope", "c"],
            "1) \"1\"\n2) (nil)\n3) \"3\"",
        ),
        (la, &["EXISTS", "a", "a", "nope", "b"], "(integer) 3"),
        (fa, &["DEL", "a", "b", "nope"], "(integer) 2"),
        (la, &["EXISTS", "a", "b", "c"], "(integer) 1"),
        (fa, &["DBSIZE"], "(integer) 4"), // warmup greeting fresh c
        (la, &["INCR", "hits"], "(integer) 1"),
        (fa, &["INCR", "hits"], "(integer) 2"),
        (la, &["GET", "hits"], "\"2\""),
        (
            fa,
            &["INCR", "greeting"],
            "(error) ERR INCR: the value is not a decimal integer in the 64-bit signed range; it is unchanged",
        ),
        (la, &["DEL", "hits"], "(integer) 1"),
        (la, &["SELECT", "0"], "OK"),
        (fa, &["SELECT", "1"], "(error) ERR DB index is out of range"),
        (
            la,
            &["SET", "k", "v", "EX", "10"],
            "(error) ERR SET option EX is not supported: raftnode keys never expire",
        ),
        (
            fa,
            &["GET"],
            "(error) ERR wrong number of arguments for 'get' command",
        ),
        (
            fa,
            &["MSET", "a"],
            "(error) ERR wrong number of arguments for 'mset' command",
        ),
        (
            la,
            &["FLUSHALL", "now"],
            "(error) ERR unknown command 'FLUSHALL', with args beginning with: 'now' ",
        ),
        (
            fa,
            &["HELLO", "3"],
            "(error) NOPROTO sorry, this protocol version is not supported; use RESP2",
        ),
        (la, &["COMMAND", "COUNT"], "(integer) 17"),
        (fa, &["COMMAND", "DOCS"], "(empty array)"),
        (
            la,
            &["CLIENT", "KILL", "x"],
            "(error) ERR unknown subcommand 'KILL'. Try CLIENT HELP.",
        ),
    ];
    for (addr, args, want) in steps {
        assert_eq!(&cli(addr, args), want, "{args:?} at {addr}");
    }
    let hello = cli(fa, &["HELLO", "2"]);
    for want in ["\"proto\"", "(integer) 2", "\"role\"", "\"replica\""] {
        assert!(hello.contains(want), "HELLO 2 at a follower: {hello}");
    }
    let info = cli(fa, &["INFO"]);
    for want in [
        "# Server".to_string(),
        "role:slave".into(),
        format!("raft_leader_id:{l}"),
        format!("raft_leader_raft_addr:{}", c.node(l).peer_addr),
        "raft_leader_resp_addr:unknown".into(),
        "db0:keys=4,".into(),
    ] {
        assert!(
            info.contains(&want),
            "{want:?} is not in the follower's INFO: {info}"
        );
    }
    assert!(cli(la, &["INFO", "replication"]).contains("role:master"));

    // Commands of one connection, piped: the name stays with the
    // connection, and an unknown command leaves it usable.
    let out = cli_output(
        fa,
        &["--no-raw"],
        b"CLIENT GETNAME\nCLIENT SETNAME me\nCLIENT GETNAME\nNOSUCH\nPING\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "(nil)\nOK\n\"me\"\n(error) ERR unknown command 'NOSUCH', with args beginning with: \nPONG\n"
    );

    // Binary-safe over RESP; the line protocol refuses what it cannot
    // carry instead of splitting it.
    assert_eq!(cli(fa, &["SET", "bin", "two\nlines"]), "OK");
    assert_eq!(cli(la, &["GET", "bin"]), "\"two\\nlines\"");
    let mut line = c.node(l).client().unwrap();
    let got = line.request("GET bin").unwrap();
    assert!(
        got.starts_with("ERR BAD_REQUEST the value holds a newline"),
        "{got}"
    );
    assert_eq!(line.request("PING").unwrap(), "PONG");
    // Both protocols share one store.
    assert_eq!(line.request("GET greeting").unwrap(), "VALUE hello world");
    assert_eq!(line.request("PUT from_line v w").unwrap(), "OK");
    assert_eq!(cli(fa, &["GET", "from_line"]), "\"v w\"");
}

/// `*3 $3 SET $<len> key $<len> value` for `key:<i>` = `value:<i>`.
fn set_frames(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let (k, v) = (format!("key:{i}"), format!("value:{i}"));
        let _ = write!(
            out,
            "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
            k.len(),
            v.len()
        );
    }
    out
}

#[test]
fn redis_cli_pipe_mass_inserts_100000_keys_read_back_over_the_line_protocol() {
    if !tools_present() {
        return;
    }
    let _g = serial();
    let (c, resp) = resp_cluster(3, &[]);
    let (f, l) = follower_and_leader(&c);
    wait_writable(&resp[l as usize - 1]);
    const N: usize = 100_000;
    let out = cli_output(&resp[l as usize - 1], &["--pipe"], &set_frames(N));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "redis-cli --pipe failed: {text}");
    assert!(
        text.contains(&format!("errors: 0, replies: {N}")),
        "redis-cli --pipe: {text}"
    );
    // Counted over RESP at a follower (linearizable), then sampled over
    // the line protocol at the same follower.
    assert_eq!(
        cli(&resp[f as usize - 1], &["DBSIZE"]),
        format!("(integer) {}", N + 1) // and the warmup key
    );
    let mut line = c.node(f).client().unwrap();
    for i in (0..N).step_by(997).chain([N - 1]) {
        assert_eq!(
            line.request(&format!("GET key:{i}")).unwrap(),
            format!("VALUE value:{i}")
        );
    }
    assert_eq!(line.request(&format!("GET key:{N}")).unwrap(), "NOT_FOUND");
}

/// The requests per second redis-benchmark's `--csv` output gives `test`.
fn rps(csv: &str, test: &str) -> Option<f64> {
    csv.lines()
        .find(|l| l.starts_with(&format!("\"{test}\",")))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
}

#[test]
fn redis_benchmark_runs_set_and_get_against_a_three_node_cluster() {
    if !tools_present() {
        return;
    }
    let _g = serial();
    let (c, resp) = resp_cluster(3, &[]);
    let (f, _) = follower_and_leader(&c);
    let addr = &resp[f as usize - 1];
    wait_writable(addr);
    let (host, port) = host_port(addr);
    let pipeline = std::env::var("RAFTNODE_RESP_BENCH_PIPELINE").unwrap_or_else(|_| "1".into());
    let out = Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-t", "set,get", "-n", "100000"])
        .args(["-c", "50", "-P", &pipeline, "--csv"])
        .output()
        .expect("run redis-benchmark");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("redis-benchmark -P {pipeline} against follower {f}:\n{stdout}");
    assert!(out.status.success(), "redis-benchmark failed: {stderr}");
    let (set, get) = (rps(&stdout, "SET"), rps(&stdout, "GET"));
    assert!(set.is_some_and(|r| r > 0.0), "no SET figure in: {stdout}");
    assert!(get.is_some_and(|r| r > 0.0), "no GET figure in: {stdout}");
    // redis-benchmark reports error replies on stderr ("Error from
    // server"); its CONFIG GET probe is the one refusal expected.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("rror") && !l.contains("CONFIG"))
        .collect();
    assert!(errors.is_empty(), "redis-benchmark saw errors: {errors:?}");
    // The benchmark's key holds one of its 3-byte values (-d 3).
    let mut line = c.node(f).client().unwrap();
    let v = line.request("GET key:__rand_int__").unwrap();
    assert!(v.starts_with("VALUE ") && v.len() == 9, "{v}");
}

/// Sends `bytes` on a fresh connection and reads until the node closes it
/// (or `LONG` passes); returns what came back and whether it closed.
fn send_and_read(addr: &str, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(bytes).expect("send");
    let mut got = Vec::new();
    let closed = s.read_to_end(&mut got).is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Reads from `s` until `want` bytes came.
fn read_exactly(s: &mut TcpStream, want: usize) -> String {
    let mut got = vec![0; want];
    s.read_exact(&mut got).expect("the reply");
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn malformed_frames_from_redis_tests_get_protocol_errors_and_close() {
    let _g = serial();
    let (c, resp) = resp_cluster(1, &[]);
    c.expect_leader(LONG, "a leader");
    let addr = &resp[0];
    // Redis's tests/unit/protocol.tcl, and one request over the limit.
    let over = format!("*1\r\n${}\r\n", 1_050_624 + 1);
    let cases: &[(&[u8], &str)] = &[
        (
            b"*20000000\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*3000000000\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n",
            "-ERR Protocol error: expected '$', got 'f'\r\n",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\nfoo\r\n",
            "-ERR Protocol error: expected '$', got 'f'\r\n",
        ),
        (
            b"set \"\"\"test-key\"\"\" test-value\r\nping\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            over.as_bytes(),
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
    ];
    for (bytes, want) in cases {
        let (got, closed) = send_and_read(addr, bytes);
        assert_eq!(&got, want, "{:?}", String::from_utf8_lossy(bytes));
        assert!(
            closed,
            "still open after {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // What Redis skips or answers and goes on: an empty query, a negative
    // multibulk count, a wrong number of arguments, an unknown command;
    // requests pipelined after them are answered in order.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(b"\r\n*-10\r\nping x y z\r\n*1\r\n$4\r\nNOPE\r\nPING\r\n")
        .unwrap();
    let want = "-ERR wrong number of arguments for 'ping' command\r\n\
                -ERR unknown command 'NOPE', with args beginning with: \r\n+PONG\r\n";
    assert_eq!(read_exactly(&mut s, want.len()), want);
    // A write then a read of it, pipelined in one send, and a request cut
    // in two sends.
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*2\r\n$3\r\nGET\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b"$1\r\nk\r\n").unwrap();
    let want = "+OK\r\n$2\r\nv1\r\n$2\r\nv1\r\n";
    assert_eq!(read_exactly(&mut s, want.len()), want);
    // QUIT answers, then closes; nothing after it runs.
    let (got, closed) = send_and_read(addr, b"QUIT\r\nSET k v2\r\n");
    assert_eq!((got.as_str(), closed), ("+OK\r\n", true));
    // The node still serves new connections.
    let mut line = c.node(1).client().unwrap();
    assert_eq!(line.request("GET k").unwrap(), "VALUE v1");
}

#[test]
fn max_clients_counts_resp_connections_and_refuses_in_resp() {
    let _g = serial();
    let (c, resp) = resp_cluster(1, &["--max-clients", "1"]);
    c.expect_leader(LONG, "a leader");
    let addr = &resp[0];
    // wait_leader's STATUS connections are closed; hold the one slot.
    let deadline = Instant::now() + LONG;
    let mut held = loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        s.write_all(b"PING\r\n").unwrap();
        let mut got = [0u8; 7];
        if s.read_exact(&mut got).is_ok() && &got == b"+PONG\r\n" {
            break s;
        }
        assert!(Instant::now() < deadline, "the one slot never came free");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (got, closed) = send_and_read(addr, b"PING\r\n");
    assert_eq!(
        (got.as_str(), closed),
        ("-ERR max number of clients reached\r\n", true)
    );
    // The line port shares the limit.
    let mut line = Client::connect(&c.node(1).client_addr).unwrap();
    let refused = line.read_line().unwrap();
    assert!(refused.starts_with("ERR BUSY"), "{refused}");
    held.write_all(b"PING\r\n").unwrap();
    assert_eq!(read_exactly(&mut held, 7), "+PONG\r\n");
}

#[test]
fn redis_cli_authenticates_with_the_token_over_tls() {
    if !tools_present() {
        return;
    }
    let _g = serial();
    let dir = TempDir::new("resp-certs");
    let Some(certs) = Certs::make(&dir.0, 1) else {
        return; // no openssl: Certs::make says so (.ci/run installs it)
    };
    let token = dir.0.join("token");
    std::fs::write(&token, "s3cret-t0ken-0f-16-bytes\n").unwrap();
    let s = |p: std::path::PathBuf| p.display().to_string();
    let (cert, key, ca, tok) = (
        s(certs.node_cert(1)),
        s(certs.node_key(1)),
        s(certs.ca()),
        s(token),
    );
    let (c, resp) = resp_cluster(
        1,
        &[
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--auth-token-file",
            &tok,
        ],
    );
    let addr = &resp[0];
    let tls = ["--tls", "--cacert", &ca];
    let with = |extra: &[&str], cmd: &[&str]| {
        let args: Vec<&str> = tls
            .iter()
            .chain(extra)
            .chain(["--no-raw"].iter())
            .chain(cmd)
            .copied()
            .collect();
        let out = cli_output(addr, &args, b"");
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    };
    let deadline = Instant::now() + LONG;
    while with(
        &["-a", "s3cret-t0ken-0f-16-bytes", "--no-auth-warning"],
        &["SET", "k", "v"],
    ) != "OK"
    {
        assert!(Instant::now() < deadline, "never writable: {}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        with(
            &["-a", "s3cret-t0ken-0f-16-bytes", "--no-auth-warning"],
            &["GET", "k"]
        ),
        "\"v\""
    );
    assert_eq!(
        with(&[], &["GET", "k"]),
        "(error) NOAUTH Authentication required."
    );
    let wrong = with(&["-a", "nope", "--no-auth-warning"], &["GET", "k"]);
    assert!(
        !wrong.contains("\"v\""),
        "a wrong token read the key: {wrong}"
    );
    // Plain TCP on the TLS port gets nothing.
    let (got, _) = send_and_read(addr, b"PING\r\n");
    assert!(!got.contains("PONG"), "{got}");
}
