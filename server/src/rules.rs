//! Rules the server enforces on every commit (issue 16): schemas by pointer
//! pattern, server-only paths, and the embedder's commit guards.
//!
//! A rules file (`concord serve --rules FILE`, [`Rules::load`]) looks like
//!
//! ```json
//! {
//!   "schemas": [
//!     {"docs": "board:*", "pointer": "/shapes/*", "schema": {"type": "object", "required": ["kind"]}}
//!   ],
//!   "server_only": [{"docs": "auction:*", "pointer": "/settled"}]
//! }
//! ```
//!
//! `docs` is a document-id glob (`*` any run without `/`, `**` any run);
//! `pointer` a JSON Pointer whose tokens may be `*`, any one token. Schemas
//! are JSON Schema draft 2020-12, compiled once when the rules load; remote
//! `$ref`s are never fetched.
//!
//! Schemas are checked on every commit, a client's or a mutator's, after the
//! patch applied and before anything is logged ([`CommitCheck`]); only the
//! locations the commit wrote and their ancestors up to the nearest schema
//! are validated, so the cost follows what the commit wrote, never the
//! document's size. Server-only paths are checked on client commits only,
//! before the patch applies. Guards run after the schemas, on every commit.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_engine::access::{glob_matches, Identity, Permissions, PATTERN_LEN_MAX};
use concord_engine::doc::{Members, Node};
use concord_engine::pointer::parse_array_index;
use concord_engine::store::{CommitCheck, CommitView};
use concord_engine::{Doc, DocId, JsonTree, PatchOp, Pointer, Rejection, TxId};
use serde::Deserialize;
use serde_json::Value;

/// Largest rules file accepted, in bytes.
pub const RULES_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Most entries of each kind (`schemas`, `server_only`) in one rules file.
pub const RULES_MAX: usize = 1024;
/// Most tokens in a rule's pointer pattern.
pub const RULE_POINTER_TOKENS_MAX: usize = 32;
/// Longest explanation of a refusal (schema error or veto reason) sent to a
/// client, in bytes; longer ones are cut and end with `…`.
pub const REFUSAL_MESSAGE_BYTES_MAX: usize = 512;
/// How long one guard may take on one commit. A guard runs synchronously on
/// the shard and cannot be preempted: one that takes longer is let finish,
/// then its commit is vetoed and the overrun logged and counted.
pub const GUARD_TIME_BUDGET_MAX: Duration = Duration::from_millis(50);
/// The subject of the identity guards see for mutators (server code).
pub const SERVER_SUBJECT: &str = "~server";

/// Why a rules file was refused. Each names the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read the rules file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the rules file {path} is {len} bytes, over the limit of {RULES_FILE_BYTES_MAX}")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("the rules are not in the rules format: {0}")]
    Malformed(String),
    #[error("{kind}: {len} entries, over the limit of {RULES_MAX}")]
    TooMany { kind: &'static str, len: usize },
    #[error("{entry}: the docs pattern {pattern:?} is empty or over {PATTERN_LEN_MAX} bytes")]
    BadDocs { entry: String, pattern: String },
    #[error("{entry}: the pointer {pointer:?} is not a pointer pattern: {reason}")]
    BadPointer { entry: String, pointer: String, reason: String },
    #[error("{entry}: the schema does not compile as JSON Schema draft 2020-12: {reason}")]
    BadSchema { entry: String, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    schemas: Vec<SchemaEntry>,
    #[serde(default)]
    server_only: Vec<ServerOnlyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaEntry {
    docs: String,
    pointer: String,
    schema: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerOnlyEntry {
    docs: String,
    pointer: String,
}

/// One token of a pointer pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`: any one token.
    Any,
    Exact(String),
}

impl Token {
    fn matches(&self, token: &str) -> bool {
        match self {
            Token::Any => true,
            Token::Exact(exact) => exact == token,
        }
    }
}

/// A JSON Pointer whose tokens may be `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PointerPattern {
    tokens: Vec<Token>,
    raw: String,
}

impl PointerPattern {
    fn parse(entry: &str, raw: &str) -> Result<Self, RulesError> {
        let bad = |reason: String| RulesError::BadPointer {
            entry: entry.to_owned(),
            pointer: raw.to_owned(),
            reason,
        };
        let pointer = Pointer::parse(raw).map_err(|error| bad(error.to_string()))?;
        if pointer.depth() > RULE_POINTER_TOKENS_MAX {
            return Err(bad(format!("over {RULE_POINTER_TOKENS_MAX} tokens")));
        }
        let tokens = pointer
            .tokens()
            .iter()
            .map(|token| if token == "*" { Token::Any } else { Token::Exact(token.clone()) })
            .collect();
        Ok(Self { tokens, raw: raw.to_owned() })
    }

    /// Whether some location this pattern describes is `pointer`, inside
    /// it, or contains it.
    fn overlaps(&self, pointer: &Pointer) -> bool {
        self.tokens.iter().zip(pointer.tokens()).all(|(pattern, token)| pattern.matches(token))
    }
}

fn check_docs_pattern(entry: &str, pattern: &str) -> Result<(), RulesError> {
    if pattern.is_empty() || pattern.len() > PATTERN_LEN_MAX {
        return Err(RulesError::BadDocs { entry: entry.to_owned(), pattern: pattern.to_owned() });
    }
    Ok(())
}

/// A document-id glob (`concord_engine::access::glob_matches` with `/`),
/// with the common shapes matched without allocating: every commit tests
/// every rule's glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DocGlob {
    /// No `*`: the id itself.
    Exact(String),
    /// `prefix*`: the prefix, then anything but `/`.
    Segment(String),
    /// `prefix**`: the prefix, then anything.
    Under(String),
    /// Anything else.
    Glob(String),
}

impl DocGlob {
    pub(crate) fn new(pattern: &str) -> Self {
        let stars = pattern.matches('*').count();
        if stars == 0 {
            return DocGlob::Exact(pattern.to_owned());
        }
        if let Some(prefix) = pattern.strip_suffix("**").filter(|p| !p.contains('*')) {
            return DocGlob::Under(prefix.to_owned());
        }
        if let Some(prefix) = pattern.strip_suffix('*').filter(|p| !p.contains('*')) {
            return DocGlob::Segment(prefix.to_owned());
        }
        DocGlob::Glob(pattern.to_owned())
    }

    pub(crate) fn matches(&self, doc: &DocId) -> bool {
        let id = doc.as_str();
        match self {
            DocGlob::Exact(exact) => id == exact,
            DocGlob::Segment(prefix) => {
                id.strip_prefix(prefix.as_str()).is_some_and(|rest| !rest.contains('/'))
            }
            DocGlob::Under(prefix) => id.starts_with(prefix.as_str()),
            DocGlob::Glob(pattern) => glob_matches(pattern, id, '/'),
        }
    }
}

#[derive(Debug, Clone)]
struct SchemaRule {
    docs: DocGlob,
    pointer: PointerPattern,
    validator: Arc<jsonschema::Validator>,
}

#[derive(Debug, Clone)]
struct ServerOnlyRule {
    docs: DocGlob,
    pointer: PointerPattern,
}

/// Schemas and server-only paths, parsed and compiled.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    schemas: Vec<SchemaRule>,
    server_only: Vec<ServerOnlyRule>,
}

impl Rules {
    /// No rules: every commit passes.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads and compiles the rules file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, RulesError> {
        let path = path.as_ref();
        let read = |source| RulesError::Read { path: path.to_owned(), source };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > RULES_FILE_BYTES_MAX {
            return Err(RulesError::TooLarge { path: path.to_owned(), len });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::from_json(&text)
    }

    /// Parses and compiles rules written as JSON.
    pub fn from_json(text: &str) -> Result<Self, RulesError> {
        let value: Value =
            serde_json::from_str(text).map_err(|error| RulesError::Malformed(error.to_string()))?;
        Self::from_value(&value)
    }

    /// Parses and compiles rules given as a JSON value.
    pub fn from_value(value: &Value) -> Result<Self, RulesError> {
        let file = RulesFile::deserialize(value)
            .map_err(|error| RulesError::Malformed(error.to_string()))?;
        for (kind, len) in
            [("schemas", file.schemas.len()), ("server_only", file.server_only.len())]
        {
            if len > RULES_MAX {
                return Err(RulesError::TooMany { kind, len });
            }
        }
        let mut schemas = Vec::with_capacity(file.schemas.len());
        for (index, entry) in file.schemas.into_iter().enumerate() {
            let name = format!("schemas[{index}] ({:?} {:?})", entry.docs, entry.pointer);
            check_docs_pattern(&name, &entry.docs)?;
            let pointer = PointerPattern::parse(&name, &entry.pointer)?;
            let validator =
                jsonschema::draft202012::options().build(&entry.schema).map_err(|error| {
                    RulesError::BadSchema { entry: name, reason: error.to_string() }
                })?;
            let docs = DocGlob::new(&entry.docs);
            schemas.push(SchemaRule { docs, pointer, validator: Arc::new(validator) });
        }
        let mut server_only = Vec::with_capacity(file.server_only.len());
        for (index, entry) in file.server_only.into_iter().enumerate() {
            let name = format!("server_only[{index}] ({:?} {:?})", entry.docs, entry.pointer);
            check_docs_pattern(&name, &entry.docs)?;
            let pointer = PointerPattern::parse(&name, &entry.pointer)?;
            server_only.push(ServerOnlyRule { docs: DocGlob::new(&entry.docs), pointer });
        }
        Ok(Self { schemas, server_only })
    }

    /// True when there is nothing to check.
    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty() && self.server_only.is_empty()
    }

    /// Checks that no op of a client's patch writes a server-only path of
    /// `doc`: an op writes its `path` (and a `move` its `from`); `test`
    /// writes nothing. Writing at, inside or above a server-only location
    /// is refused (replacing a container replaces what is in it). Costs the
    /// patch's pointers times the rules, never the document.
    pub fn check_server_only(&self, doc: &DocId, writes: &[PatchOp]) -> Result<(), Rejection> {
        if self.server_only.is_empty() {
            return Ok(());
        }
        let rules: Vec<&ServerOnlyRule> =
            self.server_only.iter().filter(|rule| rule.docs.matches(doc)).collect();
        if rules.is_empty() {
            return Ok(());
        }
        for (op_index, op) in writes.iter().enumerate() {
            for pointer in op.written() {
                if let Some(rule) = rules.iter().find(|rule| rule.pointer.overlaps(pointer)) {
                    return Err(Rejection::Forbidden {
                        op_index,
                        pointer: pointer.clone(),
                        message: format!(
                            "server-only path {}: clients may read it, only the server writes it",
                            rule.pointer.raw
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Validates what a commit wrote against the schemas of `doc`: for each
    /// written location W and each schema whose pattern P matches the
    /// document, the value now at the prefix of W that P matches (if P
    /// matches one; a location no longer there validates nothing), and, when
    /// W is above the locations P describes (a container was replaced),
    /// every location under W that P matches. Each location is validated
    /// once per schema, materialised from `value` alone.
    pub fn check_schemas(
        &self,
        doc: &DocId,
        value: &Doc,
        written: &[Pointer],
    ) -> Result<(), Rejection> {
        if self.schemas.is_empty() || written.is_empty() {
            return Ok(());
        }
        // One written location reaches each location at most once per rule:
        // only several need remembering what was validated.
        let dedup = written.len() > 1;
        let mut seen: HashSet<(usize, Pointer)> = HashSet::new();
        for (index, rule) in self.schemas.iter().enumerate() {
            if !rule.docs.matches(doc) {
                continue;
            }
            let pattern = &rule.pointer.tokens;
            for location in written {
                let tokens = location.tokens();
                if !pattern.iter().zip(tokens).all(|(p, token)| p.matches(token)) {
                    continue;
                }
                if pattern.len() <= tokens.len() {
                    let prefix = &tokens[..pattern.len()];
                    let at = || Pointer::from_tokens(prefix.iter());
                    if dedup && !seen.insert((index, at())) {
                        continue;
                    }
                    if let Some(node) = resolve(value, prefix) {
                        rule.validate(at, node)?;
                    }
                } else if let Some(node) = resolve(value, tokens) {
                    let mut at: Vec<String> = tokens.to_vec();
                    each_match(node, &pattern[tokens.len()..], &mut at, &mut |at, node| {
                        if dedup && !seen.insert((index, Pointer::from_tokens(at.iter()))) {
                            return Ok(());
                        }
                        rule.validate(|| Pointer::from_tokens(at.iter()), node)
                    })?;
                }
            }
        }
        Ok(())
    }
}

impl SchemaRule {
    /// Validates `node`, at the location `at` makes (only on failure).
    fn validate(&self, at: impl FnOnce() -> Pointer, node: &Doc) -> Result<(), Rejection> {
        let instance = node.to_value();
        // The quick yes/no first; the error, with its paths, only on failure.
        if self.validator.is_valid(&instance) {
            return Ok(());
        }
        match self.validator.validate(&instance) {
            Ok(()) => Ok(()),
            Err(error) => {
                let at = at();
                let message = format!(
                    "{at}{}: {error} (schema for {})",
                    error.instance_path(),
                    self.pointer.raw
                );
                Err(Rejection::Invalid { pointer: at, message: bounded(message) })
            }
        }
    }
}

/// The node at the location `tokens` name (a pointer's tokens).
fn resolve<'d>(value: &'d Doc, tokens: &[String]) -> Option<&'d Doc> {
    tokens.iter().try_fold(value, |node, token| match node.node() {
        Node::Object(members) => members.get(token),
        Node::Array(items) => items.get(parse_array_index(token)?),
        _ => None,
    })
}

/// What [`each_match`] calls with each location found (its tokens) and
/// the node there.
type Found<'f, 'd> = dyn FnMut(&[String], &'d Doc) -> Result<(), Rejection> + 'f;

/// Calls `found` with every location under `node` (at `at`) that the
/// pattern tokens `rest` match.
fn each_match<'d>(
    node: &'d Doc,
    rest: &[Token],
    at: &mut Vec<String>,
    found: &mut Found<'_, 'd>,
) -> Result<(), Rejection> {
    let Some((token, rest)) = rest.split_first() else {
        return found(at, node);
    };
    let mut visit = |key: String, child: &'d Doc, at: &mut Vec<String>| {
        at.push(key);
        let result = each_match(child, rest, at, found);
        at.pop();
        result
    };
    match (node.node(), token) {
        (Node::Object(members), Token::Any) => {
            for (key, child) in members.iter() {
                visit(key.to_owned(), child, at)?;
            }
        }
        (Node::Object(members), Token::Exact(key)) => {
            if let Some(child) = members.get(key) {
                visit(key.clone(), child, at)?;
            }
        }
        (Node::Array(items), Token::Any) => {
            for (index, child) in items.iter().enumerate() {
                visit(index.to_string(), child, at)?;
            }
        }
        (Node::Array(items), Token::Exact(key)) => {
            if let Some(child) = parse_array_index(key).and_then(|index| items.get(index)) {
                visit(key.clone(), child, at)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `message` cut to `REFUSAL_MESSAGE_BYTES_MAX` bytes at a character
/// boundary.
fn bounded(mut message: String) -> String {
    if message.len() > REFUSAL_MESSAGE_BYTES_MAX {
        let mut end = REFUSAL_MESSAGE_BYTES_MAX - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// A guard's refusal; its reason reaches the client as a `vetoed`
/// rejection's message (cut to `REFUSAL_MESSAGE_BYTES_MAX` bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Veto {
    pub reason: String,
}

impl Veto {
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into() }
    }
}

/// What a commit guard is shown: who commits, the transaction, and the
/// document as it would be after the patch.
#[derive(Debug)]
pub struct GuardCall<'a> {
    identity: &'a Identity,
    by_server: bool,
    doc: &'a DocId,
    tx_id: &'a TxId,
    writes: &'a [PatchOp],
    written: &'a [Pointer],
    value: &'a Doc,
}

impl<'a> GuardCall<'a> {
    /// The committing session's identity; for a mutator, the server's
    /// (subject [`SERVER_SUBJECT`], allowed everything).
    pub fn identity(&self) -> &'a Identity {
        self.identity
    }

    /// True when the commit is a mutator's (server code), not a client's.
    pub fn by_server(&self) -> bool {
        self.by_server
    }

    pub fn doc(&self) -> &'a DocId {
        self.doc
    }

    pub fn tx_id(&self) -> &'a TxId {
        self.tx_id
    }

    /// The patch's ops, as submitted.
    pub fn writes(&self) -> &'a [PatchOp] {
        self.writes
    }

    /// The locations the patch wrote (an array insert or removal writes the
    /// array).
    pub fn written(&self) -> &'a [Pointer] {
        self.written
    }

    /// The value at `pointer` after the patch, materialised: costs the size
    /// of that subtree only.
    pub fn get(&self, pointer: &Pointer) -> Option<Value> {
        self.value.pointer(pointer).map(Doc::to_value)
    }

    /// The node at `pointer` after the patch, borrowed (no copy).
    pub fn node(&self, pointer: &Pointer) -> Option<&'a Doc> {
        self.value.pointer(pointer)
    }
}

/// A commit guard as registered.
pub(crate) type GuardFn = Arc<dyn Fn(&GuardCall<'_>) -> Result<(), Veto> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) docs: DocGlob,
    pub(crate) guard: GuardFn,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("docs", &self.docs).finish_non_exhaustive()
    }
}

/// Everything the shards enforce on commits: the rules and the guards.
#[derive(Debug)]
pub(crate) struct Enforcement {
    pub(crate) rules: Rules,
    pub(crate) guards: Vec<Guard>,
    pub(crate) guard_time_budget: Duration,
    /// Guard failures by kind (`panicked`, `overran`).
    pub(crate) guard_failures: Option<prometheus::IntCounterVec>,
    server: Identity,
}

impl Default for Enforcement {
    fn default() -> Self {
        Self::new(Rules::none(), Vec::new(), None)
    }
}

impl Enforcement {
    pub(crate) fn new(
        rules: Rules,
        guards: Vec<Guard>,
        guard_failures: Option<prometheus::IntCounterVec>,
    ) -> Self {
        let server = Identity {
            sub: SERVER_SUBJECT.to_owned(),
            name: None,
            permissions: Permissions::all(),
            expires_at: None,
        };
        Self { rules, guards, guard_time_budget: GUARD_TIME_BUDGET_MAX, guard_failures, server }
    }

    /// The check for a client commit by `identity`.
    pub(crate) fn for_client<'a>(&'a self, identity: &'a Identity) -> CommitGate<'a> {
        CommitGate { enforcement: self, identity, by_server: false }
    }

    /// The check for a mutator's commit.
    pub(crate) fn for_server(&self) -> CommitGate<'_> {
        CommitGate { enforcement: self, identity: &self.server, by_server: true }
    }

    fn failed(&self, kind: &str) {
        if let Some(counter) = &self.guard_failures {
            counter.with_label_values(&[kind]).inc();
        }
    }
}

/// The [`CommitCheck`] the shards commit with: schemas, then guards.
#[derive(Debug)]
pub(crate) struct CommitGate<'a> {
    enforcement: &'a Enforcement,
    identity: &'a Identity,
    by_server: bool,
}

impl CommitCheck for CommitGate<'_> {
    fn check(&mut self, view: &CommitView<'_>) -> Result<(), Rejection> {
        let enforcement = self.enforcement;
        enforcement.rules.check_schemas(view.doc, view.value, view.written)?;
        for guard in &enforcement.guards {
            if !guard.docs.matches(view.doc) {
                continue;
            }
            let call = GuardCall {
                identity: self.identity,
                by_server: self.by_server,
                doc: view.doc,
                tx_id: view.tx_id,
                writes: view.writes,
                written: view.written,
                value: view.value,
            };
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (guard.guard)(&call)));
            let elapsed = started.elapsed();
            let message = match outcome {
                Err(_) => {
                    tracing::error!(
                        doc = %view.doc, tx_id = %view.tx_id, guard = ?guard.docs,
                        "a commit guard panicked; the commit is vetoed"
                    );
                    enforcement.failed("panicked");
                    "the guard panicked".to_owned()
                }
                Ok(_) if elapsed > enforcement.guard_time_budget => {
                    tracing::error!(
                        doc = %view.doc, tx_id = %view.tx_id, guard = ?guard.docs,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "a commit guard overran its time budget; the commit is vetoed"
                    );
                    enforcement.failed("overran");
                    format!(
                        "the guard overran its time budget of {} ms",
                        enforcement.guard_time_budget.as_millis()
                    )
                }
                Ok(Err(veto)) => bounded(veto.reason),
                Ok(Ok(())) => continue,
            };
            return Err(Rejection::Vetoed { message });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(raw: &str) -> DocId {
        DocId::parse(raw).unwrap()
    }

    fn pointer(raw: &str) -> Pointer {
        Pointer::parse(raw).unwrap()
    }

    fn board_rules() -> Rules {
        Rules::from_value(&json!({
            "schemas": [{
                "docs": "board:*",
                "pointer": "/shapes/*",
                "schema": {
                    "type": "object",
                    "required": ["kind"],
                    "properties": {"kind": {"enum": ["rect", "ellipse"]}, "x": {"type": "number"}}
                }
            }],
            "server_only": [{"docs": "auction:*", "pointer": "/settled"}]
        }))
        .unwrap()
    }

    fn invalid_at(result: Result<(), Rejection>) -> String {
        match result {
            Err(Rejection::Invalid { pointer, message }) => {
                assert!(message.len() <= REFUSAL_MESSAGE_BYTES_MAX, "{message}");
                pointer.to_string()
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn written_locations_and_their_schema_ancestors_are_validated() {
        let rules = board_rules();
        let board = doc("board:1");
        let value = Doc::from(json!({
            "shapes": {"a": {"kind": "rect", "x": 1}, "b": {"kind": "blob"}, "c": {"x": "no"}},
            "title": 5
        }));
        // Writing inside /shapes/a validates /shapes/a, and nothing else.
        assert!(rules.check_schemas(&board, &value, &[pointer("/shapes/a/x")]).is_ok());
        assert_eq!(
            invalid_at(rules.check_schemas(&board, &value, &[pointer("/shapes/b")])),
            "/shapes/b"
        );
        assert_eq!(
            invalid_at(rules.check_schemas(&board, &value, &[pointer("/shapes/c/x")])),
            "/shapes/c"
        );
        // Several writes: each location once, the bad one found.
        let writes = [pointer("/shapes/a/x"), pointer("/shapes/a/kind"), pointer("/shapes/c/x")];
        assert_eq!(invalid_at(rules.check_schemas(&board, &value, &writes)), "/shapes/c");
        let writes = [pointer("/shapes/a/x"), pointer("/shapes/a"), pointer("/title")];
        assert!(rules.check_schemas(&board, &value, &writes).is_ok());
        // Outside the pattern, nothing is checked.
        assert!(rules.check_schemas(&board, &value, &[pointer("/title")]).is_ok());
        // A removed location validates nothing.
        assert!(rules.check_schemas(&board, &value, &[pointer("/shapes/gone")]).is_ok());
        // Replacing the container validates every child.
        assert!(rules.check_schemas(&board, &value, &[pointer("/shapes")]).is_err());
        assert!(rules.check_schemas(&board, &value, &[Pointer::root()]).is_err());
        // Another document is unaffected.
        assert!(rules.check_schemas(&doc("notes:1"), &value, &[pointer("/shapes")]).is_ok());
    }

    #[test]
    fn patterns_walk_arrays_and_literal_tokens() {
        let rules = Rules::from_value(&json!({"schemas": [{
            "docs": "**", "pointer": "/items/*/price", "schema": {"type": "integer", "minimum": 0}
        }]}))
        .unwrap();
        let d = doc("shop/a");
        let good = Doc::from(json!({"items": [{"price": 1}, {"name": "x"}, {"price": 3}]}));
        assert!(rules.check_schemas(&d, &good, &[pointer("/items")]).is_ok());
        assert!(rules.check_schemas(&d, &good, &[Pointer::root()]).is_ok());
        let bad = Doc::from(json!({"items": [{"price": 1}, {"price": -2}]}));
        assert_eq!(
            invalid_at(rules.check_schemas(&d, &bad, &[pointer("/items")])),
            "/items/1/price"
        );
        assert_eq!(
            invalid_at(rules.check_schemas(&d, &bad, &[pointer("/items/1")])),
            "/items/1/price"
        );
        assert!(rules.check_schemas(&d, &bad, &[pointer("/items/0")]).is_ok());
    }

    #[test]
    fn messages_name_the_failing_location_and_are_bounded() {
        let rules = Rules::from_value(&json!({"schemas": [{
            "docs": "*", "pointer": "/s", "schema": {"type": "object", "properties": {"n": {"maxLength": 1}}}
        }]}))
        .unwrap();
        let long = "x".repeat(4 * REFUSAL_MESSAGE_BYTES_MAX);
        let value = Doc::from(json!({"s": {"n": long}}));
        let Err(Rejection::Invalid { message, .. }) =
            rules.check_schemas(&doc("d"), &value, &[pointer("/s")])
        else {
            panic!("expected invalid");
        };
        assert!(message.starts_with("/s/n: "), "{message}");
        assert!(message.len() <= REFUSAL_MESSAGE_BYTES_MAX && message.ends_with('…'));
    }

    #[test]
    fn server_only_paths_refuse_writes_at_inside_and_above_them() {
        let rules = board_rules();
        let ops = |patch: Value| -> Vec<PatchOp> { serde_json::from_value(patch).unwrap() };
        let auction = doc("auction:1");
        let refused = |patch: Value| rules.check_server_only(&auction, &ops(patch));
        assert!(refused(json!([{"op": "add", "path": "/bid", "value": 1}])).is_ok());
        assert!(refused(json!([{"op": "test", "path": "/settled", "value": false}])).is_ok());
        assert!(refused(json!([{"op": "copy", "from": "/settled", "path": "/copy"}])).is_ok());
        for (patch, index, at) in [
            (
                json!([{"op": "add", "path": "/bid", "value": 1}, {"op": "replace", "path": "/settled", "value": true}]),
                1,
                "/settled",
            ),
            (json!([{"op": "add", "path": "/settled/by", "value": 1}]), 0, "/settled/by"),
            (json!([{"op": "replace", "path": "", "value": {}}]), 0, ""),
            (json!([{"op": "move", "from": "/settled", "path": "/x"}]), 0, "/settled"),
            (json!([{"op": "incr", "path": "/settled", "value": 1}]), 0, "/settled"),
        ] {
            match refused(patch) {
                Err(Rejection::Forbidden { op_index, pointer, message }) => {
                    assert_eq!((op_index, pointer.to_string()), (index, at.to_owned()));
                    assert!(message.contains("server-only path /settled"), "{message}");
                }
                other => panic!("expected forbidden, got {other:?}"),
            }
        }
        // Wildcards: a bid's `accepted`, and so each bid as a whole.
        let rules = Rules::from_value(&json!({"server_only": [
            {"docs": "**", "pointer": "/bids/*/accepted"}
        ]}))
        .unwrap();
        let check = |patch: Value| {
            rules.check_server_only(&auction, &ops(patch)).map_err(|e| e.to_string())
        };
        assert!(check(json!([{"op": "add", "path": "/bids/3/amount", "value": 5}])).is_ok());
        assert!(check(json!([{"op": "add", "path": "/bids/3/accepted", "value": true}])).is_err());
        assert!(check(json!([{"op": "add", "path": "/bids/-", "value": {"amount": 1}}])).is_err());
        assert!(check(json!([{"op": "remove", "path": "/bids"}])).is_err());
        assert!(check(json!([{"op": "add", "path": "/notes", "value": 1}])).is_ok());
        // Another document is unaffected.
        let rules = board_rules();
        let other = ops(json!([{"op": "add", "path": "/settled", "value": true}]));
        assert!(rules.check_server_only(&doc("board:1"), &other).is_ok());
    }

    #[test]
    fn doc_globs_match_as_the_engine_globs_do() {
        let patterns =
            ["board:1", "board:*", "board:**", "**", "*", "a*c", "team/*/x", "*/**", "b*:*"];
        let ids = [
            "board:1",
            "board:12",
            "board:",
            "board:1/x",
            "boar",
            "abc",
            "a/c",
            "team/4/x",
            "x/y/z",
            "b:q",
        ];
        for pattern in patterns {
            let glob = DocGlob::new(pattern);
            for id in ids {
                assert_eq!(
                    glob.matches(&doc(id)),
                    glob_matches(pattern, id, '/'),
                    "{pattern} on {id} ({glob:?})"
                );
            }
        }
        assert_eq!(DocGlob::new("board:*"), DocGlob::Segment("board:".into()));
        assert_eq!(DocGlob::new("t/**"), DocGlob::Under("t/".into()));
    }

    #[test]
    fn bad_rules_are_refused_naming_the_entry() {
        let error = |rules: Value| Rules::from_value(&rules).unwrap_err().to_string();
        let message = error(json!({"schemas": [
            {"docs": "a", "pointer": "/x", "schema": {}},
            {"docs": "b", "pointer": "/y", "schema": {"type": 5}}
        ]}));
        assert!(message.starts_with("schemas[1] (\"b\" \"/y\")"), "{message}");
        let message = error(json!({"server_only": [{"docs": "a", "pointer": "x"}]}));
        assert!(message.starts_with("server_only[0]"), "{message}");
        assert!(
            error(json!({"server_only": [{"docs": "", "pointer": "/x"}]})).contains("docs pattern")
        );
        assert!(error(json!({"schema": []})).contains("rules format"));
        assert!(Rules::from_json("{").is_err());
        // Remote references are never fetched: such a schema does not load.
        let remote = json!({"schemas": [{"docs": "a", "pointer": "/x",
            "schema": {"$ref": "https://example.com/schema.json"}}]});
        assert!(error(remote).starts_with("schemas[0]"));
        let path = std::env::temp_dir().join("concord-no-such-rules-file.json");
        assert!(matches!(Rules::load(&path), Err(RulesError::Read { .. })));
    }
}
