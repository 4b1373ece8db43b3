//! The retry state machine against fake nodes on 127.0.0.1: each fake
//! answers from a script, records every line it receives (with the number
//! of the connection it came on), and can drop a connection, stay silent
//! or send garbage.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// What a fake node does with one request line.
enum Act {
    Reply(&'static str),
    Bytes(Vec<u8>),
    /// Closes the connection without a reply.
    Close,
    /// Never answers (the connection stays open).
    Silent,
}

type Script = dyn Fn(usize, &str) -> Act + Send + Sync;

struct Fake {
    addr: String,
    log: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Fake {
    fn start(script: impl Fn(usize, &str) -> Act + Send + Sync + 'static) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let conns = Arc::new(AtomicUsize::new(0));
        let l2 = log.clone();
        thread::spawn(move || {
            for sock in l.incoming() {
                let Ok(sock) = sock else { return };
                let n = conns.fetch_add(1, Ordering::SeqCst);
                let (script, log) = (script.clone(), l2.clone());
                thread::spawn(move || serve(sock, n, &*script, &log));
            }
        });
        Fake { addr, log }
    }

    fn lines(&self) -> Vec<(usize, String)> {
        self.log.lock().unwrap().clone()
    }

    fn sent(&self) -> Vec<String> {
        self.lines().into_iter().map(|(_, l)| l).collect()
    }
}

fn serve(sock: TcpStream, n: usize, script: &Script, log: &Mutex<Vec<(usize, String)>>) {
    let mut w = sock.try_clone().unwrap();
    let mut r = BufReader::new(sock);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end_matches('\n').to_string();
        log.lock().unwrap().push((n, l.clone()));
        match script(n, &l) {
            Act::Reply(s) => {
                let _ = w.write_all(format!("{s}\n").as_bytes());
            }
            Act::Bytes(b) => {
                let _ = w.write_all(&b);
            }
            Act::Close => return,
            Act::Silent => thread::sleep(Duration::from_secs(30)),
        }
    }
}

/// Answers `SESSION` with session 7 and resumes it.
fn session(line: &str) -> Option<Act> {
    match line {
        "SESSION" | "SESSION 7" => Some(Act::Reply("SESSION 7")),
        _ => None,
    }
}

fn client(endpoints: &[&str]) -> Builder {
    Client::builder(endpoints.iter().map(|s| s.to_string()))
        .connect_timeout(Duration::from_millis(300))
        .request_timeout(Duration::from_millis(300))
        .deadline(Duration::from_secs(5))
}

fn owned(v: &[(usize, &str)]) -> Vec<(usize, String)> {
    v.iter().map(|(n, s)| (*n, s.to_string())).collect()
}

#[test]
fn a_write_cut_off_by_a_dropped_connection_is_resent_with_its_number_in_its_session() {
    let fake = Fake::start(|conn, line| {
        session(line).unwrap_or(match (conn, line) {
            (0, "#1 INCR c") => Act::Close,
            (_, "#1 INCR c") => Act::Reply("VALUE 1"),
            (_, "#2 INCR c") => Act::Reply("VALUE 2"),
            _ => Act::Reply("ERR BAD_REQUEST unexpected"),
        })
    });
    let mut c = client(&[&fake.addr]).build().unwrap();
    assert_eq!(c.incr("c").unwrap(), 1);
    assert_eq!(c.incr("c").unwrap(), 2);
    assert_eq!(
        fake.lines(),
        owned(&[
            (0, "SESSION"),
            (0, "#1 INCR c"),
            (1, "SESSION 7"),
            (1, "#1 INCR c"),
            (1, "#2 INCR c"),
        ])
    );
    assert_eq!(c.retries(), 1);
    assert_eq!(
        c.session(),
        Some(&Session {
            id: "7".into(),
            next_seq: 3
        })
    );
}

#[test]
fn err_timeout_then_the_original_reply_on_a_retry() {
    let puts = AtomicUsize::new(0);
    let fake = Fake::start(move |_, line| {
        session(line).unwrap_or_else(|| match line {
            "#1 PUT k v w" if puts.fetch_add(1, Ordering::SeqCst) == 0 => {
                Act::Reply("ERR TIMEOUT no answer within 5000 ms")
            }
            "#1 PUT k v w" => Act::Reply("OK"),
            _ => Act::Reply("ERR BAD_REQUEST unexpected"),
        })
    });
    let mut c = client(&[&fake.addr]).build().unwrap();
    c.put("k", "v w").unwrap();
    assert_eq!(
        fake.sent(),
        ["SESSION", "#1 PUT k v w", "SESSION 7", "#1 PUT k v w"]
    );
}

#[test]
fn a_silent_node_is_left_for_the_next_endpoint_with_the_same_number() {
    let silent = Fake::start(|_, line| session(line).unwrap_or(Act::Silent));
    let good = Fake::start(|_, line| session(line).unwrap_or(Act::Reply("DELETED")));
    let mut c = client(&[&silent.addr, &good.addr]).build().unwrap();
    let t = Instant::now();
    assert!(c.del("k").unwrap());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(silent.sent(), ["SESSION", "#1 DEL k"]);
    assert_eq!(good.sent(), ["SESSION 7", "#1 DEL k"]);
    assert_eq!(c.endpoint(), Some(good.addr.as_str()));
}

#[test]
fn session_expired_on_a_retry_is_an_unknown_outcome_and_nothing_is_resent() {
    let fake = Fake::start(|_, line| match line {
        "SESSION" => Act::Reply("SESSION 7"),
        "SESSION 7" => Act::Reply("ERR SESSION_EXPIRED session 7 is unknown"),
        "#1 PUT k v" => Act::Close,
        _ => Act::Reply("OK"),
    });
    let mut c = client(&[&fake.addr]).build().unwrap();
    let e = c.put("k", "v").unwrap_err();
    assert!(e.is_outcome_unknown(), "{e}");
    assert_eq!(e.code(), Some(&Code::SessionExpired));
    // No new session, no second PUT: the write may have been applied.
    assert_eq!(fake.sent(), ["SESSION", "#1 PUT k v", "SESSION 7"]);
    assert_eq!(c.session(), None);
}

#[test]
fn a_session_that_expired_while_idle_is_replaced_for_a_write_never_sent() {
    let opened = AtomicUsize::new(0);
    let fake = Fake::start(move |_, line| match line {
        "SESSION" if opened.fetch_add(1, Ordering::SeqCst) == 0 => Act::Reply("SESSION 7"),
        "SESSION" => Act::Reply("SESSION 8"),
        "#1 PUT k v" => Act::Reply("OK"),
        "#2 PUT k w" => Act::Reply("ERR SESSION_EXPIRED idle too long"),
        "#1 PUT k w" => Act::Reply("OK"),
        _ => Act::Reply("ERR BAD_REQUEST unexpected"),
    });
    let mut c = client(&[&fake.addr]).build().unwrap();
    c.put("k", "v").unwrap();
    c.put("k", "w").unwrap();
    assert_eq!(
        fake.sent(),
        [
            "SESSION",
            "#1 PUT k v",
            "#2 PUT k w",
            "SESSION",
            "#1 PUT k w"
        ]
    );
    assert_eq!(
        c.session(),
        Some(&Session {
            id: "8".into(),
            next_seq: 2
        })
    );
}

#[test]
fn a_write_without_an_answer_by_the_deadline_is_an_unknown_outcome_and_its_number_is_spent() {
    let fake = Fake::start(|_, line| {
        session(line).unwrap_or(match line {
            "#2 PUT k w" => Act::Reply("OK"),
            _ => Act::Reply("ERR NO_LEADER no leader known"),
        })
    });
    let mut c = client(&[&fake.addr])
        .deadline(Duration::from_millis(400))
        .build()
        .unwrap();
    let t = Instant::now();
    let e = c.put("k", "v").unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(e.is_outcome_unknown(), "{e}");
    assert_eq!(e.code(), Some(&Code::NoLeader));
    let puts: Vec<String> = fake
        .sent()
        .into_iter()
        .filter(|l| l.contains("PUT"))
        .collect();
    assert!(puts.len() >= 2, "retried: {puts:?}");
    assert!(puts.iter().all(|l| l == "#1 PUT k v"), "{puts:?}");
    c.put("k", "w").unwrap();
    assert_eq!(fake.sent().last().map(String::as_str), Some("#2 PUT k w"));
}

#[test]
fn a_refused_write_is_definite_and_not_retried() {
    let fake = Fake::start(|_, line| {
        session(line).unwrap_or(match line {
            "#1 CAS k a b" => Act::Reply("ERR BAD_REQUEST no"),
            _ => Act::Reply("MISMATCH x y"),
        })
    });
    let mut c = client(&[&fake.addr]).build().unwrap();
    let e = c.cas("k", "a", "b").unwrap_err();
    assert!(!e.is_outcome_unknown());
    assert_eq!(e.code(), Some(&Code::BadRequest));
    assert_eq!(
        c.cas("k", "a", "c").unwrap(),
        CasOutcome::Mismatch(b"x y".to_vec())
    );
    assert_eq!(fake.sent(), ["SESSION", "#1 CAS k a b", "#2 CAS k a c"]);
}

#[test]
fn without_sessions_a_write_cut_off_is_reported_and_sent_once() {
    let fake = Fake::start(|_, line| match line {
        "PUT k v" => Act::Close,
        _ => Act::Reply("ERR BAD_REQUEST unexpected"),
    });
    let mut c = client(&[&fake.addr]).sessions(false).build().unwrap();
    let e = c.put("k", "v").unwrap_err();
    assert!(e.is_outcome_unknown(), "{e}");
    assert!(matches!(&e, Error::OutcomeUnknown { last } if matches!(**last, Error::Io(_))));
    assert_eq!(fake.sent(), ["PUT k v"]);
}

#[test]
fn a_membership_change_with_an_unknown_outcome_is_not_resent() {
    let fake = Fake::start(|_, _| Act::Reply("ERR LEADER_CHANGED lost leadership"));
    let mut c = client(&[&fake.addr]).build().unwrap();
    let e = c.remove_node(2).unwrap_err();
    assert!(e.is_outcome_unknown(), "{e}");
    assert_eq!(fake.sent(), ["REMOVE_NODE 2"]);
}

#[test]
fn reads_are_retried_past_garbage_and_dropped_connections() {
    let gets = AtomicUsize::new(0);
    let fake = Fake::start(move |_, _| match gets.fetch_add(1, Ordering::SeqCst) {
        0 => Act::Bytes(b"\xff\xfe junk\n".to_vec()),
        1 => Act::Close,
        2 => Act::Reply("STATUS id=1"),
        _ => Act::Reply("VALUE a b"),
    });
    let mut c = client(&[&fake.addr]).build().unwrap();
    assert_eq!(c.get("k").unwrap(), Some(b"a b".to_vec()));
    assert_eq!(fake.sent(), ["GET k"; 4]);
    assert_eq!(c.retries(), 3);
}

#[test]
fn an_endless_reply_is_refused_at_the_line_limit() {
    let fake = Fake::start(|_, _| Act::Bytes(vec![b'x'; MAX_REPLY_LINE + 4096]));
    let mut c = client(&[&fake.addr])
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let e = c.get("k").unwrap_err();
    assert!(matches!(e, Error::Protocol(ProtocolError::TooLong)), "{e}");
}

#[test]
fn a_reply_of_the_wrong_kind_to_a_write_leaves_its_outcome_unknown() {
    let fake = Fake::start(|_, line| session(line).unwrap_or(Act::Reply("PONG")));
    let mut c = client(&[&fake.addr]).build().unwrap();
    let e = c.append("k", "v").unwrap_err();
    assert!(e.is_outcome_unknown(), "{e}");
    let e = c.get("k").unwrap_err();
    assert!(
        matches!(e, Error::Protocol(ProtocolError::Unexpected(_))),
        "{e}"
    );
}

#[test]
fn connecting_skips_an_endpoint_that_refuses() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    let fake = Fake::start(|_, _| Act::Reply("PONG"));
    let c = client(&[&dead, &fake.addr]).connect().unwrap();
    assert_eq!(c.endpoint(), Some(fake.addr.as_str()));
}

#[test]
fn the_token_goes_first_on_every_connection_and_a_wrong_one_is_definite() {
    let fake = Fake::start(|conn, line| match (conn, line) {
        (0, "AUTH s3cret") => Act::Reply("OK"),
        (0, "PING") => Act::Close,
        (_, "AUTH s3cret") => Act::Reply("OK"),
        (_, "AUTH wrong") => Act::Reply("ERR NOAUTH wrong token; closing the connection"),
        _ => Act::Reply("PONG"),
    });
    let mut c = client(&[&fake.addr]).token("s3cret").build().unwrap();
    c.ping().unwrap();
    assert_eq!(
        fake.lines(),
        owned(&[
            (0, "AUTH s3cret"),
            (0, "PING"),
            (1, "AUTH s3cret"),
            (1, "PING")
        ])
    );
    let mut c = client(&[&fake.addr]).token("wrong").build().unwrap();
    let e = c.put("k", "v").unwrap_err();
    assert_eq!(e.code(), Some(&Code::NoAuth));
    assert!(!e.is_outcome_unknown());
    assert!(client(&[&fake.addr]).token("a b").build().is_err());
}

#[test]
fn status_each_names_the_endpoints_that_did_not_answer() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    let fake = Fake::start(|_, _| {
        Act::Reply(
            "STATUS id=3 role=leader term=4 leader=3 commit=9 applied=9 last=9 snapshot=0 \
             members=1,2,3",
        )
    });
    let mut c = client(&[&fake.addr, &dead]).build().unwrap();
    let all = c.status_each();
    assert_eq!(all.len(), 2);
    let (s, _rtt) = all[0].result.as_ref().unwrap();
    assert_eq!(
        (s.id, s.leader, s.members.clone()),
        (3, Some(3), vec![1, 2, 3])
    );
    assert_eq!(all[1].endpoint, dead);
    assert!(matches!(all[1].result, Err(Error::Io(_))));
}

#[test]
fn an_invalid_request_sends_nothing() {
    let fake = Fake::start(|_, _| Act::Reply("OK"));
    let mut c = client(&[&fake.addr]).build().unwrap();
    assert!(matches!(
        c.put("a key", "v"),
        Err(Error::Invalid(Invalid::KeyCharacter))
    ));
    assert!(matches!(
        c.put("k", "two\nlines"),
        Err(Error::Invalid(Invalid::ValueCharacter))
    ));
    assert!(fake.sent().is_empty());
    assert!(Client::builder(Vec::<String>::new()).build().is_err());
}

#[test]
fn open_session_moves_on_from_a_node_without_a_leader() {
    let lost = Fake::start(|_, _| Act::Reply("ERR NO_LEADER no leader known"));
    let good = Fake::start(|_, line| session(line).unwrap_or(Act::Reply("OK")));
    let mut c = client(&[&lost.addr, &good.addr]).build().unwrap();
    assert_eq!(c.open_session().unwrap(), "7");
    c.put("k", "v").unwrap();
    assert_eq!(lost.sent(), ["SESSION"]);
    assert_eq!(good.sent(), ["SESSION", "#1 PUT k v"]);
    let mut off = client(&[&good.addr]).sessions(false).build().unwrap();
    assert!(matches!(
        off.open_session(),
        Err(Error::Invalid(Invalid::SessionsOff))
    ));
}

#[test]
fn a_membership_change_refused_by_a_removed_node_goes_to_the_next_one() {
    let removed = Fake::start(|_, _| Act::Reply("ERR REMOVED this node was removed"));
    let good = Fake::start(|_, _| Act::Reply("OK"));
    let mut c = client(&[&removed.addr, &good.addr]).build().unwrap();
    c.add_node(4, "127.0.0.1:7004").unwrap();
    assert_eq!(removed.sent(), ["ADD_NODE 4 127.0.0.1:7004"]);
    assert_eq!(good.sent(), ["ADD_NODE 4 127.0.0.1:7004"]);
}

#[test]
fn a_sessions_debug_form_never_shows_its_secret() {
    let s = Session {
        id: "42-000102030405060708090a0b0c0d0e0f".into(),
        next_seq: 3,
    };
    let shown = format!("{s:?}");
    assert!(
        shown.contains("42-<secret>") && shown.contains("next_seq: 3"),
        "{shown}"
    );
    assert!(!shown.contains("0a0b"), "{shown}");
}
