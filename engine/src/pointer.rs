//! JSON Pointers (RFC 6901), parsed and validated once.
//!
//! A `Pointer` holds its reference tokens already unescaped, so the version
//! index and the patch code walk tokens without re-parsing strings. The
//! tokens sit behind an `Arc`: a pointer is cloned into the undo log, the
//! written locations, conflicts and changes, and each clone must be cheap.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::InvalidPointer;

/// Longest pointer accepted, in bytes of its string form.
pub const POINTER_LEN_MAX: usize = 4096;

/// A JSON Pointer: the empty pointer `""` names the whole document, `/a/0`
/// names element 0 of member `a`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pointer {
    tokens: Arc<[String]>,
}

impl Pointer {
    /// The pointer to the whole document.
    pub fn root() -> Self {
        Self { tokens: Arc::from([]) }
    }

    /// Parses the string form, e.g. `"/shapes/a~1b/0"`.
    pub fn parse(raw: &str) -> Result<Self, InvalidPointer> {
        if raw.len() > POINTER_LEN_MAX {
            return Err(InvalidPointer::TooLong { len_bytes: raw.len() });
        }
        if raw.is_empty() {
            return Ok(Self::root());
        }
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(InvalidPointer::MissingLeadingSlash);
        };
        let tokens = rest.split('/').map(unescape).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { tokens: tokens.into() })
    }

    /// Builds a pointer from unescaped tokens.
    pub fn from_tokens<I, S>(tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { tokens: tokens.into_iter().map(Into::into).collect::<Vec<_>>().into() }
    }

    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// About how much heap memory this pointer holds: the shared token
    /// slice and each token's own allocation (with the allocator's
    /// per-allocation overhead). For bounding what is kept, not exact.
    pub fn heap_bytes_estimate(&self) -> usize {
        const ALLOCATION_OVERHEAD_BYTES: usize = 16;
        let slice = 2 * size_of::<usize>() + ALLOCATION_OVERHEAD_BYTES;
        let tokens: usize = self
            .tokens
            .iter()
            .map(|token| size_of::<String>() + ALLOCATION_OVERHEAD_BYTES + token.len())
            .sum();
        slice + tokens
    }

    pub fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Number of reference tokens (0 for the root).
    pub fn depth(&self) -> usize {
        self.tokens.len()
    }

    /// The pointer to the parent, or `None` for the root.
    pub fn parent(&self) -> Option<Pointer> {
        let (_, init) = self.tokens.split_last()?;
        Some(Pointer { tokens: init.into() })
    }

    /// The last token, or `None` for the root.
    pub fn last(&self) -> Option<&str> {
        self.tokens.last().map(String::as_str)
    }

    /// A child pointer, one token deeper.
    #[must_use]
    pub fn child(&self, token: impl Into<String>) -> Pointer {
        let mut tokens = self.tokens.to_vec();
        tokens.push(token.into());
        Pointer { tokens: tokens.into() }
    }

    /// True when `self` is `other` or one of its ancestors.
    pub fn is_prefix_of(&self, other: &Pointer) -> bool {
        other.tokens.starts_with(&self.tokens[..])
    }

    /// True when one of the two is a prefix of the other: the relation under
    /// which a write to one conflicts with a read of the other.
    pub fn overlaps(&self, other: &Pointer) -> bool {
        self.is_prefix_of(other) || other.is_prefix_of(self)
    }
}

/// Parses an array index token as RFC 6901 allows it: `0` or digits without a
/// leading zero. `-` (past the end) is handled by callers.
pub fn parse_array_index(token: &str) -> Option<usize> {
    let well_formed = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    if well_formed {
        token.parse().ok()
    } else {
        None
    }
}

fn unescape(token: &str) -> Result<String, InvalidPointer> {
    if !token.contains('~') {
        return Ok(token.to_owned());
    }
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return Err(InvalidPointer::BadEscape),
        }
    }
    Ok(out)
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for token in self.tokens.iter() {
            f.write_str("/")?;
            if token.contains(['~', '/']) {
                f.write_str(&token.replace('~', "~0").replace('/', "~1"))?;
            } else {
                f.write_str(token)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pointer({:?})", self.to_string())
    }
}

impl TryFrom<String> for Pointer {
    type Error = InvalidPointer;
    fn try_from(raw: String) -> Result<Self, InvalidPointer> {
        Self::parse(&raw)
    }
}

impl From<Pointer> for String {
    fn from(pointer: Pointer) -> String {
        pointer.to_string()
    }
}

impl std::str::FromStr for Pointer {
    type Err = InvalidPointer;
    fn from_str(raw: &str) -> Result<Self, InvalidPointer> {
        Self::parse(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rfc_6901_examples() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("/foo", &["foo"]),
            ("/foo/0", &["foo", "0"]),
            ("/", &[""]),
            ("/a~1b", &["a/b"]),
            ("/m~0n", &["m~n"]),
            ("/c%d", &["c%d"]),
            ("/ ", &[" "]),
        ];
        for (raw, tokens) in cases {
            let pointer = Pointer::parse(raw).unwrap();
            assert_eq!(pointer.tokens(), *tokens, "{raw}");
            assert_eq!(pointer.to_string(), *raw, "round trip of {raw}");
        }
    }

    #[test]
    fn rejects_malformed_pointers() {
        assert_eq!(Pointer::parse("foo"), Err(InvalidPointer::MissingLeadingSlash));
        assert_eq!(Pointer::parse("/a~2"), Err(InvalidPointer::BadEscape));
        assert_eq!(Pointer::parse("/a~"), Err(InvalidPointer::BadEscape));
        let long = "/a".repeat(POINTER_LEN_MAX);
        assert!(matches!(Pointer::parse(&long), Err(InvalidPointer::TooLong { .. })));
    }

    #[test]
    fn prefix_and_overlap_relations() {
        let a = Pointer::parse("/a").unwrap();
        let ab = Pointer::parse("/a/b").unwrap();
        let ac = Pointer::parse("/a/c").unwrap();
        assert!(a.is_prefix_of(&ab) && a.overlaps(&ab) && ab.overlaps(&a));
        assert!(!ab.overlaps(&ac));
        assert!(Pointer::root().overlaps(&ac));
    }

    #[test]
    fn array_indices_follow_rfc_6901() {
        assert_eq!(parse_array_index("0"), Some(0));
        assert_eq!(parse_array_index("12"), Some(12));
        for bad in ["", "01", "-", "1e2", "-1", "+1"] {
            assert_eq!(parse_array_index(bad), None, "{bad}");
        }
    }
}
