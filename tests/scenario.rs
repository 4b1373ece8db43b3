//! Runs the scenario scripts in `tests/scenarios/`, one test per file, so a
//! failure names its file (see `raftnode_testkit::harness::script`,
//! `tests/testkit/src/harness/script.rs`, for the command language).
//!
//! Each script demonstrates one behaviour of the consensus core, named in its
//! file name and explained in its opening comment. The expected trace under
//! each command is compared with what the core actually does. When behaviour
//! changes on purpose, regenerate with
//! `UPDATE_SCENARIOS=1 cargo test --release --test scenario` and review the diff:
//! a trace that shows wrong behaviour is a bug to fix, not a golden to keep.
//! Cargo's own filter picks scenarios:
//! `cargo test --release --test scenario -- election_` runs the election ones.
//!
//! A new script needs a line in the list below; `every_scenario_file_is_listed`
//! fails until it has one, so no file is silently left out.

use std::path::PathBuf;

use raftnode_testkit::harness::script;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

/// Runs `tests/scenarios/<name>.txt`, or rewrites its expected output with
/// `UPDATE_SCENARIOS=1`.
fn run(name: &str) {
    let update = std::env::var_os("UPDATE_SCENARIOS").is_some_and(|v| v == "1");
    if let Err(e) = script::run_file(&dir().join(format!("{name}.txt")), update) {
        panic!("{e}");
    }
}

/// A test per named file, and [`LISTED`], the names.
macro_rules! scenarios {
    ($($name:ident,)*) => {
        /// Every scenario listed, for [`every_scenario_file_is_listed`].
        const LISTED: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*
    };
}

scenarios! {
    append_flow_control_inflight_window,
    append_probe_divergent_long_conflicting,
    append_probe_divergent_short,
    append_replicates_and_commits,
    check_quorum_leader_steps_down,
    commit_figure8_only_current_term,
    commit_figure8_uncommitted_entry_overwritten,
    conf_change_add_node,
    conf_change_learner_does_not_vote,
    conf_change_new_member_starts_from_bootstrap_membership,
    conf_change_refused_while_pending,
    conf_change_remove_follower,
    conf_change_stale_node_follows_vouched_leader,
    conf_change_takes_effect_when_applied,
    defence_stranger_unheard_after_election_timeout,
    defence_stranger_unheard_during_transfer,
    defence_stranger_unheard_in_restart_window,
    defence_strangers_cannot_touch_the_term,
    defence_term_jump_bounded,
    election_basic,
    election_candidate_steps_down_on_leader_append,
    election_prevote_partitioned_node_does_not_disrupt,
    election_rejects_out_of_date_log,
    election_split_vote_new_term,
    election_vote_once_per_term,
    election_without_prevote_partitioned_node_disrupts,
    leader_removes_itself_steps_down,
    proposal_forwarded_from_follower,
    proposal_without_leader_dropped,
    read_index_follower,
    read_index_leader,
    read_index_minority_leader_never_answers,
    read_index_new_leader_waits_for_commit,
    recovery_lost_vote_is_never_cast_twice,
    recovery_stale_ack_is_not_counted,
    recovery_two_of_three_damaged_elect_no_leader,
    recovery_wiped_follower_is_repaired,
    restart_loses_unpersisted,
    smoke_single_node_commits_alone,
    smoke_three_nodes_elect_replicate_and_read,
    snapshot_lost_until_reported,
    snapshot_new_node_joins_after_compaction,
    snapshot_to_lagging_follower,
    term_stale_heartbeat_from_unknown_leader_answered,
    term_stale_leader_steps_down,
    transfer_leader_abandoned_after_election_timeout,
    transfer_leader_catch_up,
    transfer_leader_caught_up,
    transfer_leader_forwarded_from_follower,
}

#[test]
fn every_scenario_file_is_listed() {
    let mut unlisted: Vec<String> = std::fs::read_dir(dir())
        .expect("tests/scenarios exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .filter(|name| !LISTED.contains(&name.as_str()))
        .collect();
    unlisted.sort();
    assert!(
        unlisted.is_empty(),
        "scenario files that no test runs; add them to `scenarios!` in tests/scenario.rs: {unlisted:?}"
    );
}
