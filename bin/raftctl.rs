//! raftctl: the command-line client of raftnode, built on
//! [`raftnode::client`] (failover between endpoints, writes retried safely
//! inside a session). Output is text for people or, with `--json`, one
//! JSON object for scripts; the exit code says what is known (see
//! `EXIT_CODES`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use raftnode::client::{CasOutcome, Client, Code, EndpointStatus, Error, Members, Status, Tls};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the key was not found (get, del), or cas did not swap (mismatch or not found)
  2  usage: bad flags or arguments, a key or value the protocol cannot carry,
     an unreadable --token-file or TLS file; nothing was sent
  3  unavailable: no definite answer before --timeout-ms and nothing changed
     (a read, or a write that never left raftctl); for status, an endpoint
     did not answer
  4  outcome unknown: a write was sent and may or may not have been applied
  5  refused: a node answered an error that means nothing was done
     (ERR BAD_REQUEST, ERR NOAUTH, ...), or its reply broke the protocol";

/// Command-line client of raftnode.
///
/// Any node takes any request; raftctl connects to the first endpoint that
/// answers and moves on to the next when a node fails. Writes (put, del,
/// cas, incr, append) go through a client session: one whose outcome is
/// unknown (a node died, a leader changed, no reply in time) is sent again
/// with the same sequence number until a definite answer comes, and is
/// applied exactly once. The session's id carries a random secret that
/// only this process holds (it is never printed). Keys are 1 to 1024 bytes
/// without whitespace;
/// values are at most 1 MiB without newlines.
///
/// Examples:
///
///   raftctl put greeting "hello world"
///
///   raftctl --endpoints 127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003 status
///
///   raftctl --json incr visits
#[derive(Parser, Debug)]
#[command(
    name = "raftctl",
    version,
    about,
    long_about,
    verbatim_doc_comment,
    args_override_self = true,
    after_help = EXIT_CODES
)]
struct Cli {
    /// Client addresses of the nodes, comma separated.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        action = clap::ArgAction::Set,
        default_value = "127.0.0.1:8001",
        value_name = "HOST:PORT,..."
    )]
    endpoints: Vec<String>,

    /// How long the whole command may take, retries included.
    #[arg(long, global = true, default_value_t = 10_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,

    /// How long one attempt waits for its reply (at most --timeout-ms);
    /// with `status`, how long each endpoint may take.
    #[arg(long, global = true, default_value_t = 6_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,

    /// How long one connect (and TLS handshake) may take.
    #[arg(long, global = true, default_value_t = 1_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout_ms: u64,

    /// Send `AUTH <token>` first, the token being this file's first line
    /// (for nodes run with --auth-token-file).
    #[arg(long, global = true, value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// Speak TLS 1.3, trusting this CA (PEM), to nodes run with
    /// --cert-file. Each node's certificate must name the host of its
    /// endpoint, unless --tls-server-name is given.
    #[arg(long, global = true, value_name = "PATH")]
    cacert: Option<PathBuf>,

    /// With --cacert: present this client certificate (PEM), for nodes run
    /// with --client-cert-auth. Needs --key.
    #[arg(long, global = true, value_name = "PATH", requires_all = ["cacert", "tls_key"])]
    cert: Option<PathBuf>,

    /// The private key of --cert (PEM).
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        value_name = "PATH",
        requires = "cert"
    )]
    tls_key: Option<PathBuf>,

    /// With --cacert: the name every node's certificate must carry.
    #[arg(long, global = true, value_name = "NAME", requires = "cacert")]
    tls_server_name: Option<String>,

    /// Send writes untagged, without a session (for nodes without
    /// sessions): a write whose outcome is unknown is then reported
    /// (exit 4), never retried.
    #[arg(long, global = true)]
    no_session: bool,

    /// Print one JSON object on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Store VALUE under KEY (prints OK).
    Put { key: String, value: String },
    /// Print the value of KEY (linearizable read); exit 1 if it is absent.
    Get { key: String },
    /// Delete KEY (prints DELETED, or NOT_FOUND with exit 1).
    Del { key: String },
    /// Set KEY to NEW if its value is EXPECTED (one token, no space).
    /// Prints OK; or MISMATCH <current> or NOT_FOUND, with exit 1.
    Cas {
        key: String,
        expected: String,
        new: String,
    },
    /// Add one to the decimal counter KEY (absent counts as 0) and print
    /// the new value.
    Incr { key: String },
    /// Append VALUE to the value of KEY (absent counts as empty).
    Append { key: String, value: String },
    /// One row per endpoint: its id, role, term, leader, commit and applied
    /// index, members, and the round-trip time of STATUS. Endpoints that
    /// did not answer are listed with the reason (exit 3).
    Status,
    /// The voters and learners, and the leader, as one node sees them.
    Members,
    /// Add node ID as a voter, its raft (peer) address being ADDR; the new
    /// node runs with --join. Returns once the change is applied.
    AddNode { id: u64, addr: String },
    /// Remove node ID from the cluster; returns once applied.
    RemoveNode { id: u64 },
    /// Hand leadership to node ID; returns once it leads.
    TransferLeader { id: u64 },
    /// Take a snapshot now on the node reached (compacting its log) and
    /// print the index it covers.
    Snapshot,
}

/// How a command ended, for the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    Ok = 0,
    NotFound = 1,
    Usage = 2,
    Unavailable = 3,
    OutcomeUnknown = 4,
    Refused = 5,
}

fn exit_of(e: &Error) -> Exit {
    match e {
        Error::Invalid(_) | Error::Tls(_) => Exit::Usage,
        Error::OutcomeUnknown { .. } => Exit::OutcomeUnknown,
        Error::Server { code, .. } if code.is_transient() => Exit::Unavailable,
        Error::Server { .. } | Error::Protocol(_) => Exit::Refused,
        Error::Io(_) | Error::Timeout => Exit::Unavailable,
    }
}

fn kind_of(e: &Error) -> &'static str {
    match exit_of(e) {
        Exit::Usage => "invalid",
        Exit::OutcomeUnknown => "outcome_unknown",
        Exit::Refused => "refused",
        _ => "unavailable",
    }
}

/// A JSON string literal of `s`.
fn js(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn jbytes(b: &[u8]) -> String {
    js(&String::from_utf8_lossy(b))
}

fn jlist(ids: &[u64]) -> String {
    let items: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!("[{}]", items.join(","))
}

fn ids(ids: &[u64]) -> String {
    let items: Vec<String> = ids.iter().map(u64::to_string).collect();
    items.join(",")
}

/// What a command prints and how it exits.
struct Outcome {
    text: String,
    json: String,
    exit: Exit,
}

impl Outcome {
    fn ok(text: impl Into<String>, json: impl Into<String>) -> Outcome {
        Outcome {
            text: text.into(),
            json: json.into(),
            exit: Exit::Ok,
        }
    }

    fn not_found(text: impl Into<String>, json: impl Into<String>) -> Outcome {
        Outcome {
            exit: Exit::NotFound,
            ..Outcome::ok(text, json)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let token = match cli.token_file.as_deref().map(read_token).transpose() {
        Ok(t) => t,
        Err(msg) => return finish(&cli, failure("invalid", None, &msg, Exit::Usage)),
    };
    let outcome = match build(&cli, token).and_then(|mut c| run(&cli, &mut c)) {
        Ok(o) => o,
        Err(e) => failure(kind_of(&e), e.code(), &e.to_string(), exit_of(&e)),
    };
    finish(&cli, outcome)
}

/// A failed command: the message on stderr, a JSON error object for --json.
fn failure(kind: &str, code: Option<&Code>, message: &str, exit: Exit) -> Outcome {
    eprintln!("raftctl: {message}");
    let code = code.map_or("null".into(), |c| js(c.as_str()));
    Outcome {
        text: String::new(),
        json: format!(
            r#"{{"error":{{"kind":{},"code":{code},"message":{}}}}}"#,
            js(kind),
            js(message)
        ),
        exit,
    }
}

fn finish(cli: &Cli, outcome: Outcome) -> ExitCode {
    let out = if cli.json {
        &outcome.json
    } else {
        &outcome.text
    };
    if !out.is_empty() {
        println!("{out}");
    }
    ExitCode::from(outcome.exit as u8)
}

/// The client the flags describe (not connected yet).
fn build(cli: &Cli, token: Option<String>) -> Result<Client, Error> {
    let ms = Duration::from_millis;
    let mut b = Client::builder(cli.endpoints.iter().map(|e| e.trim().to_string()))
        .deadline(ms(cli.timeout_ms))
        .request_timeout(ms(cli.request_timeout_ms.min(cli.timeout_ms)))
        .connect_timeout(ms(cli.connect_timeout_ms))
        .sessions(!cli.no_session);
    if let Some(token) = token {
        b = b.token(token);
    }
    if let Some(ca) = &cli.cacert {
        let pair = cli.cert.as_deref().zip(cli.tls_key.as_deref());
        let mut tls = Tls::new(ca, pair).map_err(Error::Tls)?;
        if let Some(name) = &cli.tls_server_name {
            tls = tls.server_name(name).map_err(Error::Tls)?;
        }
        b = b.tls(tls);
    }
    b.build()
}

/// The token: the file's first line, without a trailing `\r`.
fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    Ok(line.trim_end_matches('\r').to_string())
}

fn run(cli: &Cli, c: &mut Client) -> Result<Outcome, Error> {
    Ok(match &cli.cmd {
        Cmd::Put { key, value } => {
            c.put(key, value)?;
            Outcome::ok("OK", r#"{"ok":true}"#)
        }
        Cmd::Get { key } => match c.get(key)? {
            Some(v) => Outcome::ok(
                String::from_utf8_lossy(&v),
                format!(
                    r#"{{"key":{},"found":true,"value":{}}}"#,
                    js(key),
                    jbytes(&v)
                ),
            ),
            None => {
                eprintln!("raftctl: {key}: not found");
                Outcome::not_found("", format!(r#"{{"key":{},"found":false}}"#, js(key)))
            }
        },
        Cmd::Del { key } => {
            let json = |d: bool| format!(r#"{{"key":{},"deleted":{d}}}"#, js(key));
            match c.del(key)? {
                true => Outcome::ok("DELETED", json(true)),
                false => Outcome::not_found("NOT_FOUND", json(false)),
            }
        }
        Cmd::Cas { key, expected, new } => match c.cas(key, expected, new)? {
            CasOutcome::Swapped => {
                Outcome::ok("OK", format!(r#"{{"key":{},"swapped":true}}"#, js(key)))
            }
            CasOutcome::Mismatch(cur) => Outcome::not_found(
                format!("MISMATCH {}", String::from_utf8_lossy(&cur)),
                format!(
                    r#"{{"key":{},"swapped":false,"found":true,"current":{}}}"#,
                    js(key),
                    jbytes(&cur)
                ),
            ),
            CasOutcome::NotFound => Outcome::not_found(
                "NOT_FOUND",
                format!(r#"{{"key":{},"swapped":false,"found":false}}"#, js(key)),
            ),
        },
        Cmd::Incr { key } => {
            let n = c.incr(key)?;
            Outcome::ok(
                n.to_string(),
                format!(r#"{{"key":{},"value":{n}}}"#, js(key)),
            )
        }
        Cmd::Append { key, value } => {
            c.append(key, value)?;
            Outcome::ok("OK", r#"{"ok":true}"#)
        }
        Cmd::Status => status(c),
        Cmd::Members => members(&c.members()?),
        Cmd::AddNode { id, addr } => {
            c.add_node(*id, addr)?;
            Outcome::ok("OK", r#"{"ok":true}"#)
        }
        Cmd::RemoveNode { id } => {
            c.remove_node(*id)?;
            Outcome::ok("OK", r#"{"ok":true}"#)
        }
        Cmd::TransferLeader { id } => {
            c.transfer_leader(*id)?;
            Outcome::ok("OK", r#"{"ok":true}"#)
        }
        Cmd::Snapshot => {
            let i = c.snapshot()?;
            Outcome::ok(i.to_string(), format!(r#"{{"index":{i}}}"#))
        }
    })
}

fn members(m: &Members) -> Outcome {
    let mut rows = vec![vec!["ID".to_string(), "ROLE".into(), "LEADER".into()]];
    let star = |id: u64| if m.leader == Some(id) { "*" } else { "" }.to_string();
    for &id in &m.voters {
        rows.push(vec![id.to_string(), "voter".into(), star(id)]);
    }
    for &id in &m.learners {
        rows.push(vec![id.to_string(), "learner".into(), star(id)]);
    }
    let mut text = table(&rows);
    let _ = write!(text, "(as seen by node {})", m.seen_by);
    let leader = m.leader.map_or("null".into(), |l| l.to_string());
    Outcome::ok(
        text,
        format!(
            r#"{{"seen_by":{},"leader":{leader},"voters":{},"learners":{}}}"#,
            m.seen_by,
            jlist(&m.voters),
            jlist(&m.learners)
        ),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn status_row(e: &EndpointStatus) -> Vec<String> {
    match &e.result {
        Ok((s, rtt)) => {
            let mut members = ids(&s.members);
            if !s.learners.is_empty() {
                let _ = write!(members, " (learners {})", ids(&s.learners));
            }
            let mut role = s.role.to_string();
            if s.recovering {
                role.push_str(" (recovering)");
            }
            vec![
                e.endpoint.clone(),
                s.id.to_string(),
                role,
                s.term.to_string(),
                s.leader.map_or("none".into(), |l| l.to_string()),
                s.commit.to_string(),
                s.applied.to_string(),
                members,
                ms(*rtt),
            ]
        }
        Err(err) => vec![e.endpoint.clone(), format!("no answer: {err}")],
    }
}

fn status_json(e: &EndpointStatus) -> String {
    match &e.result {
        Ok((s, rtt)) => status_fields(&e.endpoint, s, *rtt),
        Err(err) => format!(
            r#"{{"endpoint":{},"ok":false,"error":{}}}"#,
            js(&e.endpoint),
            js(&err.to_string())
        ),
    }
}

fn status_fields(endpoint: &str, s: &Status, rtt: Duration) -> String {
    format!(
        "{{\"endpoint\":{},\"ok\":true,\"id\":{},\"role\":{},\"term\":{},\"leader\":{},\
\"commit\":{},\"applied\":{},\"last\":{},\"snapshot\":{},\"members\":{},\"learners\":{},\
\"recovering\":{},\"rtt_ms\":{:.3}}}",
        js(endpoint),
        s.id,
        js(s.role.as_str()),
        s.term,
        s.leader.map_or("null".into(), |l| l.to_string()),
        s.commit,
        s.applied,
        s.last,
        s.snapshot,
        jlist(&s.members),
        jlist(&s.learners),
        s.recovering,
        rtt.as_secs_f64() * 1e3
    )
}

fn status(c: &mut Client) -> Outcome {
    let all = c.status_each();
    let mut rows = vec![[
        "ENDPOINT", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "MEMBERS", "RTT",
    ]
    .map(String::from)
    .to_vec()];
    rows.extend(all.iter().map(status_row));
    let json: Vec<String> = all.iter().map(status_json).collect();
    let down = all.iter().filter(|e| e.result.is_err()).count();
    let mut text = table(&rows);
    if down > 0 {
        let _ = write!(text, "{down} of {} endpoints did not answer", all.len());
    }
    Outcome {
        text: text.trim_end().to_string(),
        json: format!(
            r#"{{"endpoints":[{}],"answered":{},"unanswered":{down}}}"#,
            json.join(","),
            all.len() - down
        ),
        exit: if down > 0 {
            Exit::Unavailable
        } else {
            Exit::Ok
        },
    }
}

/// Left-aligned columns, two spaces apart; a short row (an endpoint that
/// did not answer) runs its last cell on past the columns.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows.iter().filter(|r| r.len() == cols) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_options_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_parses_and_endpoints_default_to_node_1() {
        let cli = Cli::try_parse_from(["raftctl", "cas", "k", "old", "new value"]).unwrap();
        assert_eq!(cli.endpoints, ["127.0.0.1:8001"]);
        assert!(matches!(cli.cmd, Cmd::Cas { ref new, .. } if new == "new value"));
        let cli = Cli::try_parse_from([
            "raftctl",
            "add-node",
            "4",
            "127.0.0.1:7004",
            "--endpoints",
            "a:1,b:2",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.endpoints, ["a:1", "b:2"]);
        assert!(cli.json);
        let cli = Cli::try_parse_from([
            "raftctl",
            "--endpoints",
            "a:1",
            "--endpoints",
            "c:3",
            "ping",
        ]);
        assert!(cli.is_err(), "no ping subcommand");
        let cli = Cli::try_parse_from([
            "raftctl",
            "--endpoints",
            "a:1",
            "status",
            "--endpoints",
            "c:3,d:4",
        ])
        .unwrap();
        assert_eq!(cli.endpoints, ["c:3", "d:4"], "the last --endpoints wins");
        for args in [
            &["raftctl", "status"][..],
            &["raftctl", "members"],
            &["raftctl", "snapshot"],
            &["raftctl", "remove-node", "2"],
            &["raftctl", "transfer-leader", "3"],
            &["raftctl", "incr", "c"],
            &["raftctl", "append", "k", "v"],
            &["raftctl", "del", "k"],
            &["raftctl", "get", "k"],
            &["raftctl", "put", "k", ""],
        ] {
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
        assert!(Cli::try_parse_from(["raftctl", "remove-node", "x"]).is_err());
        assert!(Cli::try_parse_from(["raftctl", "--cert", "c.pem", "get", "k"]).is_err());
    }

    #[test]
    fn errors_map_to_the_documented_exit_codes() {
        use raftnode::client::{Invalid, ProtocolError};
        let server = |code| Error::Server {
            code,
            message: "m".into(),
        };
        assert_eq!(exit_of(&Error::Invalid(Invalid::KeyCharacter)), Exit::Usage);
        assert_eq!(exit_of(&Error::Timeout), Exit::Unavailable);
        assert_eq!(exit_of(&server(Code::NoLeader)), Exit::Unavailable);
        assert_eq!(exit_of(&server(Code::BadRequest)), Exit::Refused);
        assert_eq!(exit_of(&server(Code::NoAuth)), Exit::Refused);
        assert_eq!(
            exit_of(&Error::Protocol(ProtocolError::TooLong)),
            Exit::Refused
        );
        let unknown = Error::OutcomeUnknown {
            last: Box::new(Error::Timeout),
        };
        assert_eq!(exit_of(&unknown), Exit::OutcomeUnknown);
    }

    #[test]
    fn json_strings_escape_what_json_requires() {
        assert_eq!(js("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        assert_eq!(jbytes(b"\xff"), "\"\u{fffd}\"");
    }

    #[test]
    fn the_table_aligns_columns_and_lets_a_short_row_run_on() {
        let rows = vec![
            vec!["A".to_string(), "BB".into(), "C".into()],
            vec!["aaaa".to_string(), "b".into(), "c".into()],
            vec!["x".to_string(), "no answer: refused".into()],
        ];
        assert_eq!(
            table(&rows),
            "A     BB  C\naaaa  b   c\nx     no answer: refused\n"
        );
    }
}
