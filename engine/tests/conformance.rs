//! RFC 6902 conformance: every enabled case of the vendored
//! `json-patch-test-suite` (see `data/json-patch-tests/README.md`) runs
//! through `concord_engine::patch::apply`, on both JSON representations:
//! the replicas' `serde_json::Value` and the store's `Doc`, which must agree.
//!
//! What each case promises, and how it is checked:
//! - a case with `expected` must apply, and the resulting document must equal
//!   `expected` under `serde_json::Value`'s `==`. That is stricter than
//!   `patch::json_equal` (which treats `1` and `1.0` as equal, as `test`
//!   must): the result of a patch should be exactly the JSON the suite
//!   expects, number representation included.
//! - a case with `error` must fail, and the document must be exactly as it was
//!   before (`==`): the engine promises that a failed patch changes nothing.
//!   A patch that does not even deserialise as `Vec<PatchOp>` counts as a
//!   failure, because the engine never sees it.
//! - a case with neither must apply; the suite uses these for `test` ops,
//!   which never change the document, so for those the document must also be
//!   unchanged.
//!
//! Every error case in the suite fails at its first op, so error cases are
//! also run behind a successful first op (`probe_atomicity`), to check that a
//! failure undoes the ops before it too.
//!
//! Only cases marked `disabled: true` are skipped, and they are counted. The
//! counts are pinned exactly, so the test cannot pass by running nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use concord_engine::patch::{self, PatchOp};
use concord_engine::{Doc, JsonTree, Limits, Pointer};
use serde_json::{Map, Value};

/// The two files of the suite, embedded so the test does not depend on the
/// working directory.
const SUITES: &[(&str, &str)] = &[
    ("tests.json", include_str!("data/json-patch-tests/tests.json")),
    ("spec_tests.json", include_str!("data/json-patch-tests/spec_tests.json")),
];

/// Enabled cases in the vendored suite (version 1.1.0): 76 in `tests.json`
/// and 15 in `spec_tests.json`.
const CASES_RUN: usize = 91;
/// Cases the suite marks `disabled: true`: 3 in `tests.json`, 1 in
/// `spec_tests.json`.
const CASES_DISABLED: usize = 4;
/// Error cases on an object document whose patch deserialises: those the
/// atomicity probe runs again (see `probe_atomicity`).
const CASES_PROBED: usize = 10;

/// The result of running one case through the engine.
#[derive(Debug)]
enum Run {
    /// The patch applied; this is the resulting document.
    Applied(Value),
    /// The patch was refused; `doc` is the document afterwards, which must
    /// equal the original.
    Failed { reason: String, doc: Value },
}

fn run(doc: &Value, patch_json: &Value) -> Run {
    let ops: Vec<PatchOp> = match serde_json::from_value(patch_json.clone()) {
        Ok(ops) => ops,
        Err(error) => {
            return Run::Failed {
                reason: format!("patch does not deserialise: {error}"),
                doc: doc.clone(),
            }
        }
    };
    let on_value = apply_to(doc.clone(), &ops);
    // The store applies patches to its own representation: it must agree
    // with the replicas' `Value` on every case, errors included.
    let on_doc = apply_to(Doc::from(doc), &ops);
    let on_doc_as_value = match &on_doc {
        Ok(applied) => Ok(applied.to_value()),
        Err((reason, left)) => Err((reason.clone(), left.to_value())),
    };
    if on_doc_as_value != on_value {
        let reason = format!("the store's Doc gave {on_doc_as_value:?}, Value gave {on_value:?}");
        return Run::Failed { reason, doc: Value::Null };
    }
    match on_value {
        Ok(applied) => Run::Applied(applied),
        Err((reason, doc)) => Run::Failed { reason, doc },
    }
}

/// Applies `ops` to `working`: the result, or the error and what was left.
fn apply_to<T: JsonTree>(mut working: T, ops: &[PatchOp]) -> Result<T, (String, T)> {
    let size = patch::encoded_size_estimate(&working, usize::MAX);
    match patch::apply(&mut working, size, ops, &Limits::default()) {
        Ok(_) => Ok(working),
        Err(error) => Err((error.to_string(), working)),
    }
}

/// A readable name for a case: its comment when it has one (many error cases
/// have none), else its expected error text.
fn case_name(file: &str, position: usize, case: &Map<String, Value>) -> String {
    let label = case
        .get("comment")
        .or_else(|| case.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("(no comment)");
    format!("{file}[{position}] {label:?}")
}

#[derive(Debug, Default)]
struct Tally {
    run: usize,
    skipped: usize,
    /// Error cases also run behind a successful first op.
    probed: usize,
    failures: Vec<String>,
}

/// A member name no case uses, for the atomicity probe.
const PROBE_KEY: &str = "concord conformance probe";

/// Every error case in the suite fails at its first op, so on its own it only
/// shows that a failing op undoes itself. To check that a failure also undoes
/// the ops before it, error cases on an object document run again behind an
/// `add` of a fresh member: the patch must still fail, at its original op,
/// and the document must come back without the new member.
fn probe_atomicity(doc: &Value, patch_json: &Value, tally: &mut Tally) -> Option<String> {
    let Value::Object(members) = doc else {
        // Adding to an array would shift indices and change what the case
        // tests.
        return None;
    };
    assert!(!members.contains_key(PROBE_KEY), "probe key in use");
    let Ok(ops) = serde_json::from_value::<Vec<PatchOp>>(patch_json.clone()) else {
        // Nothing was applied, so there is nothing to undo.
        return None;
    };
    let probe =
        PatchOp::Add { path: Pointer::from_tokens([PROBE_KEY]), value: Value::from("probe") };
    let probed: Vec<PatchOp> = std::iter::once(probe).chain(ops).collect();
    let mut working = doc.clone();
    let size = patch::encoded_size_estimate(&working, usize::MAX);
    tally.probed += 1;
    match patch::apply(&mut working, size, &probed, &Limits::default()) {
        Ok(_) => Some("behind a probe `add`, the patch applied".to_owned()),
        Err(error) if error.op_index == 0 => {
            Some(format!("the probe `add` itself failed: {error}"))
        }
        Err(_) if working != *doc => {
            Some(format!("behind a probe `add`, the patch failed but left {working}, was {doc}"))
        }
        Err(_) => None,
    }
}

fn check_case(name: &str, case: &Map<String, Value>, tally: &mut Tally) {
    let doc = case.get("doc").expect("checked by the caller");
    let patch_json =
        case.get("patch").unwrap_or_else(|| panic!("{name}: case has a doc but no patch"));
    let outcome = run(doc, patch_json);
    tally.run += 1;
    // Presence, not value, decides the kind of case: `"expected": null` is a
    // real expectation of a `null` document.
    let problem = match (case.get("expected"), case.get("error"), outcome) {
        (Some(_), Some(_), _) => Some("case has both `expected` and `error`".to_owned()),
        (Some(expected), None, Run::Applied(result)) => (result != *expected)
            .then(|| format!("result {result} differs from expected {expected}")),
        (Some(expected), None, Run::Failed { reason, .. }) => {
            Some(format!("expected {expected}, but the patch failed: {reason}"))
        }
        (None, Some(_), Run::Applied(result)) => {
            Some(format!("expected an error, but the patch applied: {result}"))
        }
        (None, Some(_), Run::Failed { doc: after, .. }) if after != *doc => {
            Some(format!("the patch failed but left the document changed: {after}, was {doc}"))
        }
        (None, Some(_), Run::Failed { .. }) => probe_atomicity(doc, patch_json, tally),
        (None, None, Run::Applied(result)) => {
            let only_tests =
                patch_json.as_array().is_some_and(|ops| ops.iter().all(|op| op["op"] == "test"));
            (only_tests && result != *doc)
                .then(|| format!("`test` ops changed the document to {result}"))
        }
        (None, None, Run::Failed { reason, .. }) => {
            Some(format!("expected success, but the patch failed: {reason}"))
        }
    };
    if let Some(problem) = problem {
        tally.failures.push(format!("{name}: {problem}"));
    }
}

#[test]
fn json_patch_test_suite() {
    let mut tally = Tally::default();
    for (file, text) in SUITES {
        let cases: Vec<Map<String, Value>> = serde_json::from_str(text).unwrap();
        for (position, case) in cases.iter().enumerate() {
            let name = case_name(file, position, case);
            if case.get("disabled") == Some(&Value::Bool(true)) {
                tally.skipped += 1;
                continue;
            }
            if !case.contains_key("doc") {
                // The suite allows records that are only a comment.
                assert!(
                    case.keys().all(|k| k == "comment"),
                    "{name}: a record without `doc` may only hold a comment"
                );
                continue;
            }
            check_case(&name, case, &mut tally);
        }
    }
    assert!(
        tally.failures.is_empty(),
        "{} of {} cases failed:\n{}",
        tally.failures.len(),
        tally.run,
        tally.failures.join("\n")
    );
    // Exact counts, so that a parsing slip that silently drops cases cannot
    // pass: version 1.1.0 holds 95 records, 4 of them disabled.
    assert_eq!((tally.run, tally.skipped), (CASES_RUN, CASES_DISABLED), "cases run and skipped");
    assert_eq!(tally.probed, CASES_PROBED, "error cases probed for atomicity");
}

/// The two disabled cases are about a patch op with two `op` members. Reading
/// the suite into a `Value` keeps only the last member, so the runner above
/// cannot pose them; a client's raw text can. This checks the engine's answer
/// to that text, copied verbatim from the suite: serde refuses a repeated tag
/// (and a repeated field) instead of letting the last one win.
#[test]
fn op_objects_with_two_op_members_are_refused_as_text() {
    let cases = [
        // tests.json, "duplicate ops".
        r#"[ { "op": "add", "path": "/baz", "value": "qux",
                   "op": "move", "from":"/foo" } ]"#,
        // spec_tests.json, "A.13 Invalid JSON Patch Document".
        r#"[
  { "op": "add", "path": "/baz", "value": "qux", "op": "remove" }
]"#,
    ];
    for raw in cases {
        let error = serde_json::from_str::<Vec<PatchOp>>(raw).unwrap_err();
        assert!(error.to_string().contains("duplicate field `op`"), "{raw}: {error}");
    }
    let repeated_path = r#"[{"op": "add", "path": "/a", "path": "/b", "value": 1}]"#;
    let error = serde_json::from_str::<Vec<PatchOp>>(repeated_path).unwrap_err();
    assert!(error.to_string().contains("duplicate field `path`"), "{error}");
}
