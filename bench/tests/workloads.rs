//! Every workload, tiny, against the real `concord` binary (and W1 against
//! the broadcast baseline too), through the `concord-bench` binary with
//! `--json`. The binary itself fails on a broken promise; these tests also
//! check the figures that state the promises: the counter is exactly C × K
//! in both W2 forms, every W1/W4 op reached every other session, the late
//! joiner loaded all 10,000 shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// The `concord` binary: `$CONCORD_BIN`, else the one of this profile next
/// to `concord-bench` (`cargo test --workspace` builds it for the server's
/// own tests). If this crate is tested alone, it is built here, into a
/// target directory of its own: `cargo test` holds the lock on its own
/// target directory while tests run, so building there would deadlock.
fn concord_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("CONCORD_BIN") {
            return PathBuf::from(path);
        }
        let bench_bin = Path::new(env!("CARGO_BIN_EXE_concord-bench"));
        let sibling = bench_bin.with_file_name("concord");
        if sibling.exists() {
            return sibling;
        }
        let profile_dir = bench_bin.parent().unwrap();
        let target_dir = profile_dir.parent().unwrap().join("concord-bench-server");
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "concord-server", "--bin", "concord", "--target-dir"]);
        build.arg(&target_dir);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "building concord failed");
        target_dir.join(profile_dir.file_name().unwrap()).join("concord")
    })
}

/// Runs `concord-bench --json ARGS` and returns the medians, by
/// `workload/variant`.
fn bench(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_concord-bench"))
        .arg("--json")
        .arg("--concord-bin")
        .arg(concord_bin())
        .args(args)
        .output()
        .expect("running concord-bench");
    assert!(
        output.status.success(),
        "concord-bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("concord-bench --json prints JSON")
}

fn medians<'a>(result: &'a Value, workload: &str, variant: &str) -> &'a Value {
    result["medians"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["workload"] == workload && m["variant"] == variant)
        .unwrap_or_else(|| panic!("no {workload}/{variant} in {result}"))
}

fn metric(medians: &Value, name: &str) -> f64 {
    medians[name].as_f64().unwrap_or_else(|| panic!("no {name} in {medians}"))
}

#[test]
fn w1_every_move_reaches_every_client_on_concord_and_the_baseline() {
    let (clients, ops) = (3.0, 20.0);
    let result = bench(&["w1", "--clients", "3", "--ops", "20", "--target", "both"]);
    for variant in ["concord", "baseline"] {
        let run = medians(&result, "w1", variant);
        assert_eq!(metric(run, "committed_ops"), clients * ops, "{variant}");
        assert_eq!(metric(run, "deliveries"), clients * ops * (clients - 1.0), "{variant}");
        assert_eq!(metric(run, "deliveries"), metric(run, "deliveries_expected"));
        assert!(metric(run, "ack_p99_ms") > 0.0);
        assert!(metric(run, "fanout_p99_ms") >= metric(run, "fanout_p50_ms"));
        assert!(metric(run, "server_cpu_s") >= 0.0);
    }
    assert!(result["ratios"]["w1_server_cpu_per_op_concord_over_baseline_runs"].is_array());
}

#[test]
fn w1_runs_with_a_token_and_a_schema_beside_the_open_server() {
    let (clients, ops) = (3.0, 20.0);
    let result = bench(&["w1", "--clients", "3", "--ops", "20", "--target", "auth"]);
    for variant in ["concord", "concord-auth"] {
        let run = medians(&result, "w1", variant);
        assert_eq!(metric(run, "committed_ops"), clients * ops, "{variant}");
        assert_eq!(metric(run, "deliveries"), metric(run, "deliveries_expected"), "{variant}");
    }
    // One ratio per run (a tiny run may measure no CPU at all, so its value
    // is not checked).
    let per_run = result["ratios"]["w1_server_cpu_per_op_auth_over_open_runs"].as_array();
    assert_eq!(per_run.map(Vec::len), Some(1), "{}", result["ratios"]);
}

#[test]
fn w2_counter_ends_at_clients_times_ops_in_both_forms() {
    let result = bench(&["w2", "--clients", "4", "--ops", "15"]);
    for form in ["incr", "transact"] {
        let run = medians(&result, "w2", form);
        assert_eq!(metric(run, "final_value"), 60.0, "{form}");
        assert_eq!(metric(run, "expected_value"), 60.0, "{form}");
        assert!(metric(run, "ops_per_s") > 0.0);
    }
    assert_eq!(metric(medians(&result, "w2", "incr"), "rejections"), 0.0);
}

#[test]
fn w3_late_joiner_loads_all_10000_shapes() {
    let result = bench(&["w3", "--shapes", "10000", "--joins", "2"]);
    let run = medians(&result, "w3", "concord");
    assert_eq!(metric(run, "shapes_loaded"), 10_000.0);
    // Every shape's id and fields are in the snapshot.
    assert!(metric(run, "join_bytes") > 10_000.0 * 40.0);
    assert!(metric(run, "join_p50_ms") > 0.0);
}

#[test]
fn w4_every_op_reaches_every_reader() {
    let result = bench(&["w4", "--readers", "20", "--ops", "10"]);
    let run = medians(&result, "w4", "concord");
    assert_eq!(metric(run, "deliveries"), 20.0 * 10.0);
    assert_eq!(metric(run, "deliveries"), metric(run, "deliveries_expected"));
    assert!(metric(run, "delivery_p99_ms") > 0.0);
}

#[test]
fn w5_idle_sessions_report_server_memory() {
    let result = bench(&["w5", "--sessions", "50"]);
    let run = medians(&result, "w5", "concord");
    assert_eq!(metric(run, "sessions"), 50.0);
    assert!(metric(run, "rss_after_kib") > 0.0);
    assert!(metric(run, "rss_per_session_kib") >= 0.0);
}

#[test]
fn a_missing_server_binary_fails_loudly() {
    let output = Command::new(env!("CARGO_BIN_EXE_concord-bench"))
        .args(["--json", "--concord-bin", "/nonexistent/concord", "w2", "--clients", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not found"));
}
