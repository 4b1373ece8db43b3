//! The `--metrics-addr` server: `GET /metrics` over HTTP/1.1, on threads
//! of its own: one accepts, and [`MAX_SCRAPERS`] serve a connection each,
//! so a slow client holds up no other scrape. A connection that comes
//! while [`MAX_SCRAPERS`] are being served is answered `503` at once (one
//! non-blocking write) and closed: concurrency stays bounded, and a
//! scraper never waits behind slow clients.
//!
//! Each connection gets one response and is closed (`Connection: close`;
//! Prometheus opens a new one per scrape). Whatever a client sends, the
//! node only spends bounded work on it:
//! - the request head (request line and headers) is at most [`MAX_HEAD`]
//!   bytes, else `431`; a body is never read;
//! - the whole head must arrive within [`REQUEST_TIMEOUT`], else `408`; the
//!   whole response must be taken within [`WRITE_TIMEOUT`] (a deadline for
//!   all of it, not for each write), else the connection is dropped;
//! - a malformed head gets `400`, an HTTP version other than 1.0 and 1.1
//!   `505`, a path other than `/metrics` `404`, a method other than `GET`
//!   or `HEAD` `405`.
//!
//! [`parse_request`] and [`read_head`] are the parts that read outside
//! bytes; both are fuzzed (`tests/fuzz`, target `http_request`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use log::{debug, info};

use super::text::CONTENT_TYPE;
use super::{Metrics, Scraped};

/// Longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 << 10;
/// How long a client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once, at most.
pub const MAX_SCRAPERS: usize = 8;

/// Why a request is not answered with the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The head is not HTTP: `400`.
    Malformed(&'static str),
    /// An HTTP version other than 1.0 or 1.1: `505`.
    Version,
    /// Not `/metrics`: `404`.
    NotFound,
    /// Not `GET` or `HEAD`: `405`.
    Method,
    /// The head is over [`MAX_HEAD`]: `431`.
    TooLarge,
    /// The head did not arrive in time: `408`.
    Timeout,
    /// Every serving thread is busy: `503`, with `Retry-After: 1`.
    Busy,
}

impl Refusal {
    /// Status code and reason phrase.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::Malformed(_) => (400, "Bad Request"),
            Refusal::Version => (505, "HTTP Version Not Supported"),
            Refusal::NotFound => (404, "Not Found"),
            Refusal::Method => (405, "Method Not Allowed"),
            Refusal::TooLarge => (431, "Request Header Fields Too Large"),
            Refusal::Timeout => (408, "Request Timeout"),
            Refusal::Busy => (503, "Service Unavailable"),
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Refusal::Malformed(why) => why,
            Refusal::Version => "only HTTP/1.0 and HTTP/1.1 are spoken",
            Refusal::NotFound => "only /metrics is served",
            Refusal::Method => "only GET and HEAD are allowed",
            Refusal::TooLarge => "the request head is over 8 KiB",
            Refusal::Timeout => "the request head did not arrive in time",
            Refusal::Busy => "every metrics thread is busy with other clients; try again",
        }
    }
}

/// A request for the metrics: whether the body is wanted (`GET`) or only
/// the head (`HEAD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scrape {
    pub head_only: bool,
}

/// Where the head ends in `buf`: the index just past the blank line
/// (`\r\n\r\n`, or `\n\n` from a lenient client), if it is there.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(pos) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + pos;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

/// A token character of RFC 9110 (methods and header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a request head (up to and including its blank line) and decides
/// whether it asks for the metrics.
pub fn parse_request(head: &[u8]) -> Result<Scrape, Refusal> {
    if head.len() > MAX_HEAD {
        return Err(Refusal::TooLarge);
    }
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed(
            "the request line is not METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Refusal::Malformed("the method is not a token"));
    }
    if !target.starts_with(b"/") || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(Refusal::Malformed("the target is not an absolute path"));
    }
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => {}
        v if v.len() == 8
            && v.starts_with(b"HTTP/")
            && v[5].is_ascii_digit()
            && v[6] == b'.'
            && v[7].is_ascii_digit() =>
        {
            return Err(Refusal::Version)
        }
        _ => return Err(Refusal::Malformed("the version is not HTTP/x.y")),
    }
    for line in lines {
        if line.is_empty() {
            break; // the blank line ends the head
        }
        check_header(line)?;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path != b"/metrics" {
        return Err(Refusal::NotFound);
    }
    match method {
        b"GET" => Ok(Scrape { head_only: false }),
        b"HEAD" => Ok(Scrape { head_only: true }),
        _ => Err(Refusal::Method),
    }
}

/// A header line is `name: value`, the name a token; a line folded onto
/// the one before (leading whitespace) is refused, as RFC 9112 allows.
fn check_header(line: &[u8]) -> Result<(), Refusal> {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(Refusal::Malformed("a header line has no colon"));
    };
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(Refusal::Malformed("a header name is not a token"));
    }
    let value = &line[colon + 1..];
    if value.iter().any(|&b| b == 0 || b == b'\r') {
        return Err(Refusal::Malformed("a header value holds a NUL or a CR"));
    }
    Ok(())
}

/// What reading a request head gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// The head, up to and including its blank line.
    Complete(Vec<u8>),
    /// Refused before the head was complete (too large, too slow).
    Refused(Refusal),
    /// The client closed (or the connection failed) first: nothing to answer.
    Gone,
}

/// Reads a request head from `r`, holding at most [`MAX_HEAD`] bytes.
/// A read that times out (`WouldBlock`/`TimedOut`, as a socket with a read
/// timeout reports it) refuses the request with [`Refusal::Timeout`].
pub fn read_head<R: Read>(r: &mut R) -> Head {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        if len == MAX_HEAD {
            return Head::Refused(Refusal::TooLarge);
        }
        let n = match r.read(&mut buf[len..]) {
            Ok(0) => return Head::Gone,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Head::Refused(Refusal::Timeout)
            }
            Err(_) => return Head::Gone,
        };
        // A blank line may straddle the two reads: look from a little
        // before the new bytes.
        let from = len.saturating_sub(3);
        len += n;
        if let Some(end) = head_end(&buf[from..len]) {
            buf.truncate(from + end);
            return Head::Complete(buf);
        }
    }
}

/// The response to a request: the metrics, or a refusal.
pub fn response(outcome: Result<Scrape, Refusal>, body: impl FnOnce() -> String) -> Vec<u8> {
    let (status, reason, content_type, body, head_only, allow) = match outcome {
        Ok(s) => (200, "OK", CONTENT_TYPE, body(), s.head_only, false),
        Err(r) => {
            let (code, reason) = r.status();
            let text = format!("{code} {reason}: {}\n", r.explain());
            (
                code,
                reason,
                "text/plain; charset=utf-8",
                text,
                false,
                r == Refusal::Method,
            )
        }
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    if allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    if status == 503 {
        out.push_str("Retry-After: 1\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Reads from a socket until a deadline for the whole read, not for each
/// call.
struct Before<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for Before<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut s: &TcpStream = self.stream;
        s.read(buf)
    }
}

/// Starts serving `GET /metrics` on `listener`; `scraped` reads the
/// values that are read at scrape rather than counted.
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    scraped: impl Fn() -> Scraped + Send + Sync + 'static,
) -> io::Result<()> {
    info!(
        "serving metrics on http://{}/metrics",
        listener.local_addr()?
    );
    let scraped: Arc<dyn Fn() -> Scraped + Send + Sync> = Arc::new(scraped);
    // Connections handed to the serving threads and not yet done with:
    // at most MAX_SCRAPERS, so the queue never holds one that must wait.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(MAX_SCRAPERS);
    for i in 0..MAX_SCRAPERS {
        let (rx, metrics, scraped) = (rx.clone(), metrics.clone(), scraped.clone());
        let in_flight = in_flight.clone();
        thread::Builder::new()
            .name(format!("metrics-{i}"))
            .stack_size(256 << 10)
            .spawn(move || {
                for stream in rx.iter() {
                    serve_one(stream, &metrics, &*scraped);
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                }
            })?;
    }
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) if in_flight.load(Ordering::Acquire) >= MAX_SCRAPERS => {
                        crate::warn_every!(
                            "metrics-busy",
                            "{MAX_SCRAPERS} metrics clients are being served; \
                             answering another with 503"
                        );
                        busy(s);
                    }
                    Ok(s) => {
                        in_flight.fetch_add(1, Ordering::AcqRel);
                        // Never full: at most MAX_SCRAPERS are in flight.
                        if let Err(TrySendError::Full(s) | TrySendError::Disconnected(s)) =
                            tx.try_send(s)
                        {
                            in_flight.fetch_sub(1, Ordering::AcqRel);
                            busy(s);
                        }
                    }
                    Err(e) => {
                        crate::warn_every!(
                            "metrics-accept",
                            "accepting a metrics client failed: {e}"
                        );
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(())
}

/// Answers `503` with one non-blocking write (the whole response fits in
/// any socket buffer) and closes: the accepting thread never waits.
fn busy(stream: TcpStream) {
    let out = response(Err(Refusal::Busy), String::new);
    if stream.set_nonblocking(true).is_ok() {
        let _ = (&stream).write(&out);
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Writes all of `bytes` before `deadline` (for the whole write, not for
/// each call); gives up at the deadline.
fn write_before(stream: &TcpStream, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match (&*stream).write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn serve_one(stream: TcpStream, metrics: &Metrics, scraped: &dyn Fn() -> Scraped) {
    let outcome = match read_head(&mut Before {
        stream: &stream,
        deadline: Instant::now() + REQUEST_TIMEOUT,
    }) {
        Head::Complete(head) => parse_request(&head),
        Head::Refused(r) => Err(r),
        Head::Gone => return,
    };
    if let Err(r) = outcome {
        debug!("metrics request refused: {r:?}");
    }
    let out = response(outcome, || metrics.render(&scraped()));
    if let Err(e) = write_before(&stream, &out, Instant::now() + WRITE_TIMEOUT) {
        debug!("metrics response not taken: {e}");
    }
    let _ = stream.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Scrape, Refusal> {
        parse_request(s.as_bytes())
    }

    const GET: Scrape = Scrape { head_only: false };

    #[test]
    fn a_prometheus_scrape_is_accepted() {
        let req = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nUser-Agent: Prometheus/2.45.0\r\n\
                   Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\
                   Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n";
        assert_eq!(parse(req), Ok(GET));
        assert_eq!(parse("GET /metrics HTTP/1.0\n\n"), Ok(GET));
        assert_eq!(parse("GET /metrics?x=1 HTTP/1.1\r\n\r\n"), Ok(GET));
        assert_eq!(
            parse("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Ok(Scrape { head_only: true })
        );
    }

    #[test]
    fn other_paths_are_not_found() {
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n"), Err(Refusal::NotFound));
        assert_eq!(
            parse("GET /metricsx HTTP/1.1\r\n\r\n"),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            parse("GET /metrics/ HTTP/1.1\r\n\r\n"),
            Err(Refusal::NotFound)
        );
        assert_eq!(
            parse("POST /other HTTP/1.1\r\n\r\n"),
            Err(Refusal::NotFound)
        );
    }

    #[test]
    fn other_methods_are_not_allowed() {
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "get"] {
            assert_eq!(
                parse(&format!("{m} /metrics HTTP/1.1\r\n\r\n")),
                Err(Refusal::Method),
                "{m}"
            );
        }
        let r = response(Err(Refusal::Method), String::new);
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");
    }

    #[test]
    fn other_versions_are_not_supported() {
        assert_eq!(
            parse("GET /metrics HTTP/2.0\r\n\r\n"),
            Err(Refusal::Version)
        );
        assert_eq!(
            parse("GET /metrics HTTP/0.9\r\n\r\n"),
            Err(Refusal::Version)
        );
    }

    #[test]
    fn malformed_heads_are_bad_requests() {
        for req in [
            "",
            "\r\n\r\n",
            "GET\r\n\r\n",
            "GET /metrics\r\n\r\n",
            "GET  /metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1 extra\r\n\r\n",
            "GET metrics HTTP/1.1\r\n\r\n",
            "GET http://host/metrics HTTP/1.1\r\n\r\n",
            "G(T /metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1x\r\n\r\n",
            "GET /metrics FTP/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            "GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost: a\r\n  folded\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost: a\0b\r\n\r\n",
            "GET /m\u{e9}trics HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(req), Err(Refusal::Malformed(_))),
                "{req:?} gave {:?}",
                parse(req)
            );
        }
        assert!(
            parse_request(b"GET /metrics HTTP/1.1\r\nX: \xff\xfe\r\nY:\x01\r\n\r\n") == Ok(GET),
            "header values are not required to be text"
        );
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b"\n\n"), Some(2));
        assert_eq!(head_end(b""), None);
    }

    /// Gives its bytes a few at a time, then a timeout or the end.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        then_timeout: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                return if self.then_timeout {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(0)
                };
            }
            let n = self.step.min(self.data.len()).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_head_arriving_in_pieces_is_read_whole_and_no_further() {
        let req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nBODY";
        for step in 1..req.len() {
            let mut r = Trickle {
                data: req,
                step,
                then_timeout: true,
            };
            let Head::Complete(head) = read_head(&mut r) else {
                panic!("step {step}")
            };
            assert_eq!(head, &req[..req.len() - 4], "step {step}");
        }
    }

    #[test]
    fn a_head_over_the_limit_is_too_large() {
        let mut req = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        req.resize(MAX_HEAD + 100, b'a');
        let mut r = Trickle {
            data: &req,
            step: 1000,
            then_timeout: true,
        };
        assert_eq!(read_head(&mut r), Head::Refused(Refusal::TooLarge));
        assert_eq!(parse_request(&req), Err(Refusal::TooLarge));
    }

    #[test]
    fn a_slow_head_times_out_and_a_closed_one_is_gone() {
        let mut r = Trickle {
            data: b"GET /metrics HTTP/1.1\r\n",
            step: 5,
            then_timeout: true,
        };
        assert_eq!(read_head(&mut r), Head::Refused(Refusal::Timeout));
        let mut r = Trickle {
            data: b"GET /metrics HTTP/1.1\r\n",
            step: 5,
            then_timeout: false,
        };
        assert_eq!(read_head(&mut r), Head::Gone);
    }

    #[test]
    fn responses_say_their_length_and_close() {
        let ok = String::from_utf8(response(Ok(GET), || "a 1\n".into())).unwrap();
        assert_eq!(
            ok,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 4\r\nConnection: close\r\n\r\na 1\n"
        );
        let head =
            String::from_utf8(response(Ok(Scrape { head_only: true }), || "a 1\n".into())).unwrap();
        assert!(
            head.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
        for (r, code) in [
            (Refusal::NotFound, "404"),
            (Refusal::TooLarge, "431"),
            (Refusal::Timeout, "408"),
            (Refusal::Version, "505"),
            (Refusal::Malformed("x"), "400"),
        ] {
            let text = String::from_utf8(response(Err(r), || unreachable!())).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {code} ")), "{text}");
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.contains(&format!("Content-Length: {}\r\n", body.len())),
                "{text}"
            );
        }
    }

    #[test]
    fn a_busy_answer_is_a_503_that_says_when_to_retry() {
        let out = String::from_utf8(response(Err(Refusal::Busy), String::new)).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{out}"
        );
        assert!(out.contains("\r\nRetry-After: 1\r\n"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        assert!(out.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
