//! Who may do what: a session's [`Identity`] and its [`Permissions`], and the
//! pure checks the server makes with them (document read/write, pointer
//! write scopes, topics, methods).
//!
//! Permissions arrive as the `concord` claim of a token (or from an
//! embedder's authenticator) in this form:
//!
//! ```json
//! {
//!   "docs": [
//!     {"pattern": "board:*", "access": "write", "scopes": ["/shapes", "/cursors/{sub}"]},
//!     {"pattern": "public/**", "access": "read"}
//!   ],
//!   "topics": [{"pattern": "chat.>", "allow": ["subscribe", "publish"]}],
//!   "methods": [{"pattern": "math.*", "allow": ["call"]}]
//! }
//! ```
//!
//! Grants add up: a document is readable if any grant matches it, writable
//! if any `write` grant does, and its write scopes are the union of the
//! matching `write` grants' scopes (a `write` grant without `scopes` leaves
//! the whole document writable). `{sub}` in a scope is the subject's id, as
//! one pointer token. Anything no grant allows is refused.
//!
//! Patterns: in document ids `*` matches any run of characters but `/`, and
//! `**` any run at all; in method names the same with `.` in place of `/`.
//! Topic patterns are the subscription syntax (`*` one segment, `>` the
//! rest), and a subscription is allowed only when a grant's pattern covers
//! every topic the subscription could match.
//!
//! Everything here is sans-IO and deterministic; checks cost in proportion
//! to the grants and the message, never to a document.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::DocId;
use crate::patch::PatchOp;
use crate::pointer::Pointer;

/// Most grants of each kind (documents, topics, methods) one set of
/// permissions may hold.
pub const GRANTS_MAX: usize = 64;
/// Most write scopes one document grant may list.
pub const SCOPES_PER_GRANT_MAX: usize = 64;
/// Longest pattern accepted, in bytes.
pub const PATTERN_LEN_MAX: usize = 256;
/// Longest subject id accepted, in bytes.
pub const SUBJECT_LEN_MAX: usize = 256;

/// Who a session is, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject: a stable user id (`sub` of a token).
    pub sub: String,
    /// A display name, when the token carries one.
    pub name: Option<String>,
    pub permissions: Permissions,
    /// When the credentials stop being valid, in seconds since the Unix
    /// epoch (`exp` of a token); `None` never expires.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// The identity of a session on a server without authentication: an
    /// anonymous subject allowed everything.
    pub fn anonymous() -> Self {
        Self {
            sub: "anonymous".to_owned(),
            name: None,
            permissions: Permissions::all(),
            expires_at: None,
        }
    }
}

/// What a document grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocAccess {
    /// Open, snapshot, changes, presence, `GET /docs` and history.
    Read,
    /// Everything `read` allows, and commit (within the write scopes).
    Write,
}

/// What may be done on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicAction {
    Subscribe,
    Publish,
}

/// What may be done with a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodAction {
    Call,
    Register,
}

/// One document grant, as written in a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocGrant {
    pub pattern: String,
    pub access: DocAccess,
    /// Pointer prefixes a `write` grant may write under; absent: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

/// One topic or method grant, as written in a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant<A> {
    pub pattern: String,
    pub allow: Vec<A>,
}

/// Permissions as written in a claim (the `concord` claim of a token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    #[serde(default)]
    pub docs: Vec<DocGrant>,
    #[serde(default)]
    pub topics: Vec<Grant<TopicAction>>,
    #[serde(default)]
    pub methods: Vec<Grant<MethodAction>>,
}

impl Grants {
    /// Everything: every document writable anywhere, every topic and method.
    pub fn all() -> Self {
        Self {
            docs: vec![DocGrant { pattern: "**".into(), access: DocAccess::Write, scopes: None }],
            topics: vec![Grant {
                pattern: ">".into(),
                allow: vec![TopicAction::Subscribe, TopicAction::Publish],
            }],
            methods: vec![Grant {
                pattern: "**".into(),
                allow: vec![MethodAction::Call, MethodAction::Register],
            }],
        }
    }
}

/// Why a claim is not a valid set of permissions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPermissions {
    #[error("the permissions claim is malformed: {0}")]
    Malformed(String),
    #[error("{kind} grants: {len}, over the limit of {GRANTS_MAX}")]
    TooManyGrants { kind: &'static str, len: usize },
    #[error("a document grant has {len} scopes, over the limit of {SCOPES_PER_GRANT_MAX}")]
    TooManyScopes { len: usize },
    #[error("pattern {0:?} is empty or over {PATTERN_LEN_MAX} bytes")]
    BadPattern(String),
    #[error("scope {scope:?} is not a JSON Pointer: {reason}")]
    BadScope { scope: String, reason: String },
    #[error("the subject id is empty or over {SUBJECT_LEN_MAX} bytes")]
    BadSubject,
}

/// A document grant with its scopes resolved for one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResolvedDocGrant {
    pattern: String,
    access: DocAccess,
    scopes: Option<Vec<Pointer>>,
}

/// Permissions resolved for one subject (scope templates filled in,
/// pointers parsed), ready to check against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    docs: Vec<ResolvedDocGrant>,
    topics: Vec<Grant<TopicAction>>,
    methods: Vec<Grant<MethodAction>>,
}

impl Permissions {
    /// Everything allowed (a server without authentication).
    pub fn all() -> Self {
        Self::resolve(&Grants::all(), "anonymous").unwrap_or_else(|_| Self::none())
    }

    /// Nothing allowed.
    pub fn none() -> Self {
        Self { docs: Vec::new(), topics: Vec::new(), methods: Vec::new() }
    }

    /// Parses a claim value (`null` or absent: nothing allowed) and resolves
    /// it for `sub`.
    pub fn from_claim(claim: &Value, sub: &str) -> Result<Self, InvalidPermissions> {
        if claim.is_null() {
            return Self::resolve(&Grants::default(), sub);
        }
        let grants = Grants::deserialize(claim)
            .map_err(|error| InvalidPermissions::Malformed(error.to_string()))?;
        Self::resolve(&grants, sub)
    }

    /// Resolves `grants` for the subject `sub`: checks the bounds, fills
    /// `{sub}` into scopes (escaped as one pointer token) and parses them.
    pub fn resolve(grants: &Grants, sub: &str) -> Result<Self, InvalidPermissions> {
        if sub.is_empty() || sub.len() > SUBJECT_LEN_MAX {
            return Err(InvalidPermissions::BadSubject);
        }
        for (kind, len) in [
            ("document", grants.docs.len()),
            ("topic", grants.topics.len()),
            ("method", grants.methods.len()),
        ] {
            if len > GRANTS_MAX {
                return Err(InvalidPermissions::TooManyGrants { kind, len });
            }
        }
        let patterns = grants
            .docs
            .iter()
            .map(|grant| &grant.pattern)
            .chain(grants.topics.iter().map(|grant| &grant.pattern))
            .chain(grants.methods.iter().map(|grant| &grant.pattern));
        for pattern in patterns {
            if pattern.is_empty() || pattern.len() > PATTERN_LEN_MAX {
                return Err(InvalidPermissions::BadPattern(pattern.clone()));
            }
        }
        let escaped_sub = sub.replace('~', "~0").replace('/', "~1");
        let mut docs = Vec::with_capacity(grants.docs.len());
        for grant in &grants.docs {
            let scopes = match &grant.scopes {
                None => None,
                Some(scopes) if scopes.len() > SCOPES_PER_GRANT_MAX => {
                    return Err(InvalidPermissions::TooManyScopes { len: scopes.len() })
                }
                Some(scopes) => {
                    let mut parsed = Vec::with_capacity(scopes.len());
                    for scope in scopes {
                        let filled = scope.replace("{sub}", &escaped_sub);
                        let pointer = Pointer::parse(&filled).map_err(|error| {
                            InvalidPermissions::BadScope {
                                scope: scope.clone(),
                                reason: error.to_string(),
                            }
                        })?;
                        parsed.push(pointer);
                    }
                    Some(parsed)
                }
            };
            docs.push(ResolvedDocGrant {
                pattern: grant.pattern.clone(),
                access: grant.access,
                scopes,
            });
        }
        Ok(Self { docs, topics: grants.topics.clone(), methods: grants.methods.clone() })
    }

    /// What this session may do with `doc`, or `None` for nothing at all.
    pub fn doc(&self, doc: &DocId) -> Option<DocRights> {
        let mut access: Option<DocAccess> = None;
        let mut anywhere = false;
        let mut scopes = Vec::new();
        for grant in &self.docs {
            if !glob_matches(&grant.pattern, doc.as_str(), '/') {
                continue;
            }
            access = access.max(Some(grant.access));
            if grant.access == DocAccess::Write {
                match &grant.scopes {
                    None => anywhere = true,
                    Some(more) => scopes.extend(more.iter().cloned()),
                }
            }
        }
        let access = access?;
        let scopes = (!anywhere).then_some(scopes);
        Some(DocRights { access, scopes })
    }

    /// Whether `action` is allowed on the concrete `topic` (for publish) or
    /// on every topic the subscription pattern `topic` could match.
    pub fn topic(&self, topic: &str, action: TopicAction) -> bool {
        self.topics.iter().any(|grant| {
            grant.allow.contains(&action) && topic_pattern_covers(&grant.pattern, topic)
        })
    }

    /// Whether `action` is allowed on the method `method`.
    pub fn method(&self, method: &str, action: MethodAction) -> bool {
        self.methods
            .iter()
            .any(|grant| grant.allow.contains(&action) && glob_matches(&grant.pattern, method, '.'))
    }
}

/// What one session may do with one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRights {
    pub access: DocAccess,
    /// For `write`: where it may write; `None` anywhere. Unused for `read`.
    pub scopes: Option<Vec<Pointer>>,
}

/// A commit op outside the session's write rights.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("op {op_index} writes {pointer}: {why}")]
pub struct OutOfScope {
    pub op_index: usize,
    pub pointer: Pointer,
    pub why: String,
}

impl DocRights {
    /// Read and write anywhere.
    pub fn full() -> Self {
        Self { access: DocAccess::Write, scopes: None }
    }

    /// Checks that every op of `writes` stays inside the write scopes. The
    /// locations an op writes: its `path`, and for `move` also its `from`
    /// (which it removes). `test` writes nothing.
    pub fn check_writes(&self, writes: &[PatchOp]) -> Result<(), OutOfScope> {
        for (op_index, op) in writes.iter().enumerate() {
            if self.access != DocAccess::Write {
                return Err(OutOfScope {
                    op_index,
                    pointer: op.path().clone(),
                    why: "the document is read-only for this session".to_owned(),
                });
            }
            let Some(scopes) = &self.scopes else { continue };
            for pointer in op.written() {
                if !scopes.iter().any(|scope| scope.is_prefix_of(pointer)) {
                    return Err(OutOfScope {
                        op_index,
                        pointer: pointer.clone(),
                        why: format!("outside the write scopes {}", scope_list(scopes)),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Most write scopes a refusal lists; the rest are counted.
const SCOPES_LISTED_MAX: usize = 8;

/// `["/shapes", "/cursors/alice"]`, at most `SCOPES_LISTED_MAX` of them.
fn scope_list(scopes: &[Pointer]) -> String {
    let mut listed: Vec<String> = scopes
        .iter()
        .take(SCOPES_LISTED_MAX)
        .map(|scope| format!("{:?}", scope.to_string()))
        .collect();
    if scopes.len() > SCOPES_LISTED_MAX {
        listed.push(format!("and {} more", scopes.len() - SCOPES_LISTED_MAX));
    }
    if scopes.is_empty() {
        return "[] (none)".to_owned();
    }
    format!("[{}]", listed.join(", "))
}

/// Glob matching over `text`: `**` matches any run of characters, `*` any
/// run without `separator`, everything else itself. Linear in
/// `pattern.len() * text.len()` (both bounded by the callers).
pub fn glob_matches(pattern: &str, text: &str, separator: char) -> bool {
    #[derive(Clone, Copy)]
    enum Piece {
        Literal(u8),
        Star,
        DoubleStar,
    }
    let raw = pattern.as_bytes();
    let mut pieces = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'*' {
            if raw.get(i + 1) == Some(&b'*') {
                pieces.push(Piece::DoubleStar);
                i += 2;
            } else {
                pieces.push(Piece::Star);
                i += 1;
            }
        } else {
            pieces.push(Piece::Literal(raw[i]));
            i += 1;
        }
    }
    let text = text.as_bytes();
    let separator = separator as u8;
    // matched[j]: the pieces so far match text[..j].
    let mut matched = vec![false; text.len() + 1];
    matched[0] = true;
    // Two rows, swapped after each piece: every entry of `next` is
    // written before it is read.
    let mut next = vec![false; text.len() + 1];
    for piece in pieces {
        match piece {
            Piece::Literal(byte) => {
                next[0] = false;
                for j in 0..text.len() {
                    next[j + 1] = matched[j] && text[j] == byte;
                }
            }
            Piece::Star | Piece::DoubleStar => {
                let crosses = matches!(piece, Piece::DoubleStar);
                for j in 0..=text.len() {
                    next[j] = matched[j]
                        || (j > 0 && next[j - 1] && (crosses || text[j - 1] != separator));
                }
            }
        }
        std::mem::swap(&mut matched, &mut next);
    }
    matched[text.len()]
}

/// Whether the topic pattern `grant` (`*` one segment, `>` one or more at
/// the end) matches every topic the pattern `asked` matches. A concrete
/// topic is a pattern that matches only itself.
pub fn topic_pattern_covers(grant: &str, asked: &str) -> bool {
    let mut granted = grant.split('.');
    let mut wanted = asked.split('.');
    loop {
        match (granted.next(), wanted.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(token)) if token != ">" => {}
            (Some(g), Some(w)) if g == w && g != ">" => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(raw: &str) -> DocId {
        DocId::parse(raw).unwrap()
    }

    fn ops(patch: serde_json::Value) -> Vec<PatchOp> {
        serde_json::from_value(patch).unwrap()
    }

    #[test]
    fn glob_stars_stop_at_the_separator_and_double_stars_do_not() {
        assert!(glob_matches("board:*", "board:a", '/'));
        assert!(!glob_matches("board:*", "board:a/b", '/'));
        assert!(glob_matches("team/42/**", "team/42/x/y", '/'));
        assert!(!glob_matches("team/42/**", "team/43/x", '/'));
        assert!(glob_matches("**", "anything/at/all", '/'));
        assert!(glob_matches("a*c", "abbbc", '/'));
        assert!(!glob_matches("a*c", "abbb", '/'));
        assert!(glob_matches("math.*", "math.add", '.'));
        assert!(!glob_matches("math.*", "math.v2.add", '.'));
        assert!(glob_matches("exact", "exact", '/'));
        assert!(!glob_matches("exact", "exactly", '/'));
        assert!(glob_matches("*", "", '/'));
    }

    #[test]
    fn topic_grants_cover_only_what_they_match() {
        assert!(topic_pattern_covers("chat.>", "chat.room1"));
        assert!(topic_pattern_covers("chat.>", "chat.room1.*"));
        assert!(topic_pattern_covers("chat.>", "chat.>"));
        assert!(!topic_pattern_covers("chat.>", "chat"));
        assert!(!topic_pattern_covers("chat.>", ">"));
        assert!(topic_pattern_covers("chat.*", "chat.room1"));
        assert!(topic_pattern_covers("chat.*", "chat.*"));
        assert!(!topic_pattern_covers("chat.*", "chat.>"));
        assert!(!topic_pattern_covers("chat.*", "chat.a.b"));
        assert!(!topic_pattern_covers("chat.room1", "chat.*"));
        assert!(topic_pattern_covers(">", "x.y.z"));
    }

    #[test]
    fn grants_add_up_and_scopes_take_the_subject() {
        let claim = json!({
            "docs": [
                {"pattern": "board:*", "access": "read"},
                {"pattern": "board:a", "access": "write", "scopes": ["/shapes", "/cursors/{sub}"]},
                {"pattern": "board:a", "access": "write", "scopes": ["/notes"]},
            ],
            "topics": [{"pattern": "chat.>", "allow": ["subscribe"]}],
            "methods": [{"pattern": "math.*", "allow": ["call"]}],
        });
        let permissions = Permissions::from_claim(&claim, "al/~ice").unwrap();
        assert_eq!(permissions.doc(&doc("board:b")).unwrap().access, DocAccess::Read);
        assert_eq!(permissions.doc(&doc("other")), None);
        let rights = permissions.doc(&doc("board:a")).unwrap();
        assert_eq!(rights.access, DocAccess::Write);
        let scopes: Vec<String> =
            rights.scopes.clone().unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(scopes, ["/shapes", "/cursors/al~1~0ice", "/notes"]);
        assert!(rights
            .check_writes(&ops(json!([
                {"op": "add", "path": "/shapes/s1", "value": 1},
                {"op": "replace", "path": "/cursors/al~1~0ice", "value": {"x": 1}},
                {"op": "test", "path": "/settings", "value": 1},
            ])))
            .is_ok());
        let refused = rights
            .check_writes(&ops(json!([
                {"op": "add", "path": "/shapes/s1", "value": 1},
                {"op": "remove", "path": "/settings"},
            ])))
            .unwrap_err();
        assert_eq!((refused.op_index, refused.pointer.to_string()), (1, "/settings".into()));
        assert_eq!(
            refused.why,
            r#"outside the write scopes ["/shapes", "/cursors/al~1~0ice", "/notes"]"#
        );
        // A move writes where it takes from, too.
        let refused = rights
            .check_writes(&ops(json!([{"op": "move", "from": "/settings", "path": "/shapes/x"}])))
            .unwrap_err();
        assert_eq!(refused.pointer.to_string(), "/settings");
        // Writing a scope's ancestor replaces more than the scope.
        assert!(rights
            .check_writes(&ops(json!([{"op": "replace", "path": "/cursors", "value": {}}])))
            .is_err());
        assert!(permissions.topic("chat.x", TopicAction::Subscribe));
        assert!(!permissions.topic("chat.x", TopicAction::Publish));
        assert!(permissions.method("math.add", MethodAction::Call));
        assert!(!permissions.method("math.add", MethodAction::Register));
    }

    #[test]
    fn a_write_grant_without_scopes_opens_the_whole_document() {
        let claim = json!({"docs": [
            {"pattern": "d", "access": "write", "scopes": ["/a"]},
            {"pattern": "*", "access": "write"},
        ]});
        let rights = Permissions::from_claim(&claim, "u").unwrap().doc(&doc("d")).unwrap();
        assert_eq!(rights.scopes, None);
        assert!(rights
            .check_writes(&ops(json!([{"op": "add", "path": "/z", "value": 1}])))
            .is_ok());
    }

    #[test]
    fn read_access_refuses_every_write_and_nothing_allows_nothing() {
        let claim = json!({"docs": [{"pattern": "d", "access": "read"}]});
        let permissions = Permissions::from_claim(&claim, "u").unwrap();
        let rights = permissions.doc(&doc("d")).unwrap();
        let refused = rights
            .check_writes(&ops(json!([{"op": "add", "path": "/x", "value": 1}])))
            .unwrap_err();
        assert!(refused.why.contains("read-only"), "{refused}");
        let none = Permissions::from_claim(&Value::Null, "u").unwrap();
        assert_eq!(none.doc(&doc("d")), None);
        assert!(!none.topic("a", TopicAction::Subscribe));
        assert!(!none.method("a", MethodAction::Call));
        assert!(Permissions::all().doc(&doc("any/thing")).unwrap().scopes.is_none());
    }

    #[test]
    fn malformed_claims_are_refused_with_a_reason() {
        let refuse = |claim: Value| Permissions::from_claim(&claim, "u").unwrap_err();
        assert!(matches!(refuse(json!({"docs": 1})), InvalidPermissions::Malformed(_)));
        assert!(matches!(refuse(json!({"nope": []})), InvalidPermissions::Malformed(_)));
        let bad_scope = json!({"docs": [{"pattern": "d", "access": "write", "scopes": ["x"]}]});
        assert!(matches!(refuse(bad_scope), InvalidPermissions::BadScope { .. }));
        let many: Vec<Value> =
            (0..=GRANTS_MAX).map(|_| json!({"pattern": "d", "access": "read"})).collect();
        assert!(matches!(
            refuse(json!({ "docs": many })),
            InvalidPermissions::TooManyGrants { .. }
        ));
        assert!(matches!(
            refuse(json!({"docs": [{"pattern": "", "access": "read"}]})),
            InvalidPermissions::BadPattern(_)
        ));
        assert_eq!(
            Permissions::from_claim(&Value::Null, "").unwrap_err(),
            InvalidPermissions::BadSubject
        );
    }
}
