//! Scenario scripts: a command language over a [`Cluster`], with the
//! expected trace written under each command.
//!
//! A script is a sequence of blocks. `#` lines and blank lines between blocks
//! are comments and are kept as they are. A block is one command line, a
//! `----` line, then the expected output up to the next blank line (or the
//! end of the file). A command with no output expects `ok`.
//!
//! ```text
//! # Node 1 campaigns and wins.
//! campaign 1
//! ----
//! 1 is precandidate term=0 vote=0 lead=0
//! ```
//!
//! Output that holds blank lines uses the doubled separator of etcd's
//! datadriven format: `----` twice after the command, and the output runs
//! until `----` twice. Rewriting a script uses this form for exactly the
//! blocks whose output holds a blank line.
//!
//! ```text
//! some-command
//! ----
//! ----
//! first paragraph
//!
//! second paragraph
//! ----
//! ----
//! ```
//!
//! Commands (ids are node ids; lists are comma-separated):
//!
//! | command | what it does |
//! | --- | --- |
//! | `cluster N [opts]` | nodes 1..N, all voters; opts: `pre-vote=`, `check-quorum=` (true/false), `election=`, `heartbeat=`, `max-msg-size=`, `max-inflight=` |
//! | `add-nodes N [voters=..] [learners=..]` | N more nodes with empty logs (default: no membership, waiting to be added) |
//! | `set-log ID terms=1,1,2 [term=T] [vote=V] [commit=C]` | replace ID's durable log and restart it |
//! | `campaign ID` | ID starts an election |
//! | `propose ID DATA...` | ID proposes the rest of the line (`put k=v` sets a key) |
//! | `propose-conf ID add\|remove\|add-learner N` | ID proposes a membership change |
//! | `read-index ID CTX` | ID asks for a read index |
//! | `transfer ID TARGET` | ID asks for leadership to move to TARGET |
//! | `tick ID [N]`, `tick-all [N]` | logical clock ticks (default 1) |
//! | `process-ready [ID...]` | one Ready/Advance cycle on the nodes (default all) |
//! | `deliver [from=..] [to=..] [type=..] [drop=..]` | deliver queued messages; `drop=` lists recipients whose messages are lost instead |
//! | `drop [from=..] [to=..] [type=..]` | lose queued messages |
//! | `partition G [G...]` / `heal` | cut the network into groups (unlisted nodes form one more) / reconnect |
//! | `stabilize [from=..] [to=..] [type=..]` | Ready/Advance everywhere and deliver (only the selected messages), until quiet |
//! | `restart ID` | crash and restart: lose what was not handed to storage |
//! | `lose ID suffix=K [hardstate]`, `lose ID all` | crash, lose durable entries after K (and the hard state), or everything, and restart recovering |
//! | `compact ID INDEX` | snapshot the state machine at INDEX and compact the log |
//! | `report-unreachable ID PEER`, `report-snapshot ID PEER ok\|fail` | transport feedback |
//! | `inject FROM->TO TYPE term=T ...` | step a hand-made message into TO, written as traces print it (see below) |
//! | `status ID`, `log ID`, `raft-state` | views |
//!
//! `inject` builds `heartbeat [commit=C] [ctx=X]`, `heartbeat_response
//! [ctx=X]`, `vote`/`prevote [last=I/T] [transfer]`,
//! `vote_response`/`prevote_response granted|rejected`, `append_response
//! index=I [rejected hint=I/T]`, `timeout_now`, `term_report reported=T`,
//! `member_query ids=..` and `member_report members=..`; FROM need not be a
//! node of the cluster, for messages from strangers.
//!
//! Traces are described in the harness module docs (`harness/mod.rs`); a
//! message that may leave only after its Ready is persisted ends in
//! ` (after persist)`.
//!
//! Set `UPDATE_SCENARIOS=1` to rewrite the expected output with the actual.

use std::path::Path;

use raftnode::raft::{ConfChangeKind, ConfState, Message, MessageBody, NodeId};

use super::cluster::{conf, Cluster, Filter, Loss, Options};

/// Ends a command line; twice, it opens and closes output with blank lines.
const SEPARATOR: &str = "----";

/// A command and the output expected from it.
#[derive(Debug)]
pub struct Block {
    /// 1-based line of the command in the file.
    pub line: usize,
    pub command: String,
    pub expected: Vec<String>,
}

/// A script as parsed: comments kept verbatim, and blocks.
#[derive(Debug)]
pub enum Item {
    Text(String),
    Block(Block),
}

/// Parses a script; an error names the line of the command at fault.
pub fn parse(src: &str) -> Result<Vec<Item>, String> {
    let lines: Vec<&str> = src.lines().collect();
    let separator = |i: usize| lines.get(i).map(|s| s.trim_end()) == Some(SEPARATOR);
    let mut items = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.trim().is_empty() || l.starts_with('#') {
            items.push(Item::Text(l.to_string()));
            i += 1;
            continue;
        }
        if !separator(i + 1) {
            return Err(format!(
                "line {}: expected `{SEPARATOR}` after command `{l}`",
                i + 1
            ));
        }
        let mut expected = Vec::new();
        let mut j = i + 2;
        if separator(j) {
            // Doubled: the output runs to the next pair of separators.
            j += 1;
            while !(separator(j) && separator(j + 1)) {
                let Some(line) = lines.get(j) else {
                    return Err(format!(
                        "line {}: the output of `{l}` opens with `{SEPARATOR}` twice \
                         but is never closed by `{SEPARATOR}` twice",
                        i + 1
                    ));
                };
                expected.push(line.trim_end().to_string());
                j += 1;
            }
            j += 2;
        } else {
            while j < lines.len() && !lines[j].trim().is_empty() {
                expected.push(lines[j].trim_end().to_string());
                j += 1;
            }
        }
        items.push(Item::Block(Block {
            line: i + 1,
            command: l.trim().to_string(),
            expected,
        }));
        i = j;
    }
    Ok(items)
}

/// Writes a script back, with `actual[k]` as the output of the k-th block.
pub fn render(items: &[Item], actual: &[Vec<String>]) -> String {
    let mut out = String::new();
    let mut k = 0;
    for item in items {
        match item {
            Item::Text(t) => {
                out.push_str(t);
                out.push('\n');
            }
            Item::Block(b) => {
                let lines = &actual[k];
                k += 1;
                // A blank line would end a single-separator block early.
                let doubled = lines.iter().any(|l| l.trim().is_empty());
                let fence = if doubled {
                    format!("{SEPARATOR}\n{SEPARATOR}\n")
                } else {
                    format!("{SEPARATOR}\n")
                };
                out.push_str(&b.command);
                out.push('\n');
                out.push_str(&fence);
                for l in lines {
                    out.push_str(l);
                    out.push('\n');
                }
                if doubled {
                    out.push_str(&fence);
                }
            }
        }
    }
    out
}

/// Runs the script at `path`. Returns a description of every block whose
/// output differs from the expected one. With `update`, rewrites the file.
pub fn run_file(path: &Path, update: bool) -> Result<(), String> {
    let src = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let items = parse(&src).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut runner = Runner::default();
    let mut actual = Vec::new();
    let mut failures = Vec::new();
    for item in &items {
        let Item::Block(b) = item else { continue };
        let got = runner.run(&b.command);
        if got != b.expected {
            failures.push(format!(
                "{}:{}: `{}`\n--- expected\n{}\n--- actual\n{}\n",
                path.display(),
                b.line,
                b.command,
                b.expected.join("\n"),
                got.join("\n")
            ));
        }
        actual.push(got);
    }
    if let Some(c) = &runner.cluster {
        if !c.anomalies.is_empty() {
            failures.push(format!(
                "{}: safety violations: {:?}",
                path.display(),
                c.anomalies
            ));
        }
    }
    if update {
        let new = render(&items, &actual);
        if new != src {
            std::fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        return Ok(());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// Executes commands against one cluster.
#[derive(Default)]
pub struct Runner {
    pub cluster: Option<Cluster>,
}

/// A command line split into positional words and `key=value` options.
struct Args<'a> {
    pos: Vec<&'a str>,
    opts: Vec<(&'a str, &'a str)>,
}

impl<'a> Args<'a> {
    fn parse(words: &[&'a str]) -> Args<'a> {
        let mut a = Args {
            pos: Vec::new(),
            opts: Vec::new(),
        };
        for w in words {
            match w.split_once('=') {
                Some((k, v)) => a.opts.push((k, v)),
                None => a.pos.push(w),
            }
        }
        a
    }

    fn id(&self, i: usize) -> Result<NodeId, String> {
        let w = self.pos.get(i).ok_or("missing node id")?;
        w.parse().map_err(|_| format!("bad node id `{w}`"))
    }

    fn num_or(&self, i: usize, default: u64) -> Result<u64, String> {
        match self.pos.get(i) {
            None => Ok(default),
            Some(w) => w.parse().map_err(|_| format!("bad number `{w}`")),
        }
    }

    fn opt(&self, k: &str) -> Option<&'a str> {
        self.opts.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
    }

    fn ids_opt(&self, k: &str) -> Result<Option<Vec<NodeId>>, String> {
        self.opt(k).map(parse_ids).transpose()
    }

    fn num_opt(&self, k: &str) -> Result<Option<u64>, String> {
        self.opt(k)
            .map(|v| v.parse().map_err(|_| format!("bad number `{v}` for {k}")))
            .transpose()
    }

    /// `k=I/T`, as traces print an index and its term.
    fn pair_opt(&self, k: &str) -> Result<Option<(u64, u64)>, String> {
        self.opt(k)
            .map(|v| {
                let (a, b) = v.split_once('/').ok_or(format!("`{k}={v}` is not I/T"))?;
                Ok((
                    a.parse().map_err(|_| format!("bad number `{a}` in {k}"))?,
                    b.parse().map_err(|_| format!("bad number `{b}` in {k}"))?,
                ))
            })
            .transpose()
    }

    fn bool_opt(&self, k: &str) -> Result<Option<bool>, String> {
        self.opt(k)
            .map(|v| v.parse().map_err(|_| format!("bad bool `{v}` for {k}")))
            .transpose()
    }
}

fn parse_ids(s: &str) -> Result<Vec<NodeId>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|w| w.parse().map_err(|_| format!("bad node id `{w}`")))
        .collect()
}

impl Runner {
    /// Runs one command and returns its output lines (`ok` if none).
    pub fn run(&mut self, command: &str) -> Vec<String> {
        let mut out = match self.exec(command) {
            Ok(lines) => lines,
            Err(e) => vec![format!("error: {e}")],
        };
        if let Some(c) = &mut self.cluster {
            let mut trace = c.take_trace();
            trace.append(&mut out);
            out = trace;
        }
        if out.is_empty() {
            out.push("ok".to_string());
        }
        out
    }

    fn cluster(&mut self) -> Result<&mut Cluster, String> {
        self.cluster
            .as_mut()
            .ok_or_else(|| "no cluster: start with `cluster N`".to_string())
    }

    fn known(&mut self, id: NodeId) -> Result<&mut Cluster, String> {
        let c = self.cluster()?;
        if c.nodes.contains_key(&id) {
            Ok(c)
        } else {
            Err(format!("no node {id}"))
        }
    }

    fn exec(&mut self, command: &str) -> Result<Vec<String>, String> {
        let words: Vec<&str> = command.split_whitespace().collect();
        let (&name, rest) = words.split_first().ok_or("empty command")?;
        // `propose` takes the raw rest of the line, which may contain `=`.
        if name == "propose" {
            let id: NodeId = rest
                .first()
                .and_then(|w| w.parse().ok())
                .ok_or("usage: propose ID DATA...")?;
            let data = rest[1..].join(" ");
            let _ = self.known(id)?.propose(id, &data);
            return Ok(Vec::new());
        }
        let a = Args::parse(rest);
        match name {
            "cluster" => {
                let n = a.num_or(0, 3)?;
                let opts = options(&a)?;
                self.cluster = Some(Cluster::new(n, opts));
                Ok(Vec::new())
            }
            "add-nodes" => {
                let n = a.num_or(0, 1)?;
                let cs = ConfState {
                    voters: a.ids_opt("voters")?.unwrap_or_default(),
                    learners: a.ids_opt("learners")?.unwrap_or_default(),
                };
                let c = self.cluster()?;
                let first = c.nodes.keys().max().copied().unwrap_or(0) + 1;
                let mut out = Vec::new();
                for id in first..first + n {
                    c.add_node(id, cs.clone());
                    let st = c.node(id).status();
                    out.push(format!(
                        "{id} added: {} {}",
                        super::fmt::role_line(&st),
                        super::fmt::conf_state(&st.conf_state)
                    ));
                }
                Ok(out)
            }
            "set-log" => {
                let id = a.id(0)?;
                let terms = a.ids_opt("terms")?.unwrap_or_default();
                let term = a.num_opt("term")?;
                let vote = a.num_opt("vote")?.unwrap_or(0);
                let commit = a.num_opt("commit")?.unwrap_or(0);
                self.known(id)?.set_log(id, &terms, term, vote, commit);
                Ok(Vec::new())
            }
            "campaign" => {
                let id = a.id(0)?;
                self.known(id)?.campaign(id);
                Ok(Vec::new())
            }
            "propose-conf" => {
                let id = a.id(0)?;
                let kind = match a.pos.get(1).copied() {
                    Some("add") => ConfChangeKind::AddNode,
                    Some("remove") => ConfChangeKind::RemoveNode,
                    Some("add-learner") => ConfChangeKind::AddLearner,
                    _ => return Err("usage: propose-conf ID add|remove|add-learner N".into()),
                };
                let target = a.id(2)?;
                let _ = self.known(id)?.propose_conf(id, conf(kind, target));
                Ok(Vec::new())
            }
            "read-index" => {
                let id = a.id(0)?;
                let ctx = a.pos.get(1).ok_or("usage: read-index ID CTX")?.to_string();
                let _ = self.known(id)?.read_index(id, &ctx);
                Ok(Vec::new())
            }
            "transfer" => {
                let id = a.id(0)?;
                let target = a.id(1)?;
                let _ = self.known(id)?.transfer(id, target);
                Ok(Vec::new())
            }
            "tick" => {
                let id = a.id(0)?;
                let n = a.num_or(1, 1)? as usize;
                self.known(id)?.tick(id, n);
                Ok(Vec::new())
            }
            "tick-all" => {
                let n = a.num_or(0, 1)? as usize;
                self.cluster()?.tick_all(n);
                Ok(Vec::new())
            }
            "process-ready" => {
                let c = self.cluster()?;
                let ids = if a.pos.is_empty() {
                    c.ids()
                } else {
                    (0..a.pos.len())
                        .map(|i| a.id(i))
                        .collect::<Result<_, _>>()?
                };
                for id in ids {
                    if !c.nodes.contains_key(&id) {
                        return Err(format!("no node {id}"));
                    }
                    c.process_ready(id);
                }
                Ok(Vec::new())
            }
            "deliver" | "drop" => {
                let f = filter(&a)?;
                let c = self.cluster()?;
                let n = if name == "deliver" {
                    c.deliver(&f)
                } else {
                    c.drop(&f)
                };
                if n == 0 && c.queue.is_empty() && name == "deliver" {
                    return Ok(vec!["no messages".to_string()]);
                }
                Ok(Vec::new())
            }
            "partition" => {
                let groups = a
                    .pos
                    .iter()
                    .map(|g| parse_ids(g))
                    .collect::<Result<Vec<_>, _>>()?;
                if groups.is_empty() {
                    return Err("usage: partition 1,2 3".into());
                }
                self.cluster()?.partition(groups);
                Ok(Vec::new())
            }
            "heal" => {
                self.cluster()?.heal();
                Ok(Vec::new())
            }
            "stabilize" => {
                let f = filter(&a)?;
                self.cluster()?.stabilize_only(&f);
                Ok(Vec::new())
            }
            "restart" => {
                let id = a.id(0)?;
                self.known(id)?.restart(id);
                Ok(Vec::new())
            }
            "lose" => {
                let id = a.id(0)?;
                let loss = match (a.num_opt("suffix")?, a.pos.contains(&"hardstate")) {
                    (Some(k), false) => Loss::Suffix(k),
                    (Some(k), true) => Loss::SuffixAndHardState(k),
                    (None, _) if a.pos.contains(&"all") => Loss::Everything,
                    _ => return Err("usage: lose ID suffix=K [hardstate] | lose ID all".into()),
                };
                self.known(id)?.lose(id, loss);
                Ok(Vec::new())
            }
            "compact" => {
                let id = a.id(0)?;
                let index = a.num_or(1, 0)?;
                self.known(id)?.compact(id, index);
                Ok(Vec::new())
            }
            "report-unreachable" => {
                let id = a.id(0)?;
                let peer = a.id(1)?;
                self.known(id)?.report_unreachable(id, peer);
                Ok(Vec::new())
            }
            "report-snapshot" => {
                let id = a.id(0)?;
                let peer = a.id(1)?;
                let ok = match a.pos.get(2).copied() {
                    Some("ok") => true,
                    Some("fail") => false,
                    _ => return Err("usage: report-snapshot ID PEER ok|fail".into()),
                };
                self.known(id)?.report_snapshot(id, peer, ok);
                Ok(Vec::new())
            }
            "inject" => {
                let m = message(&a)?;
                self.known(m.to)?.step(m);
                Ok(Vec::new())
            }
            "status" => {
                let id = a.id(0)?;
                Ok(self.known(id)?.status(id))
            }
            "log" => {
                let id = a.id(0)?;
                Ok(self.known(id)?.log(id))
            }
            "raft-state" => Ok(self.cluster()?.raft_state()),
            other => Err(format!("unknown command `{other}`")),
        }
    }
}

fn filter(a: &Args) -> Result<Filter, String> {
    Ok(Filter {
        from: a.ids_opt("from")?,
        to: a.ids_opt("to")?,
        types: a
            .opt("type")
            .map(|t| t.split(',').map(str::to_string).collect()),
        drop_to: a.ids_opt("drop")?.unwrap_or_default(),
    })
}

/// The message of an `inject` line, written as traces print messages:
/// `8->1 heartbeat term=4 commit=0`.
fn message(a: &Args) -> Result<Message, String> {
    let usage = "usage: inject FROM->TO TYPE term=T [fields]";
    let (from, to) = a
        .pos
        .first()
        .and_then(|w| w.split_once("->"))
        .ok_or(usage)?;
    let (from, to) = (parse_ids(from)?, parse_ids(to)?);
    let ([from], [to]) = (from.as_slice(), to.as_slice()) else {
        return Err(usage.into());
    };
    let kind = *a.pos.get(1).ok_or(usage)?;
    let flag = |f: &str| a.pos.iter().skip(2).any(|w| *w == f);
    let context = a.opt("ctx").unwrap_or_default().as_bytes().to_vec();
    let pre = kind.starts_with("pre");
    let body = match kind {
        "heartbeat" => MessageBody::Heartbeat {
            commit: a.num_opt("commit")?.unwrap_or(0),
            context,
        },
        "heartbeat_response" => MessageBody::HeartbeatResponse {
            context,
            recovery: a.num_opt("recovery")?.unwrap_or(0),
        },
        "vote" | "prevote" => {
            let (last_index, last_term) = a.pair_opt("last")?.unwrap_or((0, 0));
            MessageBody::RequestVote {
                pre,
                last_index,
                last_term,
                transfer: flag("transfer"),
                campaign: a.num_opt("campaign")?.unwrap_or(0),
            }
        }
        "vote_response" | "prevote_response" => MessageBody::RequestVoteResponse {
            pre,
            reject: flag("rejected"),
            campaign: a.num_opt("campaign")?.unwrap_or(0),
        },
        "append_response" => {
            let (reject_hint, hint_term) = a.pair_opt("hint")?.unwrap_or((0, 0));
            MessageBody::AppendResponse {
                index: a.num_opt("index")?.unwrap_or(0),
                reject: flag("rejected"),
                reject_hint,
                hint_term,
                recovery: a.num_opt("recovery")?.unwrap_or(0),
            }
        }
        "timeout_now" => MessageBody::TimeoutNow,
        // `append prev=I/T entries=N commit=C`: N entries after I, of the
        // message's term, each `put x=injected`.
        "append" => {
            let (prev_index, prev_term) = a.pair_opt("prev")?.unwrap_or((0, 0));
            let term = a.num_opt("term")?.unwrap_or(0);
            let n = a.num_opt("entries")?.unwrap_or(0);
            let entries = (1..=n)
                .map(|k| raftnode::raft::Entry {
                    index: prev_index + k,
                    term,
                    kind: raftnode::raft::EntryKind::Normal,
                    data: b"put x=injected".to_vec(),
                })
                .collect();
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit: a.num_opt("commit")?.unwrap_or(0),
            }
        }
        "term_report" => MessageBody::TermReport {
            term: a.num_opt("reported")?.unwrap_or(0),
        },
        "member_query" => MessageBody::MemberQuery {
            ids: a.ids_opt("ids")?.unwrap_or_default(),
        },
        "member_report" => MessageBody::MemberReport {
            members: a.ids_opt("members")?.unwrap_or_default(),
        },
        // `propose`: one entry `put x=injected`, as a follower forwards it.
        "propose" => MessageBody::Propose {
            entries: vec![raftnode::raft::Entry::normal(b"put x=injected".to_vec())],
        },
        other => return Err(format!("inject cannot build `{other}` messages")),
    };
    Ok(super::msg(
        *from,
        *to,
        a.num_opt("term")?.unwrap_or(0),
        body,
    ))
}

fn options(a: &Args) -> Result<Options, String> {
    let mut o = Options::default();
    if let Some(v) = a.bool_opt("pre-vote")? {
        o.pre_vote = v;
    }
    if let Some(v) = a.bool_opt("check-quorum")? {
        o.check_quorum = v;
    }
    if let Some(v) = a.num_opt("election")? {
        o.election_ticks = v as usize;
    }
    if let Some(v) = a.num_opt("heartbeat")? {
        o.heartbeat_ticks = v as usize;
    }
    if let Some(v) = a.num_opt("max-msg-size")? {
        o.max_size_per_msg = v;
    }
    if let Some(v) = a.num_opt("max-inflight")? {
        o.max_inflight_msgs = v as usize;
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(items: &[Item]) -> Vec<(usize, &str, Vec<&str>)> {
        items
            .iter()
            .filter_map(|it| match it {
                Item::Block(b) => Some((
                    b.line,
                    b.command.as_str(),
                    b.expected.iter().map(String::as_str).collect(),
                )),
                Item::Text(_) => None,
            })
            .collect()
    }

    #[test]
    fn single_separator_output_ends_at_a_blank_line() {
        let src = "# comment\ncluster 3\n----\nok\n\ncampaign 1\n----\na\nb\n";
        let items = parse(src).unwrap();
        assert_eq!(
            blocks(&items),
            vec![
                (2, "cluster 3", vec!["ok"]),
                (6, "campaign 1", vec!["a", "b"])
            ]
        );
        let actual = vec![vec!["ok".to_string()], vec!["a".into(), "b".into()]];
        assert_eq!(render(&items, &actual), src);
    }

    #[test]
    fn doubled_separator_output_may_hold_blank_lines() {
        let src = "status 1\n----\n----\na\n\nb\n----\n----\n\nlog 1\n----\nc\n";
        let items = parse(src).unwrap();
        assert_eq!(
            blocks(&items),
            vec![
                (1, "status 1", vec!["a", "", "b"]),
                (10, "log 1", vec!["c"])
            ]
        );
        let actual = vec![
            vec!["a".into(), String::new(), "b".into()],
            vec!["c".into()],
        ];
        assert_eq!(render(&items, &actual), src);
    }

    #[test]
    fn rewriting_doubles_the_separator_only_around_blank_lines() {
        let items = parse("status 1\n----\n----\nold\n----\n----\n").unwrap();
        assert_eq!(
            render(&items, &[vec!["new".to_string()]]),
            "status 1\n----\nnew\n"
        );
        let items = parse("status 1\n----\nold\n").unwrap();
        assert_eq!(
            render(&items, &[vec!["a".to_string(), String::new()]]),
            "status 1\n----\n----\na\n\n----\n----\n"
        );
    }

    #[test]
    fn inject_reads_messages_as_traces_print_them() {
        let mut r = Runner::default();
        r.run("cluster 3");
        for line in [
            "2->1 heartbeat term=0 commit=0 ctx=c",
            "2->1 prevote term=1 last=3/1 transfer",
            "2->1 vote_response term=0 rejected",
            "2->1 append_response term=0 rejected index=3 hint=2/1",
        ] {
            // The trace prints the message back, then what it did to node 1.
            assert_eq!(
                r.run(&format!("inject {line}"))[0],
                format!("{line} (injected)")
            );
        }
        assert_eq!(
            r.run("inject 2->1 snapshot term=1"),
            vec!["error: inject cannot build `snapshot` messages"]
        );
        assert_eq!(
            r.run("inject 2->9 heartbeat term=1"),
            vec!["error: no node 9"]
        );
    }

    #[test]
    fn malformed_blocks_are_errors_naming_the_line() {
        let e = parse("\ncampaign 1\nno separator\n").unwrap_err();
        assert!(e.starts_with("line 2: expected `----`"), "{e}");
        let e = parse("status 1\n----\n----\na\n\n----\n").unwrap_err();
        assert!(e.starts_with("line 1: the output of `status 1`"), "{e}");
    }
}
