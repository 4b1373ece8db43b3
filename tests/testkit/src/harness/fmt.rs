//! One-line renderings for traces. Every line is deterministic: no hash
//! ordering, no addresses, no timing.

use raftnode::raft::{
    ConfChange, ConfChangeKind, ConfState, Entry, EntryKind, Message, MessageBody, NodeId,
    RecoveryPhase, Role, Snapshot, Status, VOTE_LOST,
};

/// `4/2` for an empty entry, `5/2 "put a=1"` for data, `6/2 conf(add 4)`.
pub fn entry(e: &Entry) -> String {
    match e.kind {
        EntryKind::Normal if e.data.is_empty() => format!("{}/{}", e.index, e.term),
        EntryKind::Normal => format!(
            "{}/{} {:?}",
            e.index,
            e.term,
            String::from_utf8_lossy(&e.data)
        ),
        EntryKind::ConfChange => match ConfChange::decode(&e.data) {
            Ok(cc) => format!("{}/{} conf({})", e.index, e.term, conf_change(&cc)),
            Err(_) => format!("{}/{} conf(malformed)", e.index, e.term),
        },
    }
}

pub fn entries(es: &[Entry]) -> String {
    let parts: Vec<String> = es.iter().map(entry).collect();
    format!("[{}]", parts.join(", "))
}

/// `add 4`, `remove 3`, `add-learner 5`.
pub fn conf_change(cc: &ConfChange) -> String {
    let kind = match cc.kind {
        ConfChangeKind::AddNode => "add",
        ConfChangeKind::RemoveNode => "remove",
        ConfChangeKind::AddLearner => "add-learner",
    };
    format!("{kind} {}", cc.node_id)
}

/// `4,9`, as `inject` parses an id list back.
fn id_list(ids: &[NodeId]) -> String {
    let parts: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    parts.join(",")
}

pub fn ids(ids: &[NodeId]) -> String {
    let parts: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// `voters=[1,2,3]`, with ` learners=[4]` only when there are learners.
pub fn conf_state(cs: &ConfState) -> String {
    let mut s = format!("voters={}", ids(&cs.voters));
    if !cs.learners.is_empty() {
        s.push_str(&format!(" learners={}", ids(&cs.learners)));
    }
    s
}

pub fn snapshot(s: &Snapshot) -> String {
    format!(
        "{}/{} {}",
        s.meta.index,
        s.meta.term,
        conf_state(&s.meta.conf_state)
    )
}

fn ctx(c: &[u8]) -> String {
    if c.is_empty() {
        String::new()
    } else {
        format!(" ctx={}", String::from_utf8_lossy(c))
    }
}

/// The recovery tag of an answer, when it has one.
fn recovery_tag(id: u64) -> String {
    if id == 0 {
        String::new()
    } else {
        format!(" recovery={id}")
    }
}

/// `1->2 append term=2 prev=3/1 entries=[4/2] commit=3`. Forwarded client
/// requests carry no term and print none.
pub fn message(m: &Message) -> String {
    let mut s = format!("{}->{} {}", m.from, m.to, m.body.name());
    if !m.body.outside_terms() {
        s.push_str(&format!(" term={}", m.term));
    }
    match &m.body {
        MessageBody::Append {
            prev_index,
            prev_term,
            entries: es,
            commit,
        } => s.push_str(&format!(
            " prev={prev_index}/{prev_term} entries={} commit={commit}",
            entries(es)
        )),
        MessageBody::AppendResponse {
            index,
            reject,
            reject_hint,
            hint_term,
            recovery,
        } => {
            if *reject {
                s.push_str(&format!(
                    " rejected index={index} hint={reject_hint}/{hint_term}"
                ))
            } else {
                s.push_str(&format!(" index={index}"))
            }
            s.push_str(&recovery_tag(*recovery));
        }
        MessageBody::Heartbeat { commit, context } => {
            s.push_str(&format!(" commit={commit}{}", ctx(context)))
        }
        MessageBody::HeartbeatResponse { context, recovery } => {
            s.push_str(&ctx(context));
            s.push_str(&recovery_tag(*recovery));
        }
        MessageBody::RequestVote {
            last_index,
            last_term,
            transfer,
            campaign,
            ..
        } => {
            s.push_str(&format!(" last={last_index}/{last_term}"));
            if *transfer {
                s.push_str(" transfer");
            }
            if *campaign != 0 {
                s.push_str(&format!(" campaign={campaign}"));
            }
        }
        MessageBody::RequestVoteResponse { reject, .. } => {
            s.push_str(if *reject { " rejected" } else { " granted" })
        }
        MessageBody::Snapshot { snapshot: snap } => {
            s.push_str(&format!(" snap={}", snapshot(snap)))
        }
        MessageBody::TimeoutNow => {}
        MessageBody::Propose { entries: es } => s.push_str(&format!(" entries={}", entries(es))),
        MessageBody::ReadIndex { context } => s.push_str(&ctx(context)),
        MessageBody::ReadIndexResponse { index, context } => {
            s.push_str(&format!(" index={index}{}", ctx(context)))
        }
        MessageBody::TransferLeader { target } => s.push_str(&format!(" target={target}")),
        MessageBody::TermQuery => {}
        MessageBody::TermReport { term } => s.push_str(&format!(" reported={term}")),
        MessageBody::Recovering {
            id,
            last_index,
            last_term,
        } => s.push_str(&format!(" id={id} last={last_index}/{last_term}")),
        MessageBody::RecoveryAck { id, target } => s.push_str(&format!(" id={id} target={target}")),
        MessageBody::RecoveryDone { id } => s.push_str(&format!(" id={id}")),
        MessageBody::MemberQuery { ids } => s.push_str(&format!(" ids={}", id_list(ids))),
        MessageBody::MemberReport { members } => {
            s.push_str(&format!(" members={}", id_list(members)))
        }
    }
    s
}

/// A message of a Ready's `persisted_messages`, which may be sent only once
/// the Ready is persisted: `2->1 vote_response term=1 granted (after persist)`.
/// Traces mark these so that scripts show the durability contract.
pub fn after_persist(m: &Message) -> String {
    format!("{} (after persist)", message(m))
}

/// The message type as scripts name it in filters (`type=append`).
pub fn message_type(m: &Message) -> &'static str {
    m.body.name()
}

/// `follower term=1 vote=1 lead=0`: the part of a node's state whose changes
/// traces report.
/// A vote: the id, or `lost` for `VOTE_LOST`.
pub fn vote(v: NodeId) -> String {
    match v {
        VOTE_LOST => "lost".to_string(),
        v => v.to_string(),
    }
}

pub fn role_line(st: &Status) -> String {
    let vote = vote(st.hard_state.vote);
    let mut line = format!(
        "{} term={} vote={vote} lead={}",
        role(st.soft_state.role),
        st.hard_state.term,
        st.soft_state.leader
    );
    match &st.recovery {
        None => {}
        Some(RecoveryPhase::AwaitingTerms { missing }) => {
            line.push_str(&format!(" recovering: terms of {}", ids(missing)))
        }
        Some(RecoveryPhase::AwaitingLeader) => line.push_str(" recovering: waiting for a leader"),
        Some(RecoveryPhase::CatchingUp { matched, target }) => {
            line.push_str(&format!(" recovering: {matched} of {target}"))
        }
    }
    line
}

pub fn role(r: Role) -> String {
    r.to_string()
}
