//! `concord-engine`: the sans-IO core of Concord.
//!
//! Everything that decides whether a transaction commits lives here, with no
//! tokio, sockets, files or clocks: time, where needed, is a parameter. The
//! server and the clients are thin shells around these types.
//!
//! # Layout
//! - `access`: identities, permissions (document, pointer-scope, topic and
//!   method grants) and the pure checks made with them.
//! - `ids`: `DocId`, `TxId`, `Version` newtypes, validated once.
//! - `pointer`: RFC 6901 JSON Pointers, parsed once into tokens.
//! - `patch`: RFC 6902 ops plus `incr`, applied atomically in place with an
//!   undo log; reports the locations written (the array rule).
//! - `index`: the per-document version index that makes read validation cost
//!   proportional to pointer depth.
//! - `store`: the authoritative documents; `Store::commit` validates, applies
//!   and sequences a transaction and yields the `Change` to log and broadcast.
//! - `replica`: the client-side state machine: a document copy, pending
//!   transactions in an optimistic view, and the transaction runner.
//! - `certificate`: a serializability checker over a commit log.
//! - `protocol`: the wire messages, stable error codes and close codes;
//!   JSON-RPC classification and builders, topic syntax and matching, and
//!   name limits, shared by the server and the Rust client.
//! - `limits`: every bound input can push against.
//! - `error`: typed errors.

pub mod access;
pub mod certificate;
pub mod doc;
pub mod error;
pub mod ids;
pub mod index;
pub mod limits;
pub mod patch;
pub mod pointer;
pub mod protocol;
pub mod replica;
pub mod store;

pub use doc::{Doc, JsonTree};
pub use error::{InvalidId, InvalidPointer, PatchError, PatchOpError};
pub use ids::{DocId, TxId, Version};
pub use limits::Limits;
pub use patch::{Patch, PatchOp};
pub use pointer::Pointer;
pub use store::{
    AllowAll, Change, Commit, CommitCheck, CommitView, Conflict, Outcome, Rejection, Store,
    Transaction,
};
