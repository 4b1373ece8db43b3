//! The metrics endpoint's request reader and parser
//! (`raftnode::metrics::http`).
//!
//! ```text
//! input := step u8 | stream
//! ```
//!
//! The stream is what a client sends to `--metrics-addr`. It is read with
//! [`read_head`] twice, in chunks of `step % 64 + 1` bytes and whole, each
//! reader ending with the end of the stream; the head it gives goes to
//! [`parse_request`], and the outcome to [`response`]. The raw stream also
//! goes to [`parse_request`] directly.
//!
//! Promises checked:
//! - nothing panics, allocates beyond [`ALLOC_LIMIT`], or hangs;
//! - the reader gives what the format says: the stream up to its first
//!   blank line when that ends within [`MAX_HEAD`] bytes, `TooLarge` when
//!   [`MAX_HEAD`] bytes hold none, else (the stream ended first) `Gone`;
//!   how the stream is chunked changes nothing;
//! - a request accepted is a `GET` or `HEAD` of `/metrics` (a query
//!   string allowed) in HTTP/1.0 or 1.1;
//! - every response is a status line, headers whose `Content-Length` is
//!   the length of the body, and that body.

use std::io::{self, Read};

use raftnode::metrics::http::{
    head_end, parse_request, read_head, response, Head, Refusal, MAX_HEAD,
};

/// The reader's buffer is [`MAX_HEAD`]; the rest is small.
pub const ALLOC_LIMIT: usize = 64 << 10;

struct Chunks<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(self.data.len()).min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// What [`read_head`] must give for `stream`.
fn expected(stream: &[u8]) -> Head {
    match head_end(&stream[..stream.len().min(MAX_HEAD)]) {
        Some(end) => Head::Complete(stream[..end].to_vec()),
        None if stream.len() >= MAX_HEAD => Head::Refused(Refusal::TooLarge),
        None => Head::Gone,
    }
}

pub fn check(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let want = expected(stream);
    let chunked = read_head(&mut Chunks {
        data: stream,
        step: usize::from(step % 64) + 1,
    });
    assert_eq!(chunked, want, "read in chunks of {}", step % 64 + 1);
    let whole = read_head(&mut Chunks {
        data: stream,
        step: usize::MAX,
    });
    assert_eq!(whole, want, "read whole");
    check_parse(stream);
    match want {
        Head::Complete(head) => check_parse(&head),
        Head::Refused(r) => check_response(Err(r)),
        Head::Gone => {}
    }
}

fn check_parse(head: &[u8]) {
    let outcome = parse_request(head);
    if let Ok(scrape) = outcome {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let method: &[u8] = if scrape.head_only { b"HEAD " } else { b"GET " };
        assert!(
            line.starts_with(method),
            "{:?}",
            String::from_utf8_lossy(line)
        );
        let rest = &line[method.len()..];
        assert!(
            rest.starts_with(b"/metrics ") || rest.starts_with(b"/metrics?"),
            "{:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    check_response(outcome);
}

fn check_response(outcome: Result<raftnode::metrics::http::Scrape, Refusal>) {
    let out = response(outcome, || "raftnode_server_term 1\n".to_string());
    let text = String::from_utf8(out).expect("a response is text");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    assert!(
        [200, 400, 404, 405, 408, 431, 505].contains(&status),
        "{status}"
    );
    let length: usize = head
        .split("\r\n")
        .find_map(|h| h.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("a Content-Length");
    let head_only = matches!(outcome, Ok(s) if s.head_only);
    assert_eq!(body.len(), if head_only { 0 } else { length });
}

/// Requests a scraper, a browser, a scanner or a broken client may send.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let requests: Vec<(&str, Vec<u8>)> = vec![
        (
            "prometheus",
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nUser-Agent: Prometheus/2.45.0\r\n\
              Accept: text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nAccept-Encoding: gzip\r\n\r\n"
                .to_vec(),
        ),
        (
            "curl",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n"
                .to_vec(),
        ),
        ("head", b"HEAD /metrics HTTP/1.0\r\n\r\n".to_vec()),
        (
            "lf_only",
            b"GET /metrics?name=x HTTP/1.1\nHost: x\n\n".to_vec(),
        ),
        ("root", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        (
            "post",
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        ),
        (
            "http2_preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        (
            "folded",
            b"GET /metrics HTTP/1.1\r\nA: b\r\n c\r\n\r\n".to_vec(),
        ),
        (
            "no_colon",
            b"GET /metrics HTTP/1.1\r\nHost x\r\n\r\n".to_vec(),
        ),
        (
            "unfinished",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec(),
        ),
        (
            "pipelined",
            b"GET /metrics HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "tls_hello",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
        ),
        ("blank_line_at_the_limit", {
            let mut r = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
            r.resize(MAX_HEAD - 4, b'a');
            r.extend_from_slice(b"\r\n\r\n");
            r
        }),
        ("blank_line_past_the_limit", {
            let mut r = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
            r.resize(MAX_HEAD - 3, b'a');
            r.extend_from_slice(b"\r\n\r\n");
            r
        }),
    ];
    requests
        .into_iter()
        .enumerate()
        .map(|(i, (name, bytes))| {
            let mut input = vec![(i * 7) as u8];
            input.extend_from_slice(&bytes);
            (name.to_string(), input)
        })
        .collect()
}
