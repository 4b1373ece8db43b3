//! raftbench: a load generator for raftnode's line protocol.
//!
//! It runs N clients against one or more nodes, closed loop (each client
//! sends its next request when the last one is answered) or at a fixed rate
//! (`--rate`, latency measured from the intended send time), and reports
//! throughput, the latency distribution from a log-linear histogram, errors by
//! code, and optionally the CPU time and RSS of the server processes over the
//! measured interval. `--json` and `--csv` print one line for scripts;
//! `bin/bench.sh` builds its table from `--csv`.
//!
//! Layout: `bench/histogram.rs` (the histogram), `bench/workload.rs` (keys,
//! values, requests, reply classification, per-thread figures),
//! `bench/clients.rs` (the client threads), `bench/conn.rs` (a client's
//! connection, plain or TLS), `bench/procstat.rs` (`/proc`).
//!
//! Before the run it asks every endpoint for its `STATUS` through the client
//! library (`raftnode::client`), names the leader, and refuses to start when
//! no endpoint answers.
//!
//! What it does not do: verify values or linearizability (use the test
//! suite), follow redirects (any node accepts any request), or run on other
//! hosts than the ones named in `--endpoints`.

#[path = "bench/clients.rs"]
mod clients;
#[path = "bench/conn.rs"]
mod conn;
#[path = "bench/histogram.rs"]
mod histogram;
#[path = "bench/procstat.rs"]
mod procstat;
#[path = "bench/workload.rs"]
mod workload;

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use raftnode::client::{Client, Tls as ClientTls};

use clients::Shared;
use conn::Tls;
use workload::{Recorder, Workload};

/// Load generator for raftnode: N clients send PUT/GET over the line protocol
/// and raftbench reports ops/s, latency percentiles and errors by code.
///
/// Closed loop by default: each client sends its next request as soon as the
/// previous one is answered. With --rate the clients send on a fixed schedule
/// instead and latency is measured from the intended send time, so a server
/// stall is charged to every request it delayed.
///
/// Examples:
///
///   raftbench --endpoints 127.0.0.1:8001,127.0.0.1:8002 --clients 64 --duration 10s --warmup 2s
///
///   raftbench --clients 1000 --conns 16 --total 100000 --warmup 5000ops
///
///   raftbench --keyspace 10000 --prefill --ratio 0 --clients 64 --duration 10s --csv
///
///   raftbench --tls-ca certs/ca.pem --endpoints 127.0.0.1:8001 --clients 64 --duration 10s
#[derive(Parser, Debug)]
#[command(name = "raftbench", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Client addresses of the nodes, comma separated. Clients (or, with
    /// --conns, connections) are spread over them round-robin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:8001",
        value_name = "HOST:PORT,..."
    )]
    endpoints: Vec<String>,

    /// Number of clients; each has at most one request outstanding.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    clients: u64,

    /// Share M connections among the clients instead of one each. Each
    /// connection has a writer and a reader thread and pipelines the requests
    /// of its clients; replies are matched in order. Plain TCP only.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    conns: Option<u64>,

    /// Connect with TLS 1.3, trusting only this CA (PEM); the nodes must
    /// run with --cert-file/--key-file. Not with --conns: a shared
    /// connection's writer and reader threads cannot split one TLS session.
    #[arg(long, value_name = "FILE", conflicts_with = "conns")]
    tls_ca: Option<PathBuf>,

    /// The name every node's certificate must carry (DNS name or IP
    /// address); bin/certs.sh puts localhost in each.
    #[arg(
        long,
        default_value = "localhost",
        value_name = "NAME",
        requires = "tls_ca"
    )]
    tls_server_name: String,

    /// Stop after this many measured operations (warmup operations come on top).
    #[arg(long, value_name = "OPS", conflicts_with = "duration")]
    total: Option<u64>,

    /// Measure for this long after the warmup, e.g. 10s, 500ms, 2m
    /// (default 10s unless --total is given).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Key length in bytes (the --key-prefix included); keys are zero-padded
    /// base-62 numbers.
    #[arg(long, default_value_t = 8, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=1024))]
    key_size: u64,

    /// Value length in bytes.
    #[arg(long, default_value_t = 256, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    value_size: u64,

    /// Fraction of PUTs in the mix, 0.0 to 1.0 (1.0: writes only, 0.0:
    /// linearizable GETs only).
    #[arg(long, default_value_t = 1.0, value_parser = parse_ratio)]
    ratio: f64,

    /// Number of distinct keys, drawn uniformly. 0: every operation uses a
    /// new key, never reused.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keyspace: u64,

    /// Before the run, PUT every key of --keyspace once (not measured), so
    /// GETs find values.
    #[arg(long, requires = "keyspace")]
    prefill: bool,

    /// Prefix of every key; use a different one per run to keep runs against
    /// the same cluster from overwriting each other's keys.
    #[arg(long, default_value = "", value_name = "STR")]
    key_prefix: String,

    /// Open loop: send R operations per second in total, on a fixed
    /// schedule; latency runs from each request's intended send time.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    rate: Option<f64>,

    /// Leave the start out of the figures: a time (2s, 500ms) or a number of
    /// operations (5000ops).
    #[arg(long, default_value = "0ops", value_name = "TIME|Nops", value_parser = parse_warmup)]
    warmup: Warmup,

    /// Server process ids: report each one's CPU seconds (utime+stime from
    /// /proc/<pid>/stat), context switches (all threads, from
    /// /proc/<pid>/task/*/status) and RSS (VmRSS) over the measured interval,
    /// and the CPU microseconds and context switches per completed operation.
    #[arg(long, value_delimiter = ',', value_name = "PID,...")]
    pids: Vec<u32>,

    /// A request with no reply after this long is counted as CLIENT_TIMEOUT
    /// and its connection is reset (the node answers ERR TIMEOUT after its
    /// own --request-timeout-ms, 5s by default, so keep this larger).
    #[arg(long, default_value = "10s", value_name = "TIME", value_parser = parse_duration)]
    timeout: Duration,

    /// Seed of the per-client random generators (key choice, put/get mix).
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Stack size of each client thread, KiB (1,000 clients need 1,000
    /// threads unless --conns is used).
    #[arg(long, default_value_t = 128, value_name = "KIB", value_parser = clap::value_parser!(u64).range(32..))]
    stack_kib: u64,

    /// Print one JSON object on one line instead of the report.
    #[arg(long, conflicts_with = "csv")]
    json: bool,

    /// Print one CSV line instead of the report (columns: see --csv-header).
    #[arg(long)]
    csv: bool,

    /// Print the CSV header line and exit.
    #[arg(long)]
    csv_header: bool,
}

#[derive(Clone, Copy, Debug)]
enum Warmup {
    Time(Duration),
    Ops(u64),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!("{s:?} is not a duration like 10s, 500ms or 2m")),
    }
}

fn parse_warmup(s: &str) -> Result<Warmup, String> {
    let s = s.trim();
    if let Some(n) = s.strip_suffix("ops") {
        return n
            .trim()
            .parse()
            .map(Warmup::Ops)
            .map_err(|_| format!("{s:?}: the number of operations must be a whole number"));
    }
    if s.parse::<f64>().is_ok() {
        return Err(format!(
            "{s:?}: say {s}s for seconds or {s}ops for operations"
        ));
    }
    parse_duration(s).map(Warmup::Time)
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a fraction between 0.0 and 1.0")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive number of operations per second"
        )),
    }
}

/// One run's figures, ready to print.
struct Report {
    rec: Recorder,
    /// The measured interval.
    secs: f64,
    /// What each `--pids` process used over the interval, `None` if unreadable.
    nodes: Vec<(u32, Option<NodeUse>)>,
    /// raftbench's own CPU seconds over the interval.
    self_cpu: Option<f64>,
}

/// One server process over the measured interval.
#[derive(Clone, Copy, Debug)]
struct NodeUse {
    cpu_s: f64,
    /// At the end of the interval.
    rss_kib: u64,
    ctx_switches: u64,
}

impl NodeUse {
    /// CPU microseconds per completed operation of the whole benchmark.
    fn cpu_us_per_op(&self, ops: u64) -> Option<f64> {
        (ops > 0).then(|| self.cpu_s * 1e6 / ops as f64)
    }

    /// Context switches per completed operation.
    fn ctx_per_op(&self, ops: u64) -> Option<f64> {
        (ops > 0).then(|| self.ctx_switches as f64 / ops as f64)
    }
}

/// The parameters of one phase (the prefill, then the measured run).
struct Phase {
    clients: usize,
    conns: Option<usize>,
    rate: Option<f64>,
    warmup: Warmup,
    duration: Option<Duration>,
    total: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.csv_header {
        println!("{CSV_HEADER}");
        return ExitCode::SUCCESS;
    }
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("raftbench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode, String> {
    let endpoints = resolve(&cli.endpoints)?;
    preflight(cli)?;
    let tls = match &cli.tls_ca {
        Some(ca) => Some(Tls::new(ca, &cli.tls_server_name).map_err(|e| e.to_string())?),
        None => None,
    };
    let clients = cli.clients as usize;
    let conns = cli.conns.map(|m| (m as usize).min(clients));
    let duration = match (cli.total, cli.duration) {
        (None, None) => Some(Duration::from_secs(10)),
        (_, d) => d,
    };
    // An upper bound on the keys a unique-key run can use.
    let needed = match cli.keyspace {
        0 => cli
            .total
            .map_or(1_000_000_000, |t| t + warmup_ops(cli.warmup)),
        n => n,
    };
    let workload = |ratio, keyspace| {
        Workload::new(
            &cli.key_prefix,
            cli.key_size as usize,
            cli.value_size as usize,
            ratio,
            keyspace,
            needed,
        )
    };
    let ticks = procstat::clock_ticks();

    if cli.prefill {
        // Keys 0..keyspace once each: the unique-key sequence writes exactly them.
        let phase = Phase {
            clients,
            conns,
            rate: None,
            warmup: Warmup::Ops(0),
            duration: None,
            total: Some(cli.keyspace),
        };
        let t = Instant::now();
        let r = run_phase(
            &phase,
            workload(1.0, 0)?,
            &endpoints,
            tls.as_ref(),
            cli,
            &[],
            ticks,
        );
        eprintln!(
            "raftbench: prefilled {} keys in {:.1} s ({} errors)",
            r.rec.puts,
            t.elapsed().as_secs_f64(),
            r.rec.error_count()
        );
    }

    let measured = workload(cli.ratio, cli.keyspace)?;
    let phase = Phase {
        clients,
        conns,
        rate: cli.rate,
        warmup: cli.warmup,
        duration,
        total: cli.total,
    };
    let report = run_phase(
        &phase,
        measured,
        &endpoints,
        tls.as_ref(),
        cli,
        &cli.pids,
        ticks,
    );
    if cli.json {
        println!("{}", json_line(cli, &phase, &report));
    } else if cli.csv {
        println!("{}", csv_line(cli, &phase, &report));
    } else {
        print!("{}", text_report(cli, &phase, &report));
    }
    Ok(if report.rec.ok_ops() == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Asks every endpoint for its `STATUS` before the run, through the client
/// library (`raftnode::client`): says on stderr which node leads and which
/// endpoints did not answer, and refuses to start when none answers, rather
/// than measuring connection errors. The measured loop keeps its own
/// connections (`bench/clients.rs`): it pipelines, which the library does
/// not.
fn preflight(cli: &Cli) -> Result<(), String> {
    let mut b = Client::builder(cli.endpoints.iter().map(|e| e.trim().to_string()))
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(cli.timeout.min(Duration::from_secs(5)));
    if let Some(ca) = &cli.tls_ca {
        let tls = ClientTls::new(ca, None)
            .and_then(|t| t.server_name(&cli.tls_server_name))
            .map_err(|e| format!("--tls-ca: {e}"))?;
        b = b.tls(tls);
    }
    let all = b.build().map_err(|e| e.to_string())?.status_each();
    let mut leaders = Vec::new();
    for e in &all {
        match &e.result {
            Ok((s, _)) => leaders.extend(s.leader),
            Err(err) => eprintln!(
                "raftbench: endpoint {} did not answer STATUS: {err}",
                e.endpoint
            ),
        }
    }
    if all.iter().all(|e| e.result.is_err()) {
        return Err("no endpoint answered STATUS; is the cluster running?".into());
    }
    leaders.sort_unstable();
    leaders.dedup();
    match leaders.as_slice() {
        [] => eprintln!("raftbench: no node knows a leader yet"),
        [one] => eprintln!("raftbench: node {one} leads"),
        many => eprintln!("raftbench: the endpoints name different leaders: {many:?}"),
    }
    Ok(())
}

fn warmup_ops(w: Warmup) -> u64 {
    match w {
        Warmup::Ops(n) => n,
        Warmup::Time(_) => 0,
    }
}

fn resolve(endpoints: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for e in endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let addr = e
            .to_socket_addrs()
            .map_err(|err| format!("endpoint {e:?}: {err}"))?
            .next()
            .ok_or_else(|| format!("endpoint {e:?} resolves to no address"))?;
        out.push(addr);
    }
    if out.is_empty() {
        return Err("--endpoints names no address".into());
    }
    Ok(out)
}

/// Runs one phase to the end and gathers its figures.
fn run_phase(
    phase: &Phase,
    workload: Workload,
    endpoints: &[SocketAddr],
    tls: Option<&Tls>,
    cli: &Cli,
    pids: &[u32],
    ticks: f64,
) -> Report {
    let threads = phase.conns.unwrap_or(phase.clients);
    let (warmup_ops, warmup_time) = match phase.warmup {
        Warmup::Ops(n) => (n, Duration::ZERO),
        Warmup::Time(t) => (0, t),
    };
    let sh = Arc::new(Shared {
        workload,
        endpoints: endpoints.to_vec(),
        tls: tls.cloned(),
        clients: phase.clients,
        rate: phase.rate,
        warmup_ops,
        warmup_time,
        duration: phase.duration,
        total: phase.total,
        timeout: cli.timeout,
        seed: cli.seed,
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        start: OnceLock::new(),
        barrier: Barrier::new(threads + 1),
        connect_error_shown: AtomicBool::new(false),
    });
    let stack = (cli.stack_kib as usize) << 10;
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let sh = Arc::clone(&sh);
        let builder = thread::Builder::new().stack_size(stack);
        let spawned = match phase.conns {
            None => builder
                .name(format!("client-{t}"))
                .spawn(move || clients::run_dedicated(&sh, t)),
            Some(m) => {
                let mine: Vec<usize> = (t..phase.clients).step_by(m).collect();
                builder
                    .name(format!("writer-{t}"))
                    .spawn(move || clients::run_shared(&sh, t, mine))
            }
        };
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The barrier counts on every thread; without them all, give up.
                eprintln!("raftbench: cannot start client thread {t} of {threads}: {e}");
                std::process::exit(2);
            }
        }
    }
    sh.barrier.wait(); // everyone is connected (or retrying)
    let start = Instant::now();
    sh.start.set(start).expect("set once");
    sh.barrier.wait();

    // Sample the servers where the measured interval starts...
    match phase.warmup {
        Warmup::Time(t) => thread::sleep(t),
        Warmup::Ops(n) => {
            while sh.issued.load(Ordering::Relaxed) < n && !handles.iter().all(|h| h.is_finished())
            {
                thread::sleep(Duration::from_millis(2));
            }
        }
    }
    let before: Vec<_> = pids
        .iter()
        .map(|p| procstat::sample(&p.to_string()))
        .collect();
    let self_before = procstat::sample("self");
    // ...and where it ends.
    if let Some(end) = sh.end() {
        let now = Instant::now();
        if end > now {
            thread::sleep(end - now);
        }
    } else {
        while !handles.iter().all(|h| h.is_finished()) {
            thread::sleep(Duration::from_millis(5));
        }
    }
    let after: Vec<_> = pids
        .iter()
        .map(|p| procstat::sample(&p.to_string()))
        .collect();
    let self_after = procstat::sample("self");
    sh.stop.store(true, Ordering::Relaxed);

    let mut rec = Recorder::default();
    for h in handles {
        match h.join() {
            Ok(r) => rec.merge(r),
            Err(_) => rec.error("CLIENT_PANIC"),
        }
    }
    let window_start = match phase.warmup {
        Warmup::Time(t) => Some(start + t),
        Warmup::Ops(0) => Some(start),
        Warmup::Ops(_) => rec.first,
    };
    let window_end = sh.end().or(rec.last);
    let secs = match (window_start, window_end) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let cpu = |b: Option<procstat::Sample>, a: Option<procstat::Sample>| match (b, a) {
        (Some(b), Some(a)) => Some(NodeUse {
            cpu_s: a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / ticks,
            rss_kib: a.rss_kib,
            ctx_switches: a.ctx_switches.saturating_sub(b.ctx_switches),
        }),
        _ => None,
    };
    Report {
        rec,
        secs,
        nodes: pids
            .iter()
            .zip(before.into_iter().zip(after))
            .map(|(&p, (b, a))| (p, cpu(b, a)))
            .collect(),
        self_cpu: cpu(self_before, self_after).map(|u| u.cpu_s),
    }
}

const CSV_HEADER: &str =
    "clients,conns,endpoints,ratio,key_size,value_size,keyspace,rate,secs,ops,ops_per_s,\
puts,gets,not_found,errors,min_us,p50_us,p90_us,p99_us,p999_us,max_us,mean_us,error_codes,\
node_cpu_s,node_rss_mib,bench_cpu_s,node_cpu_us_per_op,node_ctx_per_op";

fn ops_per_sec(r: &Report) -> f64 {
    if r.secs > 0.0 {
        r.rec.ok_ops() as f64 / r.secs
    } else {
        0.0
    }
}

fn percentiles(r: &Report) -> [u64; 6] {
    let h = &r.rec.latency;
    [
        h.min(),
        h.percentile(50.0),
        h.percentile(90.0),
        h.percentile(99.0),
        h.percentile(99.9),
        h.max(),
    ]
}

fn csv_line(cli: &Cli, phase: &Phase, r: &Report) -> String {
    let p = percentiles(r);
    let codes: Vec<String> = r
        .rec
        .errors
        .iter()
        .map(|(c, n)| format!("{c}={n}"))
        .collect();
    let per_node = |f: &dyn Fn(&NodeUse) -> Option<String>| -> Vec<String> {
        r.nodes
            .iter()
            .map(|(_, u)| u.as_ref().and_then(f).unwrap_or_else(|| "-".into()))
            .collect()
    };
    let ops = r.rec.ok_ops();
    let cpus = per_node(&|u| Some(format!("{:.2}", u.cpu_s)));
    let rss = per_node(&|u| Some(format!("{:.1}", u.rss_kib as f64 / 1024.0)));
    let cpu_per_op = per_node(&|u| u.cpu_us_per_op(ops).map(|v| format!("{v:.1}")));
    let ctx_per_op = per_node(&|u| u.ctx_per_op(ops).map(|v| format!("{v:.2}")));
    let or_dash = |v: Vec<String>| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(";")
        }
    };
    format!(
        "{},{},{},{},{},{},{},{},{:.3},{},{:.1},{},{},{},{},{},{},{},{},{},{},{:.0},{},{},{},{},{},{}",
        phase.clients,
        phase.conns.unwrap_or(phase.clients),
        cli.endpoints.len(),
        cli.ratio,
        cli.key_size,
        cli.value_size,
        cli.keyspace,
        cli.rate.map_or("-".into(), |r| r.to_string()),
        r.secs,
        r.rec.ok_ops(),
        ops_per_sec(r),
        r.rec.puts,
        r.rec.gets,
        r.rec.not_found,
        r.rec.error_count(),
        p[0],
        p[1],
        p[2],
        p[3],
        p[4],
        p[5],
        r.rec.latency.mean(),
        or_dash(codes),
        or_dash(cpus),
        or_dash(rss),
        r.self_cpu.map_or("-".into(), |c| format!("{c:.2}")),
        or_dash(cpu_per_op),
        or_dash(ctx_per_op),
    )
}

/// A JSON string literal (the only strings are addresses and error codes).
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_line(cli: &Cli, phase: &Phase, r: &Report) -> String {
    let p = percentiles(r);
    let endpoints: Vec<String> = cli.endpoints.iter().map(|e| json_str(e)).collect();
    let errors: Vec<String> = r
        .rec
        .errors
        .iter()
        .map(|(c, n)| format!("{}:{n}", json_str(c)))
        .collect();
    let nodes: Vec<String> = r
        .nodes
        .iter()
        .map(|(pid, u)| match u {
            Some(u) => format!(
                "{{\"pid\":{pid},\"cpu_s\":{:.3},\"rss_kib\":{},\"ctx_switches\":{},\
\"cpu_us_per_op\":{},\"ctx_per_op\":{}}}",
                u.cpu_s,
                u.rss_kib,
                u.ctx_switches,
                u.cpu_us_per_op(r.rec.ok_ops())
                    .map_or("null".into(), |v| format!("{v:.2}")),
                u.ctx_per_op(r.rec.ok_ops())
                    .map_or("null".into(), |v| format!("{v:.3}")),
            ),
            None => format!(
                "{{\"pid\":{pid},\"cpu_s\":null,\"rss_kib\":null,\"ctx_switches\":null,\
\"cpu_us_per_op\":null,\"ctx_per_op\":null}}"
            ),
        })
        .collect();
    format!(
        "{{\"clients\":{},\"conns\":{},\"endpoints\":[{}],\"ratio\":{},\"key_size\":{},\"value_size\":{},\
\"keyspace\":{},\"rate\":{},\"secs\":{:.3},\"ops\":{},\"ops_per_s\":{:.1},\"puts\":{},\"gets\":{},\
\"not_found\":{},\"errors\":{},\"error_codes\":{{{}}},\"latency_us\":{{\"min\":{},\"p50\":{},\"p90\":{},\
\"p99\":{},\"p999\":{},\"max\":{},\"mean\":{:.1}}},\"nodes\":[{}],\"bench_cpu_s\":{}}}",
        phase.clients,
        phase.conns.unwrap_or(phase.clients),
        endpoints.join(","),
        cli.ratio,
        cli.key_size,
        cli.value_size,
        cli.keyspace,
        cli.rate.map_or("null".into(), |r| r.to_string()),
        r.secs,
        r.rec.ok_ops(),
        ops_per_sec(r),
        r.rec.puts,
        r.rec.gets,
        r.rec.not_found,
        r.rec.error_count(),
        errors.join(","),
        p[0],
        p[1],
        p[2],
        p[3],
        p[4],
        p[5],
        r.rec.latency.mean(),
        nodes.join(","),
        r.self_cpu.map_or("null".into(), |c| format!("{c:.3}")),
    )
}

/// Microseconds for people: 850us, 2.41ms, 1.20s.
fn human_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

fn text_report(cli: &Cli, phase: &Phase, r: &Report) -> String {
    let mut s = String::new();
    let conns = phase.conns.unwrap_or(phase.clients);
    let _ = writeln!(
        s,
        "raftbench: {} clients on {} {}connections to {}",
        phase.clients,
        conns,
        if cli.tls_ca.is_some() { "TLS " } else { "" },
        cli.endpoints.join(",")
    );
    let keys = match cli.keyspace {
        0 => "unique keys".to_owned(),
        n => format!("{n} keys{}", if cli.prefill { " (prefilled)" } else { "" }),
    };
    let pacing = match cli.rate {
        Some(rate) => format!("open loop at {rate} ops/s"),
        None => "closed loop".to_owned(),
    };
    let warm = match cli.warmup {
        Warmup::Time(t) => format!("{:.1}s warmup", t.as_secs_f64()),
        Warmup::Ops(n) => format!("{n} ops warmup"),
    };
    let _ = writeln!(
        s,
        "workload:  {:.0}% PUT, key {} B, value {} B, {keys}, {pacing}, {warm}",
        cli.ratio * 100.0,
        cli.key_size,
        cli.value_size
    );
    let _ = writeln!(
        s,
        "measured:  {} ops in {:.2} s: {:.1} ops/s ({} PUT, {} GET of which {} NOT_FOUND)",
        r.rec.ok_ops(),
        r.secs,
        ops_per_sec(r),
        r.rec.puts,
        r.rec.gets,
        r.rec.not_found
    );
    let p = percentiles(r);
    let _ = writeln!(
        s,
        "latency:   min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
        human_us(p[0]),
        human_us(p[1]),
        human_us(p[2]),
        human_us(p[3]),
        human_us(p[4]),
        human_us(p[5]),
        human_us(r.rec.latency.mean() as u64)
    );
    if r.rec.latency.saturated() > 0 {
        let _ = writeln!(
            s,
            "           ({} latencies beyond the histogram's 71 minutes)",
            r.rec.latency.saturated()
        );
    }
    if r.rec.errors.is_empty() {
        let _ = writeln!(s, "errors:    none");
    } else {
        let codes: Vec<String> = r
            .rec
            .errors
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "errors:    {} ({})",
            r.rec.error_count(),
            codes.join(", ")
        );
    }
    for (pid, sample) in &r.nodes {
        match sample {
            Some(u) => {
                let cores = if r.secs > 0.0 { u.cpu_s / r.secs } else { 0.0 };
                let per_op = match (
                    u.cpu_us_per_op(r.rec.ok_ops()),
                    u.ctx_per_op(r.rec.ok_ops()),
                ) {
                    (Some(c), Some(x)) => {
                        format!(", {c:.1} us CPU and {x:.2} context switches per op")
                    }
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "pid {pid}: {:.2} CPU s ({cores:.2} cores){per_op}, RSS {:.1} MiB",
                    u.cpu_s,
                    u.rss_kib as f64 / 1024.0
                );
            }
            None => {
                let _ = writeln!(s, "pid {pid}: not readable in /proc");
            }
        }
    }
    if let Some(c) = r.self_cpu {
        let _ = writeln!(s, "raftbench: {c:.2} CPU s of its own");
    }
    s
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
    fn tls_is_refused_with_shared_connections() {
        let err =
            Cli::try_parse_from(["raftbench", "--tls-ca", "ca.pem", "--conns", "4"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn tls_server_name_needs_a_ca_and_defaults_to_localhost() {
        let err = Cli::try_parse_from(["raftbench", "--tls-server-name", "node-1"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let cli = Cli::try_parse_from(["raftbench", "--tls-ca", "ca.pem"]).unwrap();
        assert_eq!(cli.tls_server_name, "localhost");
    }
}
