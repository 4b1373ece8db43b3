//! The exactly-once workload: clients that `INCR` counters through faults.
//!
//! Two kinds of client run side by side, on separate counters, under the
//! same nemesis:
//!
//! - **Session clients** open a session and send `#<seq> INCR <key>`. When
//!   an attempt's outcome is unknown (an error other than `BAD_REQUEST` or
//!   `SESSION_EXPIRED`, a timeout, a dropped connection) the client
//!   reconnects to a random node, resumes its session with `SESSION <id>`
//!   and sends the same `#<seq> INCR <key>` again, until it gets `VALUE`.
//!   Every increment it issued is therefore applied exactly once, and each
//!   counter must end equal to the number of increments issued on it.
//! - **Plain clients** send untagged `INCR <key>` and never retry: a retry
//!   without a session could apply twice. An unknown outcome is counted as
//!   indeterminate, and the counter must end between the increments
//!   acknowledged and those plus the indeterminate ones.
//!
//! Once stopped, a session client still finishes the increment it has in
//! flight (the nemesis is over by then), for at most
//! [`CounterConfig::finish_within`]; one it cannot finish is reported
//! unresolved, and the exact check cannot be made for its counter.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::rng::Rng;

use super::Client;

#[derive(Clone, Debug)]
pub struct CounterConfig {
    pub session_clients: usize,
    pub plain_clients: usize,
    /// Counters per kind of client: `s0..` for sessions, `p0..` plain.
    pub keys: usize,
    /// A reply that takes longer than this counts as a dropped connection.
    pub reply_timeout: Duration,
    /// How long a stopped session client may take to finish its increment.
    pub finish_within: Duration,
    pub seed: u64,
}

impl Default for CounterConfig {
    fn default() -> Self {
        CounterConfig {
            session_clients: 6,
            plain_clients: 4,
            keys: 3,
            reply_timeout: Duration::from_millis(2500),
            finish_within: Duration::from_secs(30),
            seed: 1,
        }
    }
}

/// What the clients did and saw.
#[derive(Clone, Debug, Default)]
pub struct CounterReport {
    /// Session counters: increments issued, each answered `VALUE` once.
    pub issued: BTreeMap<String, u64>,
    /// Session counters: every `VALUE` a session client was given.
    pub values: BTreeMap<String, Vec<i64>>,
    /// Session attempts whose outcome was unknown, and that were sent again.
    pub retries: u64,
    /// Unknown outcomes of both kinds of client, by cause (`ERR TIMEOUT`,
    /// `ERR LEADER_CHANGED`, `connection`, ...).
    pub unknown_causes: BTreeMap<String, u64>,
    /// Session increments still unanswered when their client had to give up.
    pub unresolved: Vec<String>,
    /// Sessions opened (including reopenings).
    pub sessions_opened: u64,
    /// Plain counters: increments answered `VALUE`.
    pub plain_ok: BTreeMap<String, u64>,
    /// Plain counters: increments whose outcome is unknown.
    pub plain_indeterminate: BTreeMap<String, u64>,
    /// Replies that should never come (`BAD_REQUEST`, `SESSION_EXPIRED`
    /// for a session that was in use, nonsense).
    pub anomalies: Vec<String>,
}

impl CounterReport {
    pub fn session_increments(&self) -> u64 {
        self.issued.values().sum()
    }

    pub fn plain_increments(&self) -> u64 {
        self.plain_ok.values().sum()
    }

    pub fn plain_indeterminate_total(&self) -> u64 {
        self.plain_indeterminate.values().sum()
    }

    fn merge(&mut self, o: CounterReport) {
        for (k, n) in o.issued {
            *self.issued.entry(k).or_default() += n;
        }
        for (k, v) in o.values {
            self.values.entry(k).or_default().extend(v);
        }
        for (k, n) in o.plain_ok {
            *self.plain_ok.entry(k).or_default() += n;
        }
        for (k, n) in o.plain_indeterminate {
            *self.plain_indeterminate.entry(k).or_default() += n;
        }
        self.retries += o.retries;
        for (k, n) in o.unknown_causes {
            *self.unknown_causes.entry(k).or_default() += n;
        }
        self.sessions_opened += o.sessions_opened;
        self.unresolved.extend(o.unresolved);
        self.anomalies.extend(o.anomalies);
    }

    /// Checks the final counter values (`None`: absent) against what the
    /// clients did; returns every discrepancy. `finals` must hold every key.
    pub fn check(&self, finals: &BTreeMap<String, Option<i64>>) -> Vec<String> {
        let mut bad = Vec::new();
        let unresolved: Vec<&String> = self.unresolved.iter().collect();
        for (k, &issued) in &self.issued {
            let got = finals.get(k).copied().flatten().unwrap_or(0);
            if unresolved.contains(&k) {
                continue;
            }
            if got != issued as i64 {
                bad.push(format!(
                    "counter {k} is {got}, but its session clients issued {issued} increments \
                     ({} applied twice or lost)",
                    got - issued as i64
                ));
            }
            let mut vals = self.values.get(k).cloned().unwrap_or_default();
            vals.sort_unstable();
            let expected: Vec<i64> = (1..=issued as i64).collect();
            if vals != expected {
                let got: std::collections::BTreeSet<i64> = vals.iter().copied().collect();
                let missing = expected.iter().filter(|v| !got.contains(v)).count();
                bad.push(format!(
                    "counter {k}: the VALUE replies are not 1..={issued} each once \
                     ({missing} numbers missing)"
                ));
            }
        }
        for (k, &ok) in &self.plain_ok {
            let ind = self.plain_indeterminate.get(k).copied().unwrap_or(0);
            let got = finals.get(k).copied().flatten().unwrap_or(0);
            if got < ok as i64 || got > (ok + ind) as i64 {
                bad.push(format!(
                    "plain counter {k} is {got}, outside [{ok}, {}] (acknowledged, plus \
                     indeterminate)",
                    ok + ind
                ));
            }
        }
        bad
    }
}

/// Running counter clients.
pub struct Counters {
    stop: Arc<AtomicBool>,
    finish_by: Arc<Mutex<Option<Instant>>>,
    finish_within: Duration,
    threads: Vec<JoinHandle<CounterReport>>,
    keys: usize,
}

impl Counters {
    /// Starts the clients against nodes `(id, client address)`.
    pub fn start(cfg: CounterConfig, nodes: Vec<(u64, String)>) -> Counters {
        let stop = Arc::new(AtomicBool::new(false));
        let finish_by = Arc::new(Mutex::new(None));
        let mut threads = Vec::new();
        for c in 0..cfg.session_clients + cfg.plain_clients {
            let ctx = Ctx {
                cfg: cfg.clone(),
                nodes: nodes.clone(),
                stop: stop.clone(),
                finish_by: finish_by.clone(),
                rng: Rng::new(cfg.seed.wrapping_mul(7919).wrapping_add(c as u64)),
                report: CounterReport::default(),
                name: format!("client {c}"),
            };
            let session = c < cfg.session_clients;
            threads.push(
                thread::Builder::new()
                    .name(format!("counter-{c}"))
                    .spawn(move || {
                        if session {
                            ctx.run_session()
                        } else {
                            ctx.run_plain()
                        }
                    })
                    .expect("client thread"),
            );
        }
        Counters {
            stop,
            finish_by,
            finish_within: cfg.finish_within,
            threads,
            keys: cfg.keys,
        }
    }

    /// Every counter key in use.
    pub fn keys(&self) -> Vec<String> {
        (0..self.keys)
            .flat_map(|i| [format!("s{i}"), format!("p{i}")])
            .collect()
    }

    /// Stops the clients, lets session clients finish, and merges reports.
    pub fn stop(mut self) -> CounterReport {
        *self.finish_by.lock().unwrap() = Some(Instant::now() + self.finish_within);
        self.stop.store(true, Ordering::SeqCst);
        let mut out = CounterReport::default();
        for t in self.threads.drain(..) {
            out.merge(t.join().expect("a counter client panicked"));
        }
        out
    }
}

/// What one attempt got.
enum Got {
    Value(i64),
    /// An outcome the client cannot know: an error that leaves it open, a
    /// timeout, a dropped connection.
    Unknown(String),
    /// A reply that should not happen.
    Anomaly(String),
    Expired(String),
}

fn classify(reply: io::Result<String>) -> Got {
    match reply {
        Err(e) => Got::Unknown(format!("connection: {e}")),
        Ok(r) => {
            if let Some(n) = r.strip_prefix("VALUE ") {
                match n.parse() {
                    Ok(n) => Got::Value(n),
                    Err(_) => Got::Anomaly(r),
                }
            } else if r.starts_with("ERR SESSION_EXPIRED") {
                Got::Expired(r)
            } else if r.starts_with("ERR BAD_REQUEST") || !r.starts_with("ERR ") {
                Got::Anomaly(r)
            } else {
                Got::Unknown(r)
            }
        }
    }
}

struct Ctx {
    cfg: CounterConfig,
    nodes: Vec<(u64, String)>,
    stop: Arc<AtomicBool>,
    finish_by: Arc<Mutex<Option<Instant>>>,
    rng: Rng,
    report: CounterReport,
    name: String,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Past the deadline to finish after a stop.
    fn out_of_time(&self) -> bool {
        self.finish_by
            .lock()
            .unwrap()
            .is_some_and(|t| Instant::now() > t)
    }

    /// A connection to a random node; `None` once out of time.
    fn connect(&mut self) -> Option<Client> {
        loop {
            if self.out_of_time() {
                return None;
            }
            let (_, addr) = self.nodes[self.rng.below(self.nodes.len() as u64) as usize].clone();
            if let Ok(mut c) = Client::connect_timeout(&addr, Duration::from_millis(300)) {
                c.set_timeout(self.cfg.reply_timeout);
                return Some(c);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A connection whose current session is `session` (a new session if
    /// `None`), and the session's id (`<index>-<secret>`, as the node gave
    /// it); `None` once out of time.
    fn with_session(&mut self, session: Option<&str>) -> Option<(Client, String)> {
        loop {
            let mut c = self.connect()?;
            let line = match session {
                None => "SESSION".to_string(),
                Some(id) => format!("SESSION {id}"),
            };
            if let Ok(r) = c.request(&line) {
                match r.strip_prefix("SESSION ") {
                    Some(id) if session.is_none_or(|s| s == id) && id.contains('-') => {
                        let id = id.to_string();
                        if session.is_none() {
                            self.report.sessions_opened += 1;
                        }
                        return Some((c, id));
                    }
                    // An unknown outcome: try again, elsewhere.
                    _ if r.starts_with("ERR ") && !r.starts_with("ERR SESSION_EXPIRED") => {}
                    _ => {
                        self.report
                            .anomalies
                            .push(format!("{}: {line} -> {r}", self.name));
                        return None;
                    }
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn note_unknown(&mut self, why: &str) {
        let cause = match why.strip_prefix("ERR ") {
            Some(rest) => format!("ERR {}", rest.split(' ').next().unwrap_or_default()),
            None => "connection".to_string(),
        };
        *self.report.unknown_causes.entry(cause).or_default() += 1;
    }

    fn run_session(mut self) -> CounterReport {
        let Some((mut client, mut session)) = self.with_session(None) else {
            return self.report;
        };
        let mut seq = 0u64;
        'ops: while !self.stopped() {
            seq += 1;
            let key = format!("s{}", self.rng.below(self.cfg.keys as u64));
            let line = format!("#{seq} INCR {key}");
            loop {
                match classify(client.request(&line)) {
                    Got::Value(n) => {
                        *self.report.issued.entry(key.clone()).or_default() += 1;
                        self.report.values.entry(key).or_default().push(n);
                        continue 'ops;
                    }
                    Got::Unknown(why) => {
                        self.note_unknown(&why);
                        self.report.retries += 1;
                        thread::sleep(Duration::from_millis(self.rng.range(10, 50)));
                        match self.with_session(Some(&session)) {
                            Some((c, _)) => client = c,
                            None => {
                                self.report.unresolved.push(key);
                                return self.report;
                            }
                        }
                    }
                    Got::Expired(r) | Got::Anomaly(r) => {
                        self.report
                            .anomalies
                            .push(format!("{}: {line} -> {r}", self.name));
                        self.report.unresolved.push(key);
                        // Go on in a new session, with this counter unchecked.
                        match self.with_session(None) {
                            Some((c, id)) => (client, session, seq) = (c, id, 0),
                            None => return self.report,
                        }
                        continue 'ops;
                    }
                }
            }
        }
        self.report
    }

    fn run_plain(mut self) -> CounterReport {
        'process: while let Some(mut client) = self.connect() {
            while !self.stopped() {
                let key = format!("p{}", self.rng.below(self.cfg.keys as u64));
                let line = format!("INCR {key}");
                match classify(client.request(&line)) {
                    Got::Value(_) => *self.report.plain_ok.entry(key).or_default() += 1,
                    Got::Unknown(why) => {
                        self.note_unknown(&why);
                        *self.report.plain_indeterminate.entry(key).or_default() += 1;
                        continue 'process;
                    }
                    Got::Expired(r) | Got::Anomaly(r) => {
                        self.report
                            .anomalies
                            .push(format!("{}: {line} -> {r}", self.name));
                        continue 'process;
                    }
                }
            }
            break;
        }
        self.report
    }
}
