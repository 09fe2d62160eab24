//! Integration tests of `concord-client` against the real `concord-server`,
//! started in-process on port 0 for each test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod netsim;
mod pubsub;
mod resume;
mod rpc;
mod support;
mod tls;
mod transact;
