//! Identifier newtypes: `DocId`, `Version` and `TxId`.
//!
//! Each is validated once, where it enters the system (deserialisation or an
//! explicit `parse`), so the rest of the engine can take its well-formedness
//! for granted.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::InvalidId;

/// Longest document id accepted, in bytes (docs/protocol.md, section 1).
pub const DOC_ID_LEN_MAX: usize = 128;
/// Longest transaction id accepted, in bytes.
pub const TX_ID_LEN_MAX: usize = 64;

/// The id of a document: 1–128 characters of `[A-Za-z0-9._:/-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DocId(String);

impl DocId {
    /// Validates `raw` as a document id.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._:/-".contains(c);
        if raw.is_empty() || raw.len() > DOC_ID_LEN_MAX || !raw.chars().all(allowed) {
            return Err(InvalidId::Doc(truncate_for_message(raw)));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets a map keyed by `DocId` look up by reference and clone the id only
/// when it inserts (`hashbrown`'s `entry_ref`).
impl From<&DocId> for DocId {
    fn from(id: &DocId) -> Self {
        id.clone()
    }
}

/// The id a client gives a transaction: 1–64 printable ASCII characters.
///
/// Clients make it unique per client (the Rust and TypeScript clients use a
/// random client id plus a sequence number), and the store remembers recent
/// ids so a resubmission gets its original outcome instead of a second commit.
///
/// The text sits behind an `Arc`: the store clones a tx id into its dedup
/// window, the change and the author list of every commit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TxId(Arc<str>);

impl TxId {
    /// Validates `raw` as a transaction id.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let printable = |c: char| c.is_ascii_graphic();
        if raw.is_empty() || raw.len() > TX_ID_LEN_MAX || !raw.chars().all(printable) {
            return Err(InvalidId::Tx(truncate_for_message(raw)));
        }
        Ok(Self(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A document version. Versions strictly increase with every commit to a
/// document; a document never written is at `Version::ZERO`.
///
/// In this implementation versions are dense (each commit adds one), which the
/// replica uses to detect a gap; clients of the protocol should still treat
/// them only as ordered.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    pub const ZERO: Version = Version(0);

    /// The version the next commit after `self` gets.
    #[must_use]
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

fn truncate_for_message(raw: &str) -> String {
    raw.chars().take(40).collect()
}

macro_rules! string_newtype_impls {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(raw: String) -> Result<Self, InvalidId> {
                Self::parse(&raw)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}
string_newtype_impls!(DocId);
string_newtype_impls!(TxId);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_ids_follow_the_spec_alphabet_and_length() {
        for ok in ["a", "boards/team-1", "x.y:z_0", &"a".repeat(DOC_ID_LEN_MAX)] {
            assert!(DocId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "é", "a?b", &"a".repeat(DOC_ID_LEN_MAX + 1)] {
            assert!(DocId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tx_ids_are_printable_and_bounded() {
        assert!(TxId::parse("c7f3-12").is_ok());
        assert!(TxId::parse("").is_err());
        assert!(TxId::parse("a b").is_err());
        assert!(TxId::parse(&"t".repeat(TX_ID_LEN_MAX + 1)).is_err());
    }

    #[test]
    fn ids_are_validated_when_deserialised() {
        assert!(serde_json::from_str::<DocId>("\"ok/doc\"").is_ok());
        assert!(serde_json::from_str::<DocId>("\"not ok\"").is_err());
    }
}
