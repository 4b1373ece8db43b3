//! RESP2 on the wire: requests in, reply values out (the Redis protocol,
//! for `--resp-addr`).
//!
//! A Redis client sends each request as a *multibulk*, an array of bulk
//! strings:
//!
//! ```text
//! *<n>\r\n  then n times  $<len>\r\n<len bytes>\r\n
//! ```
//!
//! or, as `redis-cli` piped from a terminal and `telnet` do, as an *inline*
//! line: words separated by spaces, ended by `\n` (a `\r` before it is
//! ignored), with `"..."` (escapes `\n \r \t \b \a \\ \" \xHH`) and `'...'`
//! (escape `\'`) quoting as Redis's `sdssplitargs` does. An empty line and a
//! multibulk of zero or a negative count are no request at all.
//!
//! [`RespFramer`] cuts a connection's byte stream into requests as the bytes
//! arrive. It is incremental (a request cut across any number of reads is
//! parsed once, never rescanned from its start), and bounded: a multibulk
//! count over [`MAX_ARGS`], a bulk length over the request limit, and a
//! request (headers included) over the limit are refused from their header,
//! before anything is allocated for them, and a request's bytes are held
//! only once they arrived. The limit is the line port's
//! ([`MAX_LINE`](crate::protocol::MAX_LINE)), so that a value the line port
//! takes is taken here too.
//!
//! A malformed request is a [`ProtocolError`]: the server answers
//! `-ERR Protocol error: ...` and closes the connection, as Redis does,
//! since after a bad header nothing says where the next request starts.
//! The framer then reports the same error on every call.
//!
//! The `write_*` functions encode reply values.

use std::fmt;
use std::io::Write;

use crate::protocol::MAX_LINE;

/// Most arguments in one multibulk (Redis's own limit before version 7).
pub const MAX_ARGS: usize = 1024 * 1024;
/// Longest `*<n>` or `$<len>` header line, without its `\r\n`: a sign and
/// nineteen digits fit.
const MAX_HEADER: usize = 32;

/// Why a request stream cannot be parsed; [`fmt::Display`] gives Redis's
/// wording, after `Protocol error: `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// `*<n>` is not a number, or n is over [`MAX_ARGS`].
    InvalidMultibulkLength,
    /// `$<len>` is not a number, negative, or over the request limit.
    InvalidBulkLength,
    /// Inside a multibulk, an argument did not start with `$`.
    ExpectedDollar(u8),
    /// A bulk string's bytes were not followed by `\r\n`.
    MissingCrlf,
    /// A `*` or `$` header line longer than a number can be.
    HeaderTooLong,
    /// An inline line longer than the limit.
    InlineTooLong(usize),
    /// A multibulk whose bytes, headers included, exceed the limit.
    RequestTooLarge(usize),
    /// An inline line with a quote not closed, or closed and not followed
    /// by a space.
    UnbalancedQuotes,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Protocol error: ")?;
        match self {
            ProtocolError::InvalidMultibulkLength => f.write_str("invalid multibulk length"),
            ProtocolError::InvalidBulkLength => f.write_str("invalid bulk length"),
            ProtocolError::ExpectedDollar(b) => {
                write!(f, "expected '$', got '{}'", char::from(*b).escape_default())
            }
            ProtocolError::MissingCrlf => f.write_str("expected \\r\\n after a bulk string"),
            ProtocolError::HeaderTooLong => f.write_str("too big count string"),
            ProtocolError::InlineTooLong(limit) => {
                write!(f, "too big inline request (over {limit} bytes)")
            }
            ProtocolError::RequestTooLarge(limit) => {
                write!(f, "request is larger than {limit} bytes")
            }
            ProtocolError::UnbalancedQuotes => f.write_str("unbalanced quotes in request"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A multibulk being received.
#[derive(Debug)]
struct Partial {
    /// Arguments still to come.
    left: usize,
    args: Vec<Vec<u8>>,
    /// Bytes of the request so far, headers included.
    bytes: usize,
    /// The length of the bulk string whose header was read.
    bulk: Option<usize>,
}

/// What one step of the parser found.
enum Step {
    Request(Vec<Vec<u8>>),
    /// An empty inline line or an empty multibulk: nothing to run.
    Nothing,
    NeedMore,
}

/// Cuts a byte stream into RESP2 requests, as they arrive (see the module
/// docs). The caller pushes more bytes only when
/// [`next_request`](RespFramer::next_request) returns `None`; the framer
/// then holds at most the limit plus the chunk pushed next.
#[derive(Debug)]
pub struct RespFramer {
    /// The largest request, in bytes.
    limit: usize,
    buf: Vec<u8>,
    /// Bytes before `start` were parsed.
    start: usize,
    /// `buf[start..start + scanned]` holds no `\n` (an inline line in the
    /// making).
    scanned: usize,
    partial: Option<Partial>,
    failed: Option<ProtocolError>,
}

impl Default for RespFramer {
    fn default() -> RespFramer {
        RespFramer::new()
    }
}

impl RespFramer {
    /// The server's framer: requests of at most [`MAX_LINE`] bytes.
    pub fn new() -> RespFramer {
        RespFramer::with_limit(MAX_LINE)
    }

    /// A framer for requests of at most `limit` bytes (small limits let
    /// the fuzz target reach them with short inputs).
    pub fn with_limit(limit: usize) -> RespFramer {
        RespFramer {
            limit,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            partial: None,
            failed: None,
        }
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes held (see [`LineFramer::held`](crate::protocol::LineFramer::held)).
    pub fn held(&self) -> usize {
        self.buf.len()
            + self
                .partial
                .as_ref()
                .map_or(0, |p| p.args.iter().map(Vec::len).sum())
    }

    /// Drops what is held: the stream ended, and a request not complete is
    /// never run.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        self.scanned = 0;
        self.partial = None;
    }

    /// The next complete request (its arguments, at least one), or the
    /// error that ends the stream; `None` when more bytes are needed.
    pub fn next_request(&mut self) -> Option<Result<Vec<Vec<u8>>, ProtocolError>> {
        loop {
            if let Some(e) = &self.failed {
                return Some(Err(e.clone()));
            }
            match self.step() {
                Ok(Step::Request(args)) => return Some(Ok(args)),
                Ok(Step::Nothing) => {}
                Ok(Step::NeedMore) => {
                    self.compact();
                    return None;
                }
                Err(e) => {
                    self.failed = Some(e.clone());
                    self.clear();
                    return Some(Err(e));
                }
            }
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    fn step(&mut self) -> Result<Step, ProtocolError> {
        if self.partial.is_some() {
            return self.multibulk_step();
        }
        match self.buf.get(self.start) {
            None => Ok(Step::NeedMore),
            Some(b'*') => self.multibulk_header(),
            Some(_) => self.inline(),
        }
    }

    /// The number in a `*` or `$` header line at `start`, and the line's
    /// length with its `\r\n`; `None` until the line is complete.
    fn header(&self) -> Result<Option<(i64, usize)>, HeaderError> {
        let pending = &self.buf[self.start..];
        let window = &pending[..pending.len().min(MAX_HEADER + 2)];
        let Some(nl) = window.iter().position(|&b| b == b'\n') else {
            return if pending.len() > MAX_HEADER + 1 {
                Err(HeaderError::TooLong)
            } else {
                Ok(None)
            };
        };
        let text = &pending[1..nl];
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match parse_i64(text) {
            Some(n) => Ok(Some((n, nl + 1))),
            None => Err(HeaderError::NotANumber),
        }
    }

    fn multibulk_header(&mut self) -> Result<Step, ProtocolError> {
        let (n, len) = match self.header() {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(Step::NeedMore),
            Err(HeaderError::TooLong) => return Err(ProtocolError::HeaderTooLong),
            Err(HeaderError::NotANumber) => return Err(ProtocolError::InvalidMultibulkLength),
        };
        if n > MAX_ARGS as i64 {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        self.start += len;
        if n <= 0 {
            return Ok(Step::Nothing);
        }
        let n = n as usize;
        self.partial = Some(Partial {
            left: n,
            // Grows as arguments arrive; the count alone buys little.
            args: Vec::with_capacity(n.min(16)),
            bytes: len,
            bulk: None,
        });
        self.multibulk_step()
    }

    fn multibulk_step(&mut self) -> Result<Step, ProtocolError> {
        loop {
            let Some(p) = self.partial.as_ref() else {
                return Ok(Step::NeedMore);
            };
            match p.bulk {
                None => {
                    let Some(&first) = self.buf.get(self.start) else {
                        return Ok(Step::NeedMore);
                    };
                    if first != b'$' {
                        return Err(ProtocolError::ExpectedDollar(first));
                    }
                    let (n, len) = match self.header() {
                        Ok(Some(h)) => h,
                        Ok(None) => return Ok(Step::NeedMore),
                        Err(HeaderError::TooLong) => return Err(ProtocolError::HeaderTooLong),
                        Err(HeaderError::NotANumber) => {
                            return Err(ProtocolError::InvalidBulkLength)
                        }
                    };
                    if n < 0 || n as u64 > self.limit as u64 {
                        return Err(ProtocolError::InvalidBulkLength);
                    }
                    let n = n as usize;
                    let total = p.bytes + len + n + 2;
                    if total > self.limit {
                        return Err(ProtocolError::RequestTooLarge(self.limit));
                    }
                    self.start += len;
                    if let Some(p) = self.partial.as_mut() {
                        p.bytes += len;
                        p.bulk = Some(n);
                    }
                }
                Some(n) => {
                    let pending = &self.buf[self.start..];
                    if pending.len() < n + 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &pending[n..n + 2] != b"\r\n" {
                        return Err(ProtocolError::MissingCrlf);
                    }
                    let arg = pending[..n].to_vec();
                    self.start += n + 2;
                    let Some(p) = self.partial.as_mut() else {
                        return Ok(Step::NeedMore);
                    };
                    p.args.push(arg);
                    p.bytes += n + 2;
                    p.bulk = None;
                    p.left -= 1;
                    if p.left == 0 {
                        let args = self.partial.take().map(|p| p.args).unwrap_or_default();
                        return Ok(Step::Request(args));
                    }
                }
            }
        }
    }

    fn inline(&mut self) -> Result<Step, ProtocolError> {
        let pending = &self.buf[self.start..];
        let window = pending.len().min(self.limit.saturating_add(1));
        match pending[self.scanned..window]
            .iter()
            .position(|&b| b == b'\n')
        {
            Some(p) => {
                let end = self.scanned + p;
                let line = &pending[..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let args = split_inline(line)?;
                self.start += end + 1;
                self.scanned = 0;
                Ok(if args.is_empty() {
                    Step::Nothing
                } else {
                    Step::Request(args)
                })
            }
            None if pending.len() > self.limit => Err(ProtocolError::InlineTooLong(self.limit)),
            None => {
                self.scanned = window;
                Ok(Step::NeedMore)
            }
        }
    }
}

enum HeaderError {
    TooLong,
    NotANumber,
}

/// A strict decimal: an optional `-`, then digits, no leading zeros (but
/// `0`), within i64.
fn parse_i64(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
    {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Splits an inline line into arguments, with Redis's quoting rules.
pub fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => i = double_quoted(line, i + 1, &mut arg)?,
            b'\'' => i = single_quoted(line, i + 1, &mut arg)?,
            _ => {
                while i < line.len() && !is_space(line[i]) {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// A closing quote at `i` must be followed by a space or the end.
fn after_quote(line: &[u8], i: usize) -> Result<usize, ProtocolError> {
    match line.get(i + 1) {
        None => Ok(i + 1),
        Some(&b) if is_space(b) => Ok(i + 1),
        Some(_) => Err(ProtocolError::UnbalancedQuotes),
    }
}

fn double_quoted(line: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        match line.get(i) {
            None => return Err(ProtocolError::UnbalancedQuotes),
            Some(b'"') => return after_quote(line, i),
            Some(b'\\') if line.get(i + 1) == Some(&b'x') => {
                let hex = line
                    .get(i + 2)
                    .and_then(|&h| hex_digit(h))
                    .zip(line.get(i + 3).and_then(|&l| hex_digit(l)));
                match hex {
                    Some((h, l)) => {
                        arg.push(h * 16 + l);
                        i += 4;
                    }
                    None => {
                        arg.push(b'x');
                        i += 2;
                    }
                }
            }
            Some(b'\\') if i + 1 < line.len() => {
                arg.push(match line[i + 1] {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => other,
                });
                i += 2;
            }
            Some(&b) => {
                arg.push(b);
                i += 1;
            }
        }
    }
}

fn single_quoted(line: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        match line.get(i) {
            None => return Err(ProtocolError::UnbalancedQuotes),
            Some(b'\'') => return after_quote(line, i),
            Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                arg.push(b'\'');
                i += 2;
            }
            Some(&b) => {
                arg.push(b);
                i += 1;
            }
        }
    }
}

/// `+<text>\r\n`; `\r` and `\n` in `text` become spaces.
pub fn write_simple(out: &mut Vec<u8>, text: &str) {
    out.push(b'+');
    push_line_text(out, text);
}

/// `-<text>\r\n`; `\r` and `\n` in `text` become spaces.
pub fn write_error(out: &mut Vec<u8>, text: &str) {
    out.push(b'-');
    push_line_text(out, text);
}

fn push_line_text(out: &mut Vec<u8>, text: &str) {
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// `:<n>\r\n`.
pub fn write_int(out: &mut Vec<u8>, n: i64) {
    let _ = write!(out, ":{n}\r\n");
}

/// `$<len>\r\n<bytes>\r\n`.
pub fn write_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    let _ = write!(out, "${}\r\n", bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// The null bulk string, `$-1\r\n`.
pub fn write_nil(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// `*<n>\r\n`, the header of an array of n values that follow.
pub fn write_array_header(out: &mut Vec<u8>, n: usize) {
    let _ = write!(out, "*{n}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(f: &mut RespFramer) -> Vec<Result<Vec<Vec<u8>>, ProtocolError>> {
        let mut out = Vec::new();
        while let Some(r) = f.next_request() {
            let stop = r.is_err();
            out.push(r);
            if stop {
                break;
            }
        }
        out
    }

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn one_error(bytes: &[u8]) -> ProtocolError {
        let mut f = RespFramer::new();
        f.push(bytes);
        match all(&mut f).pop() {
            Some(Err(e)) => e,
            other => panic!("{:?}: expected an error, got {other:?}", bytes),
        }
    }

    #[test]
    fn multibulk_and_inline_requests_pipeline() {
        let mut f = RespFramer::new();
        f.push(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nset a \"b c\"\n*1\r\n$4\r\nPI");
        assert_eq!(
            all(&mut f),
            vec![
                Ok(args(&["GET", "k"])),
                Ok(args(&["PING"])),
                Ok(args(&["set", "a", "b c"]))
            ]
        );
        f.push(b"NG\r\n");
        assert_eq!(all(&mut f), vec![Ok(args(&["PING"]))]);
        assert_eq!(f.held(), 0);
    }

    #[test]
    fn a_request_trickled_a_byte_at_a_time_comes_out_once() {
        let stream = b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\nECHO hi\r\n";
        let mut f = RespFramer::new();
        let mut got = Vec::new();
        for b in stream {
            f.push(&[*b]);
            got.extend(all(&mut f));
        }
        assert_eq!(
            got,
            vec![
                Ok(vec![b"SET".to_vec(), b"k\r\n".to_vec(), vec![]]),
                Ok(args(&["ECHO", "hi"]))
            ]
        );
    }

    #[test]
    fn binary_bulk_strings_are_kept_whole() {
        let mut f = RespFramer::new();
        f.push(b"*2\r\n$4\r\n\0\r\n\xff\r\n$0\r\n\r\n");
        assert_eq!(all(&mut f), vec![Ok(vec![b"\0\r\n\xff".to_vec(), vec![]])]);
    }

    // The cases of Redis's tests/unit/protocol.tcl, and their answers.
    #[test]
    fn empty_queries_and_empty_or_negative_multibulks_are_skipped() {
        let mut f = RespFramer::new();
        f.push(b"\r\n\n   \r\n*0\r\n*-10\r\n*-1\r\nPING\r\n");
        assert_eq!(all(&mut f), vec![Ok(args(&["PING"]))]);
    }

    #[test]
    fn out_of_range_multibulk_length_is_refused() {
        assert_eq!(
            one_error(b"*20000000\r\n"),
            ProtocolError::InvalidMultibulkLength
        );
        assert_eq!(
            one_error(b"*3000000000\r\n"),
            ProtocolError::InvalidMultibulkLength
        );
        assert_eq!(
            one_error(b"*1048577\r\n"),
            ProtocolError::InvalidMultibulkLength
        );
        assert_eq!(one_error(b"*x\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(one_error(b"*\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(one_error(b"*+1\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(one_error(b"*01\r\n"), ProtocolError::InvalidMultibulkLength);
    }

    #[test]
    fn wrong_multibulk_payload_header_is_refused() {
        let e = one_error(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n");
        assert_eq!(e, ProtocolError::ExpectedDollar(b'f'));
        assert_eq!(e.to_string(), "Protocol error: expected '$', got 'f'");
        assert_eq!(
            one_error(b"*1\r\nfoo\r\n"),
            ProtocolError::ExpectedDollar(b'f')
        );
    }

    #[test]
    fn negative_out_of_range_and_non_number_bulk_lengths_are_refused() {
        for bad in [&b"$-10"[..], b"$2000000000", b"$blabla", b"$", b"$-1"] {
            let mut req = b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n".to_vec();
            req.extend_from_slice(bad);
            req.extend_from_slice(b"\r\n");
            assert_eq!(one_error(&req), ProtocolError::InvalidBulkLength, "{bad:?}");
        }
        let over = format!("*1\r\n${}\r\n", MAX_LINE + 1);
        assert_eq!(one_error(over.as_bytes()), ProtocolError::InvalidBulkLength);
    }

    #[test]
    fn a_request_over_the_limit_is_refused_from_its_header() {
        // Each argument fits; together they do not. Nothing but headers
        // was sent: the refusal does not wait for (or hold) the data.
        let header = format!("*2\r\n${}\r\n", MAX_LINE - 20);
        let mut f = RespFramer::new();
        f.push(header.as_bytes());
        assert_eq!(all(&mut f), vec![]);
        f.push(&vec![b'v'; MAX_LINE - 20]);
        f.push(b"\r\n$100\r\n");
        assert_eq!(
            all(&mut f),
            vec![Err(ProtocolError::RequestTooLarge(MAX_LINE))]
        );
        assert_eq!(f.held(), 0);
        // The same error on every later call.
        f.push(b"PING\r\n");
        assert_eq!(
            f.next_request(),
            Some(Err(ProtocolError::RequestTooLarge(MAX_LINE)))
        );
    }

    #[test]
    fn a_value_of_the_line_ports_limit_fits() {
        let value = vec![b'v'; crate::protocol::MAX_VALUE];
        let mut req = format!("*3\r\n$3\r\nSET\r\n$1024\r\n{}\r\n", "k".repeat(1024)).into_bytes();
        req.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
        req.extend_from_slice(&value);
        req.extend_from_slice(b"\r\n");
        let mut f = RespFramer::new();
        f.push(&req);
        let got = all(&mut f);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().unwrap()[2], value);
    }

    #[test]
    fn bulk_data_must_end_in_crlf() {
        assert_eq!(one_error(b"*1\r\n$4\r\nPINGxx"), ProtocolError::MissingCrlf);
        assert_eq!(
            one_error(b"*1\r\n$1\r\nabc\r\n"),
            ProtocolError::MissingCrlf
        );
    }

    #[test]
    fn header_lines_are_bounded() {
        assert_eq!(
            one_error(&[b"*".as_slice(), &[b'1'; 40]].concat()),
            ProtocolError::HeaderTooLong
        );
        assert_eq!(
            one_error(&[b"*1\r\n$".as_slice(), &[b'1'; 40]].concat()),
            ProtocolError::HeaderTooLong
        );
    }

    #[test]
    fn inline_lines_are_bounded() {
        let mut f = RespFramer::with_limit(8);
        f.push(b"PING abc\nPING abcd");
        assert_eq!(all(&mut f)[0], Ok(args(&["PING", "abc"])));
        f.push(b"e");
        assert_eq!(f.next_request(), Some(Err(ProtocolError::InlineTooLong(8))));
    }

    #[test]
    fn unbalanced_quotes_are_refused() {
        assert_eq!(
            one_error(b"set \"\"\"test-key\"\"\" test-value\r\nping\r\n"),
            ProtocolError::UnbalancedQuotes
        );
        assert_eq!(one_error(b"set \"k v\n"), ProtocolError::UnbalancedQuotes);
        assert_eq!(one_error(b"set 'k v\n"), ProtocolError::UnbalancedQuotes);
        assert_eq!(one_error(b"set 'k'v\n"), ProtocolError::UnbalancedQuotes);
    }

    #[test]
    fn inline_quoting_follows_redis() {
        assert_eq!(
            split_inline(br#"set "a\x41\n\"" 'it\'s' plain  "" "\xZZ""#),
            Ok(vec![
                b"set".to_vec(),
                b"aA\n\"".to_vec(),
                b"it's".to_vec(),
                b"plain".to_vec(),
                vec![],
                b"xZZ".to_vec()
            ])
        );
    }

    #[test]
    fn replies_encode_as_resp2() {
        let mut out = Vec::new();
        write_simple(&mut out, "OK");
        write_error(&mut out, "ERR bad\r\nthing");
        write_int(&mut out, -3);
        write_bulk(&mut out, b"a\r\nb");
        write_nil(&mut out);
        write_array_header(&mut out, 2);
        assert_eq!(
            out,
            b"+OK\r\n-ERR bad  thing\r\n:-3\r\n$4\r\na\r\nb\r\n$-1\r\n*2\r\n".to_vec()
        );
    }
}
