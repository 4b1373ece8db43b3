//! A linearizability checker for a key-value store, one register per key.
//!
//! The algorithm is Wing & Gong's, with Lowe's memoisation (the form
//! porcupine and Horn & Kroening describe): the history's call and return
//! events are put in one list ordered by time; the search repeatedly takes
//! the earliest call whose operation the model accepts in the current state,
//! lifts the operation out of the list, and restarts from the front; when it
//! reaches a return event whose operation is not yet linearized, it
//! backtracks. A set of (linearized operations, state) pairs already
//! explored cuts off every branch that was seen before.
//!
//! The model is a register holding an optional value, with `GET`, `PUT`,
//! `DEL` and `CAS` as the node implements them (`CAS` on an absent key
//! answers `NOT_FOUND`, on a different value `MISMATCH <current>`).
//!
//! Indeterminate writes (see `history.rs`) have their return event at
//! infinity: they may be linearized anywhere after their invocation, and
//! the search is done once every *determinate* operation is linearized (an
//! indeterminate write left over is one that never took effect). Reads that
//! failed have no effect and are left out.
//!
//! Two things keep a check bounded, so that it can never hang CI:
//!
//! - an indeterminate `PUT` or `CAS` whose new value nobody ever observed (no
//!   read returned it, no `MISMATCH` named it, no `CAS` expected it) is
//!   dropped before the search, on keys without `DEL`. This changes no
//!   verdict: if the history without it is linearizable, placing it at the
//!   end gives a linearization with it; if the history with it is, then in
//!   that linearization no determinate operation depends on its value, an
//!   indeterminate operation that observed its value in the model had no
//!   effect and can move to the end, and the next write overwrites it
//!   regardless, so removing it leaves a linearization (with `DEL`, a
//!   `DELETED` could depend on the key being present, hence the exception);
//! - every key gets a search budget (steps and memo entries). A key that
//!   exhausts it is reported as *unknown*, which is not a pass.
//!
//! The second check, [`lost_writes`], needs no search: after the cluster has
//! healed and every node reads the same final value, every write that was
//! acknowledged must be that value, or there must be another write on the
//! key that may have come after it (one that had not completed when the
//! acknowledged write was invoked).
//!
//! Why not the `todc-utils` crate: it implements the same algorithm and can
//! express indeterminate operations, but its `is_linearizable` has no budget
//! (a bad history can search forever), returns only a bool (no operation to
//! point at), keeps its memo as `Vec<bool>` pairs cloned per step, and panics
//! on malformed input; its single release (0.1.1) has not moved since.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::history::{Op, OpKind, Outcome};

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists. `stuck` is the operation (index into the
    /// key's operations) that could not be placed when the search got
    /// deepest; `prefix` is how many operations had been placed then.
    Violation {
        stuck: usize,
        prefix: usize,
    },
    /// The budget ran out after `steps` steps.
    Unknown {
        steps: u64,
    },
}

/// Limits of one key's search.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub steps: u64,
    pub memo: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            steps: 5_000_000,
            memo: 2_000_000,
        }
    }
}

/// A register state: 0 is "absent", otherwise an interned value.
type State = u32;

/// An operation as the search sees it.
#[derive(Clone, Debug)]
struct MOp {
    kind: MKind,
    definite: bool,
}

#[derive(Clone, Debug)]
enum MKind {
    Read(State),
    Put(State),
    CasOk(State, State),
    CasMismatch(State, State),
    CasNotFound,
    CasUnknown(State, State),
    Deleted,
    DelNotFound,
    DelUnknown,
}

impl MKind {
    /// The state after this operation, if the model accepts it in `s`.
    fn step(&self, s: State) -> Option<State> {
        match *self {
            MKind::Read(v) => (s == v).then_some(s),
            MKind::Put(v) => Some(v),
            MKind::CasOk(e, n) => (s == e).then_some(n),
            MKind::CasMismatch(e, cur) => (s == cur && cur != e && s != 0).then_some(s),
            MKind::CasNotFound => (s == 0).then_some(s),
            MKind::CasUnknown(e, n) => Some(if s == e { n } else { s }),
            MKind::Deleted => (s != 0).then_some(0),
            MKind::DelNotFound => (s == 0).then_some(0),
            MKind::DelUnknown => Some(0),
        }
    }
}

/// The operations of one key that take part in the search, and which of
/// the key's operations they came from.
pub struct Prepared {
    ops: Vec<MOp>,
    invoke: Vec<u64>,
    complete: Vec<Option<u64>>,
    pub source: Vec<usize>,
    pub dropped_indeterminate: usize,
}

/// Turns one key's history into search operations (see the module docs for
/// what is left out).
pub fn prepare(ops: &[&Op]) -> Prepared {
    let mut values: HashMap<String, State> = HashMap::new();
    fn intern(v: &str, values: &mut HashMap<String, State>) -> State {
        let n = values.len() as State + 1;
        *values.entry(v.to_string()).or_insert(n)
    }
    let has_del = ops.iter().any(|o| o.kind == OpKind::Del);
    let mut observed: HashSet<&str> = HashSet::new();
    for o in ops {
        match (&o.kind, &o.outcome) {
            (_, Outcome::Read(Some(v))) | (_, Outcome::Mismatch(v)) => {
                observed.insert(v);
            }
            _ => {}
        }
        if let OpKind::Cas { expected, .. } = &o.kind {
            observed.insert(expected);
        }
    }
    let mut p = Prepared {
        ops: Vec::new(),
        invoke: Vec::new(),
        complete: Vec::new(),
        source: Vec::new(),
        dropped_indeterminate: 0,
    };
    for (i, o) in ops.iter().enumerate() {
        if o.outcome == Outcome::Failed {
            continue;
        }
        if o.outcome == Outcome::Unknown && !has_del {
            let new = match &o.kind {
                OpKind::Put(v) => Some(v),
                OpKind::Cas { new, .. } => Some(new),
                _ => None,
            };
            if let Some(v) = new {
                if !observed.contains(v.as_str()) {
                    p.dropped_indeterminate += 1;
                    continue;
                }
            }
        }
        let kind = match (&o.kind, &o.outcome) {
            (OpKind::Get, Outcome::Read(None)) => MKind::Read(0),
            (OpKind::Get, Outcome::Read(Some(v))) => MKind::Read(intern(v, &mut values)),
            (OpKind::Put(v), _) => MKind::Put(intern(v, &mut values)),
            (OpKind::Cas { expected, new }, out) => {
                let e = intern(expected, &mut values);
                let n = intern(new, &mut values);
                match out {
                    Outcome::Ok => MKind::CasOk(e, n),
                    Outcome::NotFound => MKind::CasNotFound,
                    Outcome::Mismatch(c) => MKind::CasMismatch(e, intern(c, &mut values)),
                    _ => MKind::CasUnknown(e, n),
                }
            }
            (OpKind::Del, Outcome::Deleted) => MKind::Deleted,
            (OpKind::Del, Outcome::NotFound) => MKind::DelNotFound,
            (OpKind::Del, _) => MKind::DelUnknown,
            // A GET with a write's outcome cannot be recorded.
            (OpKind::Get, _) => continue,
        };
        let definite = o.outcome != Outcome::Unknown;
        p.ops.push(MOp { kind, definite });
        p.invoke.push(o.invoke);
        p.complete.push(if definite { o.complete } else { None });
        p.source.push(i);
    }
    p
}

/// A fixed-size bit set, the memo's key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

const HEAD: usize = usize::MAX;

/// Checks one key. See the module docs.
pub fn check(p: &Prepared, budget: Budget) -> Verdict {
    let n = p.ops.len();
    // Events: (time, is_return, op). Calls sort before returns at equal
    // times (treating them as concurrent, the permissive reading).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for i in 0..n {
        events.push((p.invoke[i], false, i));
        events.push((p.complete[i].unwrap_or(u64::MAX), true, i));
    }
    events.sort();
    let m = events.len();
    // Doubly linked list over event positions; HEAD is the sentinel.
    let mut next: Vec<usize> = (1..=m).collect();
    let mut prev: Vec<usize> = (0..m).map(|i| if i == 0 { HEAD } else { i - 1 }).collect();
    if m > 0 {
        next[m - 1] = HEAD;
    }
    let mut head_next = if m > 0 { 0 } else { HEAD };
    let mut ret_of = vec![0usize; n];
    for (pos, &(_, is_ret, op)) in events.iter().enumerate() {
        if is_ret {
            ret_of[op] = pos;
        }
    }
    let definite_total = p.ops.iter().filter(|o| o.definite).count();
    let mut definite_done = 0;
    let mut state: State = 0;
    let mut lin = Bits::new(n);
    let mut memo: HashSet<(Bits, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut entry = head_next;
    let mut steps: u64 = 0;
    let mut deepest = (0usize, usize::MAX);

    // Unlinks event `e` (which is in the list).
    macro_rules! unlink {
        ($e:expr) => {{
            let e = $e;
            let (pv, nx) = (prev[e], next[e]);
            if pv == HEAD {
                head_next = nx;
            } else {
                next[pv] = nx;
            }
            if nx != HEAD {
                prev[nx] = pv;
            }
        }};
    }
    // Puts event `e` back where it was (undoing `unlink`, in reverse order).
    macro_rules! relink {
        ($e:expr) => {{
            let e = $e;
            let (pv, nx) = (prev[e], next[e]);
            if pv == HEAD {
                head_next = e;
            } else {
                next[pv] = e;
            }
            if nx != HEAD {
                prev[nx] = e;
            }
        }};
    }

    loop {
        if definite_done == definite_total {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > budget.steps || memo.len() > budget.memo {
            return Verdict::Unknown { steps };
        }
        if entry == HEAD {
            // Only indeterminate returns were left ahead: cannot happen
            // while determinate operations remain, but never loop on it.
            return Verdict::Unknown { steps };
        }
        let (_, is_ret, op) = events[entry];
        if !is_ret {
            if let Some(ns) = p.ops[op].kind.step(state) {
                lin.set(op);
                if memo.insert((lin.clone(), ns)) {
                    stack.push((entry, state));
                    state = ns;
                    unlink!(entry);
                    unlink!(ret_of[op]);
                    if p.ops[op].definite {
                        definite_done += 1;
                    }
                    entry = head_next;
                    continue;
                }
                lin.clear(op);
            }
            entry = next[entry];
        } else {
            if stack.len() >= deepest.0 || deepest.1 == usize::MAX {
                deepest = (stack.len(), op);
            }
            let Some((call, s)) = stack.pop() else {
                return Verdict::Violation {
                    stuck: p.source[deepest.1],
                    prefix: deepest.0,
                };
            };
            let cop = events[call].2;
            state = s;
            lin.clear(cop);
            if p.ops[cop].definite {
                definite_done -= 1;
            }
            relink!(ret_of[cop]);
            relink!(call);
            entry = next[call];
        }
    }
}

/// The result of checking a whole history.
pub struct Report {
    pub keys: usize,
    pub violations: Vec<(String, Verdict)>,
    pub unknown: Vec<(String, Verdict)>,
    pub dropped_indeterminate: usize,
    pub max_ops_per_key: usize,
}

impl Report {
    pub fn linearizable(&self) -> bool {
        self.violations.is_empty() && self.unknown.is_empty()
    }

    pub fn verdict(&self) -> &'static str {
        if !self.violations.is_empty() {
            "no"
        } else if !self.unknown.is_empty() {
            "unknown"
        } else {
            "yes"
        }
    }
}

/// Groups the history by key, in invocation order.
pub fn by_key(ops: &[Op]) -> BTreeMap<String, Vec<&Op>> {
    let mut keys: BTreeMap<String, Vec<&Op>> = BTreeMap::new();
    for o in ops {
        keys.entry(o.key.clone()).or_default().push(o);
    }
    for v in keys.values_mut() {
        v.sort_by_key(|o| o.invoke);
    }
    keys
}

/// Checks every key of `ops`.
pub fn check_history(ops: &[Op], budget: Budget) -> Report {
    let keys = by_key(ops);
    let mut r = Report {
        keys: keys.len(),
        violations: Vec::new(),
        unknown: Vec::new(),
        dropped_indeterminate: 0,
        max_ops_per_key: 0,
    };
    for (k, kops) in &keys {
        r.max_ops_per_key = r.max_ops_per_key.max(kops.len());
        let p = prepare(kops);
        r.dropped_indeterminate += p.dropped_indeterminate;
        match check(&p, budget) {
            Verdict::Linearizable => {}
            v @ Verdict::Violation { .. } => r.violations.push((k.clone(), v)),
            v @ Verdict::Unknown { .. } => r.unknown.push((k.clone(), v)),
        }
    }
    r
}

/// A text rendering of a key's history around a violation, for the report.
pub fn explain(ops: &[Op], key: &str, v: &Verdict) -> String {
    let keys = by_key(ops);
    let Some(kops) = keys.get(key) else {
        return String::new();
    };
    let mut out = format!("key {key}: {v:?}\n");
    if let Verdict::Violation { stuck, prefix } = v {
        out.push_str(&format!(
            "after linearizing {prefix} operations the search could not place:\n  {}\n",
            kops[*stuck].describe()
        ));
    }
    out.push_str("history of the key (invocation order):\n");
    for o in kops {
        out.push_str(&format!("  {}\n", o.describe()));
    }
    out
}

/// Acknowledged writes that are neither the final value of their key nor
/// followed by another write that may have overwritten them. `finals` holds
/// the value every node agreed on after healing (None: absent).
pub fn lost_writes(ops: &[Op], finals: &BTreeMap<String, Option<String>>) -> Vec<String> {
    let keys = by_key(ops);
    let mut lost = Vec::new();
    for (k, kops) in &keys {
        let Some(fin) = finals.get(k) else { continue };
        for w in kops {
            let written = match (&w.kind, &w.outcome) {
                (OpKind::Put(v), Outcome::Ok) => Some(v),
                (OpKind::Cas { new, .. }, Outcome::Ok) => Some(new),
                _ => None,
            };
            let Some(v) = written else { continue };
            if fin.as_deref() == Some(v.as_str()) {
                continue;
            }
            let overwritten = kops.iter().any(|o| {
                !std::ptr::eq(*o, *w)
                    && matches!(
                        (&o.kind, &o.outcome),
                        (OpKind::Put(_), Outcome::Ok | Outcome::Unknown)
                            | (OpKind::Cas { .. }, Outcome::Ok | Outcome::Unknown)
                            | (OpKind::Del, Outcome::Deleted | Outcome::Unknown)
                    )
                    && o.complete.is_none_or(|c| c > w.invoke)
            });
            if !overwritten {
                lost.push(format!(
                    "acknowledged write lost: {} (final value {:?})",
                    w.describe(),
                    fin
                ));
            }
        }
    }
    lost
}
