//! JSON-RPC 2.0 over the session (docs/protocol.md, section 5): the
//! server-side procedure and mutator types registered on the `ServerBuilder`.
//! Message classification, builders, error codes and method names are the
//! engine's (`concord_engine::protocol::rpc`), shared with the Rust client.
//!
//! Calls to server procedures run in tasks owned by the calling session (so
//! they are dropped when it disconnects) under `rpc_call_timeout`. Mutators
//! run *inside* the shard that owns their document: they see the current
//! value, and the patch they return is committed through `Store::commit` and
//! broadcast exactly like a client commit, so they serialise with every
//! other transaction and cannot conflict.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use concord_engine::{Doc, DocId, Patch, Version};
use serde_json::Value;

use crate::shard::Documents;

/// Standard JSON-RPC 2.0 codes and Concord's server errors (−32000…−32099),
/// defined once in the protocol module shared with the clients.
pub use concord_engine::protocol::rpc_code as code;

pub use concord_engine::protocol::RpcError;

/// What a procedure knows about its call.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The calling session's id (as other clients see it in presence).
    pub session: String,
    /// Read and mutate documents on the authoritative store.
    pub documents: Documents,
    /// Who is calling (on an open server, an anonymous identity allowed
    /// everything): a procedure decides what the caller may do with it.
    pub identity: Arc<concord_engine::access::Identity>,
}

/// The future a procedure returns.
pub type ProcedureFuture = Pin<Box<dyn Future<Output = Result<Value, RpcError>> + Send>>;

/// A server procedure: takes the call context and the params (`null` when
/// omitted) and answers with a result or an error.
pub(crate) type Procedure = Arc<dyn Fn(CallContext, Value) -> ProcedureFuture + Send + Sync>;

/// What a mutator sees: runs on the shard that owns `doc`, with its current
/// value (the store's own representation: read it with `get`, `pointer`,
/// `as_i64`…, or copy it out with `to_value`) and version.
#[derive(Debug)]
pub struct MutatorCall<'a> {
    /// The call's params; always an object with a string member `doc`.
    pub params: &'a Value,
    pub doc: &'a DocId,
    pub value: &'a Doc,
    pub version: Version,
    pub session: &'a str,
}

/// What a mutator decides: the writes to commit and the call's result.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mutation {
    pub writes: Patch,
    pub result: Value,
}

/// A mutator as stored by the builder.
pub(crate) type MutatorFn =
    Arc<dyn Fn(MutatorCall<'_>) -> Result<Mutation, RpcError> + Send + Sync>;
