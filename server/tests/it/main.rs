//! Integration tests of `concord-server`: a real server on port 0, raw
//! WebSocket clients, and the real `concord` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod crash;
mod documents;
mod durability;
mod frames;
mod http;
mod limits;
mod pubsub;
mod rpc;
mod rules;
mod slow;
mod support;
mod tls;
