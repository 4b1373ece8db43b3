//! The RESP port's request framer (`raftnode::resp::RespFramer`).
//!
//! The input has `client_frames`' format (a limit, then a byte stream in
//! chunks, with runs that reach the limit; see that module): the limit is
//! the largest request, 0 meaning the server's
//! [`MAX_LINE`](raftnode::protocol::MAX_LINE). The framer is driven as
//! `conn.rs` drives it: requests are taken until it has none, then the
//! next chunk is pushed; after an error nothing more is read.
//!
//! Promises checked:
//! - nothing panics, allocates beyond [`ALLOC_LIMIT`], or hangs;
//! - how the stream is chunked changes nothing: the same requests and the
//!   same error come out when it is pushed whole, and (for streams of up
//!   to 4 KiB) a byte at a time;
//! - the framer holds at most the limit (plus a header line) when it has
//!   no request to give, and that plus the chunk after a push;
//! - a request has at least one argument, and its arguments add up to at
//!   most the limit;
//! - a request re-encoded as a multibulk parses back to the same
//!   arguments, and an inline request's arguments survive it too;
//! - an error is final: the next call gives it again.

use raftnode::protocol::MAX_LINE;
use raftnode::resp::{write_array_header, write_bulk, ProtocolError, RespFramer};

use crate::client_frames::{self, chunks, run};

/// As `client_frames`: the stream and what the framer holds stay within
/// the limit plus 64 KiB, a request is a copy of part of it, and its
/// re-encoding a little more.
pub const ALLOC_LIMIT: usize = 4 * MAX_LINE;

/// Slack for a `*`/`$` header line still being received.
const HEADER_SLACK: usize = 64;

type Outcome = (Vec<Vec<Vec<u8>>>, Option<ProtocolError>);

fn framer(limit: usize) -> RespFramer {
    match limit {
        MAX_LINE => RespFramer::new(),
        _ => RespFramer::with_limit(limit),
    }
}

/// Takes requests until the framer has none; returns false after an
/// error (which is recorded).
fn take(f: &mut RespFramer, limit: usize, out: &mut Outcome) -> bool {
    loop {
        match f.next_request() {
            Some(Ok(args)) => {
                check_request(&args, limit);
                out.0.push(args);
            }
            Some(Err(e)) => {
                assert_eq!(
                    f.next_request(),
                    Some(Err(e.clone())),
                    "the error is not final"
                );
                out.1 = Some(e);
                return false;
            }
            None => {
                assert!(
                    f.held() <= limit + HEADER_SLACK,
                    "the framer holds {} bytes and no request (limit {limit})",
                    f.held()
                );
                return true;
            }
        }
    }
}

fn frame(limit: usize, stream: &[u8], ends: &[usize]) -> Outcome {
    let mut f = framer(limit);
    let mut out = (Vec::new(), None);
    let mut start = 0;
    for &end in ends {
        if !take(&mut f, limit, &mut out) {
            return out;
        }
        let chunk = &stream[start..end];
        f.push(chunk);
        assert!(
            f.held() <= limit + HEADER_SLACK + chunk.len(),
            "the framer holds {} bytes after a push of {}",
            f.held(),
            chunk.len()
        );
        start = end;
    }
    take(&mut f, limit, &mut out);
    f.clear();
    assert_eq!(f.held(), 0);
    out
}

fn check_request(args: &[Vec<u8>], limit: usize) {
    assert!(!args.is_empty(), "a request without arguments");
    let bytes: usize = args.iter().map(Vec::len).sum();
    assert!(
        bytes <= limit,
        "a request of {bytes} bytes over the limit {limit}"
    );
    let mut encoded = Vec::new();
    write_array_header(&mut encoded, args.len());
    for a in args {
        write_bulk(&mut encoded, a);
    }
    // Re-encoded, it is bigger than its arguments: parse it without a limit
    // that would refuse it.
    let mut f = RespFramer::with_limit(encoded.len());
    f.push(&encoded);
    assert_eq!(
        f.next_request(),
        Some(Ok(args.to_vec())),
        "the re-encoded request parses differently"
    );
    assert_eq!(f.next_request(), None);
}

pub fn check(data: &[u8]) {
    let (limit, stream, ends) = client_frames::decode(data);
    let chunked = frame(limit, &stream, &ends);
    let whole = frame(limit, &stream, &[stream.len()]);
    assert_eq!(
        chunked, whole,
        "chunked and whole streams frame differently"
    );
    if stream.len() <= 4096 {
        let bytes: Vec<usize> = (1..=stream.len()).collect();
        let trickled = frame(limit, &stream, &bytes);
        assert_eq!(trickled, whole, "a trickled stream frames differently");
    }
}

/// Pipelined multibulk and inline requests, trickled; Redis's malformed
/// frames; requests at and over a small limit and the server's.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let requests: &[u8] =
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n\
PING\r\nset \"a b\" 'c\\'d' \"\\x41\\n\"\r\n\r\n*0\r\n*-1\r\n*1\r\n$4\r\nQUIT\r\n";
    let mut out = Vec::new();
    let mut seed = |name: &str, bytes: Vec<u8>| out.push((name.to_string(), bytes));
    const SERVER: u8 = 0;
    const SMALL: u8 = 255;

    let mut s = vec![SMALL];
    chunks(&mut s, requests, 255);
    seed("pipelined", s);

    let mut s = vec![SMALL];
    chunks(&mut s, requests, 1);
    seed("trickled", s);

    for (name, bad) in [
        ("multibulk_too_long", &b"*20000000\r\n"[..]),
        ("expected_dollar", b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n"),
        ("negative_bulk", b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n"),
        (
            "bulk_too_long",
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n",
        ),
        (
            "bulk_not_a_number",
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n",
        ),
        (
            "unbalanced_quotes",
            b"set \"\"\"test-key\"\"\" test-value\r\nping\r\n",
        ),
        ("missing_crlf", b"*1\r\n$4\r\nPINGxx"),
    ] {
        let mut s = vec![SMALL];
        chunks(&mut s, bad, 7);
        seed(name, s);
    }

    // A SET whose value brings the request to exactly the server's limit,
    // then one byte more.
    for (name, d) in [("request_at_limit", -32i8), ("request_over_limit", -31)] {
        let mut s = vec![SERVER];
        let value_len = (MAX_LINE as isize + d as isize) as usize;
        let head = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${value_len}\r\n");
        let over = usize::from(d == -31);
        assert_eq!(head.len() + value_len + 2, MAX_LINE + over);
        chunks(&mut s, head.as_bytes(), 255);
        run(&mut s, b'v', d, 15);
        chunks(&mut s, b"\r\nPING\r\n", 255);
        seed(name, s);
    }

    // Requests of at most 16 bytes: at, under and over, cut everywhere.
    let mut s = vec![16];
    chunks(
        &mut s,
        b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        3,
    );
    seed("small_limit", s);
    out
}
