//! Publish/subscribe on the client side (docs/protocol.md, section 4): the
//! `Subscription` receiver, and the engine's topic, pattern and method checks
//! (`concord_engine::protocol`) at this client's name limit.
//!
//! The server sends each matching message to the session once; the client
//! hands it to every local subscription whose pattern matches, so several
//! subscriptions with overlapping patterns each see it. Pub/sub is
//! at-most-once: messages published while the client is reconnecting are not
//! replayed, and a subscriber that falls behind loses the oldest (counted by
//! [`Subscription::missed`]).

use concord_engine::protocol;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::config::NAME_BYTES_MAX;

/// One published message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub data: Value,
}

/// Whether `topic` (dot-separated segments) matches `pattern`, where `*`
/// matches exactly one segment and a final `>` matches one or more. The
/// engine's predicate, the one the server's subscription trie is tested
/// against; re-exported here as part of this crate's API.
pub use concord_engine::protocol::topic_matches;

// The client refuses locally exactly what a server with default limits
// refuses; its own limit is documented in `config`, the value is the
// protocol's.
const _: () = assert!(NAME_BYTES_MAX == concord_engine::protocol::NAME_BYTES_MAX);

/// Checks a topic to publish on (the engine's check, at `NAME_BYTES_MAX`).
pub(crate) fn check_topic(topic: &str) -> Result<(), String> {
    protocol::check_topic(topic, NAME_BYTES_MAX).map_err(|error| error.to_string())
}

/// Checks a subscription pattern (the engine's check, at `NAME_BYTES_MAX`).
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    protocol::check_pattern(pattern, NAME_BYTES_MAX).map_err(|error| error.to_string())
}

/// Checks a method name (the engine's check, at `NAME_BYTES_MAX`).
pub(crate) fn check_method(method: &str) -> Result<(), String> {
    protocol::check_method(method, NAME_BYTES_MAX).map_err(|error| error.to_string())
}

/// Messages on topics matching one pattern, from `Client::subscribe`.
///
/// The subscription ends on the server when every receiver for its pattern
/// has been dropped and the next message for it arrives, or at once with
/// [`Client::unsubscribe`](crate::Client::unsubscribe).
#[derive(Debug)]
pub struct Subscription {
    pattern: String,
    receiver: broadcast::Receiver<Message>,
    missed: u64,
}

impl Subscription {
    pub(crate) fn new(pattern: String, receiver: broadcast::Receiver<Message>) -> Self {
        Self { pattern, receiver, missed: 0 }
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The next message; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            match self.receiver.recv().await {
                Ok(message) => return Some(message),
                Err(broadcast::error::RecvError::Lagged(count)) => self.missed += count,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// How many messages this receiver lost by falling behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_they_reach_the_server() {
        assert!(check_pattern("board.*.cursor").is_ok());
        assert!(check_pattern("board.>").is_ok());
        assert!(check_pattern("board.>.x").is_err());
        assert!(check_pattern("board..x").is_err());
        assert!(check_pattern("a*b").is_err());
        assert!(check_topic("board.7").is_ok());
        assert!(check_topic("board.*").is_err());
        assert!(check_topic("").is_err());
        assert!(check_method("math.add").is_ok());
        assert!(check_method("rpc.discover").is_err());
        assert!(check_method("has space").is_err());
        assert!(check_topic(&"a".repeat(NAME_BYTES_MAX)).is_ok());
        assert!(check_topic(&"a".repeat(NAME_BYTES_MAX + 1)).is_err());
    }
}
