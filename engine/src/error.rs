//! Error types. Each expected failure is a value with a stable wire code
//! (see `protocol::ErrorCode`); a broken internal invariant is a bug and is
//! caught by assertions instead.

use serde::{Deserialize, Serialize};

use crate::pointer::Pointer;

/// An id that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// Not 1–128 characters of `[A-Za-z0-9._:/-]`.
    #[error("invalid document id {0:?}: use 1-128 characters of [A-Za-z0-9._:/-]")]
    Doc(String),
    /// Not 1–64 printable ASCII characters.
    #[error("invalid transaction id {0:?}: use 1-64 printable ASCII characters")]
    Tx(String),
}

/// A string that is not an RFC 6901 JSON Pointer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPointer {
    /// A non-empty pointer must start with `/`.
    #[error("a JSON Pointer must be empty or start with '/'")]
    MissingLeadingSlash,
    /// `~` must be followed by `0` or `1`.
    #[error("'~' in a JSON Pointer must be followed by '0' or '1'")]
    BadEscape,
    /// Longer than `POINTER_LEN_MAX`.
    #[error("JSON Pointer is {len_bytes} bytes, over the limit")]
    TooLong { len_bytes: usize },
}

/// Why one patch op could not be applied. The whole patch is then undone.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum PatchOpError {
    /// The path, or for `add` its parent, does not exist.
    #[error("path {path} does not exist")]
    PathNotFound { path: Pointer },
    /// The parent of the path is a scalar, not an object or array.
    #[error("parent of {path} is not an object or array")]
    ParentNotContainer { path: Pointer },
    /// An array index that is malformed or past the end.
    #[error("{path} is not a valid index into its array")]
    BadArrayIndex { path: Pointer },
    /// A `test` op found a different value.
    #[error("test failed at {path}")]
    TestFailed { path: Pointer },
    /// `move` from a location into one of its own children.
    #[error("cannot move {from} into its own child {path}")]
    MoveIntoChild { from: Pointer, path: Pointer },
    /// `remove` of the whole document.
    #[error("cannot remove the document root")]
    RemoveRoot,
    /// `incr` on a value that is not a number.
    #[error("incr at {path}: the value there is not a number")]
    NotANumber { path: Pointer },
    /// `incr` whose result does not fit a finite JSON number.
    #[error("incr at {path} overflows")]
    NumberOverflow { path: Pointer },
    /// The value written would nest deeper than `json_depth_max`.
    #[error("{path} would nest {depth} levels deep, over the limit of {max}")]
    DepthExceeded { path: Pointer, depth: usize, max: usize },
    /// The document would grow past `doc_size_bytes_max`.
    #[error("document would grow to about {size_bytes} bytes, over the limit of {max_bytes}")]
    SizeExceeded { size_bytes: usize, max_bytes: usize },
}

impl PatchOpError {
    /// The pointers this error names.
    pub fn pointers(&self) -> impl Iterator<Item = &Pointer> {
        let (first, second) = match self {
            PatchOpError::PathNotFound { path }
            | PatchOpError::ParentNotContainer { path }
            | PatchOpError::BadArrayIndex { path }
            | PatchOpError::TestFailed { path }
            | PatchOpError::NotANumber { path }
            | PatchOpError::NumberOverflow { path }
            | PatchOpError::DepthExceeded { path, .. } => (Some(path), None),
            PatchOpError::MoveIntoChild { from, path } => (Some(from), Some(path)),
            PatchOpError::RemoveRoot | PatchOpError::SizeExceeded { .. } => (None, None),
        };
        first.into_iter().chain(second)
    }
}

/// A patch that failed: which op and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("patch op {op_index} failed: {error}")]
pub struct PatchError {
    pub op_index: usize,
    pub error: PatchOpError,
}
