//! The client server's line framer (`raftnode::protocol::LineFramer`).
//!
//! The input is a line limit, a client's byte stream, and the way it
//! arrives: a list of chunks, each pushed into the framer as the server
//! pushes what one read gave it.
//!
//! ```text
//! input := limit u8 | op*
//! limit    0: the server's MAX_LINE; n: lines of at most n bytes
//! op    := n u8 (1..=255) | n bytes      a chunk of these bytes (fewer if the input ends)
//!        | 0 u8 | byte u8 | d i8 | p u8  limit + d copies of `byte` (none if that is
//!                                        below 0), in chunks of (p + 1) * unit bytes,
//!                                        unit = limit / 256 rounded up
//! ```
//!
//! The framer is the server's, with the limit as its one parameter: small
//! limits let short inputs reach the edge of a line at every position,
//! at fuzzing speed; runs reach [`MAX_LINE`] itself. The stream stops at
//! the limit plus [`SLACK`] bytes: room for a line at the limit and the
//! lines after it, for one line too long, or for a million empty lines
//! (what found the framer's quadratic drain). The framer is driven as
//! `conn.rs` drives it: lines are taken until it has none, then the next
//! chunk is pushed; after [`Framed::TooLong`] nothing more is read (the
//! server answers it and closes); at the end of the stream what is left
//! is dropped.
//!
//! Promises checked:
//! - nothing panics, allocates beyond [`ALLOC_LIMIT`], or hangs;
//! - the lines are those of a plain split of the stream at `\n`, in order,
//!   up to the first line longer than the limit (terminated or not), which
//!   is reported too long; an unterminated last line is no line;
//! - how the stream is chunked changes nothing: the same lines come out
//!   when it is pushed whole (checked for streams of up to twice
//!   [`SLACK`], all those of the small limits: a megabyte stream spends
//!   its time in one pass, not two);
//! - the framer holds at most the limit when it has no line to give, and
//!   the limit plus the chunk after a push;
//! - each line then goes through `client_line`'s checks (parse, limits,
//!   encodings, a one-line reply), once for a run of equal lines.

use raftnode::protocol::{Framed, LineFramer, MAX_LINE};

use crate::client_line;

/// The stream is at most `MAX_LINE + SLACK` bytes, and so is what the
/// framer holds; its buffer, doubling as it grows, stays within twice
/// that, and a line is a copy of part of the stream. Nothing needs a single
/// allocation over this.
pub const ALLOC_LIMIT: usize = 4 * MAX_LINE;

/// How far a stream may go past its line limit.
pub const SLACK: usize = 64 << 10;

/// One op of the input.
enum Op<'a> {
    Bytes(&'a [u8]),
    Run {
        byte: u8,
        count: usize,
        piece: usize,
    },
}

impl Op<'_> {
    fn len(&self) -> usize {
        match self {
            Op::Bytes(b) => b.len(),
            Op::Run { count, .. } => *count,
        }
    }
}

fn ops(mut data: &[u8], limit: usize) -> impl Iterator<Item = Op<'_>> {
    let unit = limit.div_ceil(256).max(1);
    std::iter::from_fn(move || {
        let (&op, rest) = data.split_first()?;
        data = rest;
        if op > 0 {
            let (bytes, rest) = data.split_at((op as usize).min(data.len()));
            data = rest;
            return Some(Op::Bytes(bytes));
        }
        let (&[byte, d, p], rest) = data.split_first_chunk::<3>()?;
        data = rest;
        Some(Op::Run {
            byte,
            count: limit.saturating_add_signed(d as i8 as isize),
            piece: (p as usize + 1) * unit,
        })
    })
}

/// Decodes the input: the limit, the stream, and where each chunk of it
/// ends.
pub(crate) fn decode(data: &[u8]) -> (usize, Vec<u8>, Vec<usize>) {
    let Some((&limit, data)) = data.split_first() else {
        return (MAX_LINE, Vec::new(), Vec::new());
    };
    let limit = match limit {
        0 => MAX_LINE,
        n => n as usize,
    };
    let max_stream = limit + SLACK;
    let total = ops(data, limit).map(|op| op.len()).sum::<usize>();
    let total = total.min(max_stream);
    let mut stream = Vec::with_capacity(total);
    let mut ends = Vec::new();
    for op in ops(data, limit) {
        let start = stream.len();
        let n = op.len().min(total - start);
        match op {
            Op::Bytes(bytes) => stream.extend_from_slice(&bytes[..n]),
            Op::Run { byte, piece, .. } => {
                stream.resize(start + n, byte);
                ends.extend((start..start + n).step_by(piece).skip(1));
            }
        }
        if n > 0 {
            ends.push(stream.len());
        }
    }
    (limit, stream, ends)
}

/// The plain split the framer must agree with: the lines of the stream up
/// to the first one longer than `limit`; then [`Split::too_long`] says
/// whether it stopped at one.
struct Split<'a> {
    limit: usize,
    rest: Option<&'a [u8]>,
    too_long: bool,
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest.take()?;
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) if end <= self.limit => {
                self.rest = Some(&rest[end + 1..]);
                Some(&rest[..end])
            }
            Some(_) => {
                self.too_long = true;
                None
            }
            None => {
                self.too_long = rest.len() > self.limit;
                None
            }
        }
    }
}

/// Takes lines until the framer has none; false after a too-long line.
fn take_lines(framer: &mut LineFramer, limit: usize, on_line: &mut impl FnMut(&[u8])) -> bool {
    loop {
        match framer.next_line() {
            Some(Framed::Line(line)) => on_line(&line),
            Some(Framed::TooLong) => return false,
            None => {
                assert!(
                    framer.held() <= limit,
                    "the framer holds {} bytes and no line",
                    framer.held()
                );
                return true;
            }
        }
    }
}

/// Pushes the chunks that end at `ends` as the server pushes what it
/// reads, and gives each line to `on_line`; returns whether it stopped at
/// a line too long.
fn frame(limit: usize, stream: &[u8], ends: &[usize], mut on_line: impl FnMut(&[u8])) -> bool {
    let mut framer = match limit {
        MAX_LINE => LineFramer::new(),
        _ => LineFramer::with_limit(limit),
    };
    let mut start = 0;
    for &end in ends {
        if !take_lines(&mut framer, limit, &mut on_line) {
            return true;
        }
        let chunk = &stream[start..end];
        framer.push(chunk);
        assert!(
            framer.held() <= limit + chunk.len(),
            "the framer holds {} bytes after a push of {}",
            framer.held(),
            chunk.len()
        );
        start = end;
    }
    if !take_lines(&mut framer, limit, &mut on_line) {
        return true;
    }
    framer.clear();
    assert_eq!(framer.held(), 0);
    false
}

/// `a == b`, without calling `memcmp` for empty lines. An empty `Vec`'s
/// pointer is dangling, and on the development machine glibc's AVX-512
/// `memcmp` took 70 ns a call with it (7 ns with a real pointer; its code
/// loads through the pointer under a zero mask): a run of empty lines spent
/// most of its time there.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// Frames the stream with these chunk ends and compares every line with
/// the plain split; `check_line` is called on each.
fn agrees(
    limit: usize,
    stream: &[u8],
    ends: &[usize],
    how: &str,
    mut check_line: impl FnMut(&[u8]),
) {
    let mut expected = Split {
        limit,
        rest: Some(stream),
        too_long: false,
    };
    let mut n = 0;
    let too_long = frame(limit, stream, ends, |line| {
        let want = expected.next();
        assert!(
            want.is_some_and(|want| same(want, line)),
            "{how}: line {n} is {} bytes, the plain split's {:?}",
            line.len(),
            want.map(<[u8]>::len)
        );
        check_line(line);
        n += 1;
    });
    let more = expected.next().map(<[u8]>::len);
    assert_eq!(more, None, "{how}: a line is missing after line {n}");
    assert_eq!(too_long, expected.too_long, "{how}: after {n} lines");
}

pub fn check(data: &[u8]) {
    let (limit, stream, ends) = decode(data);
    // A line equal to the one before it is checked once: the check of a
    // line does not depend on what came before, and a run of a million
    // empty lines would spend most of its time checking the same one.
    let mut last: Option<Vec<u8>> = None;
    agrees(limit, &stream, &ends, "in chunks", |line| {
        if !last.as_deref().is_some_and(|last| same(last, line)) {
            client_line::check_line(line);
            last = Some(line.to_vec());
        }
    });
    if stream.len() <= 2 * SLACK {
        agrees(limit, &stream, &[stream.len()], "pushed whole", |_| {});
    }
}

/// Appends `bytes` as chunks of at most `piece` bytes.
pub(crate) fn chunks(out: &mut Vec<u8>, bytes: &[u8], piece: usize) {
    for c in bytes.chunks(piece.clamp(1, 255)) {
        out.push(c.len() as u8);
        out.extend_from_slice(c);
    }
}

/// Appends a run of `limit + d` copies of `byte`, in chunks of `p + 1`
/// 256ths of the limit.
pub(crate) fn run(out: &mut Vec<u8>, byte: u8, d: i8, p: u8) {
    out.extend_from_slice(&[0, byte, d as u8, p]);
}

/// Pipelining, trickling, line ends, the last line, and the line limit,
/// the server's and a small one.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let requests = b"PUT a 1\nGET a\r\nCAS a 1 2\nDEL a\nPING\nSTATUS\nAUTH t\n";
    let mut out = Vec::new();
    let mut seed = |name: &str, bytes: Vec<u8>| out.push((name.to_string(), bytes));
    // Limit 0 is the server's MAX_LINE; the seeds that do not need it use
    // 255, which every line of theirs fits, so that their mutations run fast.
    const SERVER: u8 = 0;
    const SMALL: u8 = 255;

    let mut s = vec![SMALL];
    chunks(&mut s, requests, 255);
    seed("pipelined", s);

    let mut s = vec![SMALL];
    chunks(&mut s, requests, 1);
    seed("trickled", s);

    let mut s = vec![SMALL];
    chunks(&mut s, b"PING\nGET k", 255);
    seed("unterminated_last_line", s);

    let mut s = vec![SMALL];
    chunks(&mut s, b"\n\r\n\n", 255);
    seed("empty_lines", s);

    // A line of exactly MAX_LINE bytes is a line; the request after it too.
    let mut s = vec![SERVER];
    chunks(&mut s, b"PUT k ", 255);
    run(&mut s, b'v', -6, 3);
    chunks(&mut s, b"\nPING\n", 255);
    seed("line_at_limit", s);

    // One byte more: too long, whether its `\n` follows or not, and nothing
    // after it is read.
    let mut s = vec![SERVER];
    run(&mut s, b'x', 1, 15);
    chunks(&mut s, b"\nPING\n", 255);
    seed("line_over_limit", s);

    let mut s = vec![SERVER];
    chunks(&mut s, b"PING\n", 255);
    run(&mut s, b'x', 1, 0);
    seed("line_over_limit_unterminated", s);

    // Lines of at most 8 bytes: at, under and over the limit, in chunks
    // that cut them everywhere.
    let mut s = vec![8];
    chunks(&mut s, b"PING\nGET kkkk\nGET kkkkk\nPING\n", 3);
    seed("small_limit", s);
    out
}
