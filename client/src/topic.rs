//! Publish/subscribe on the client side (docs/protocol.md, section 4): topic pattern matching
//! and the `Subscription` receiver.
//!
//! The server sends each matching message to the session once; the client
//! hands it to every local subscription whose pattern matches, so several
//! subscriptions with overlapping patterns each see it. Pub/sub is
//! at-most-once: messages published while the client is reconnecting are not
//! replayed, and a subscriber that falls behind loses the oldest (counted by
//! [`Subscription::missed`]).

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
/// matches exactly one segment and a final `>` matches one or more.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    let mut topic_segments = topic.split('.');
    for segment in pattern.split('.') {
        match (segment, topic_segments.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (literal, Some(actual)) if literal == actual => {}
            _ => return false,
        }
    }
    topic_segments.next().is_none()
}

/// Checks a topic to publish on: dot-separated non-empty segments without
/// spaces, control characters or wildcards, at most `NAME_BYTES_MAX` bytes.
pub(crate) fn check_topic(topic: &str) -> Result<(), String> {
    check_name(topic, Wildcards::Refused)
}

/// Checks a subscription pattern: like a topic, plus `*` as a whole segment
/// and `>` as the whole last segment.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    check_name(pattern, Wildcards::Allowed)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wildcards {
    Allowed,
    Refused,
}

fn check_name(name: &str, wildcards: Wildcards) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!("a topic must be 1-{NAME_BYTES_MAX} bytes"));
    }
    let segments: Vec<&str> = name.split('.').collect();
    for (index, segment) in segments.iter().enumerate() {
        if segment.is_empty() || segment.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{name:?}: segments must be non-empty, without spaces"));
        }
        let wild = *segment == "*" || (*segment == ">" && index == segments.len() - 1);
        if (wild && wildcards == Wildcards::Refused) || (!wild && segment.contains(['*', '>'])) {
            return Err(format!("{name:?}: '*' and '>' only as whole segments of a pattern"));
        }
    }
    Ok(())
}

/// Checks a method name: 1-`NAME_BYTES_MAX` printable ASCII bytes, not
/// starting with `rpc.` (reserved by JSON-RPC).
pub(crate) fn check_method(method: &str) -> Result<(), String> {
    let printable = method.bytes().all(|b| b.is_ascii_graphic());
    if method.is_empty() || method.len() > NAME_BYTES_MAX || !printable {
        return Err(format!("a method name is 1-{NAME_BYTES_MAX} printable ASCII bytes"));
    }
    if method.starts_with("rpc.") {
        return Err("method names starting with \"rpc.\" are reserved".into());
    }
    Ok(())
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
    fn wildcards_match_as_documented() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.*", "a", false),
            ("*.b", "x.b", true),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            (">", "anything.at.all", true),
            ("a.b.c", "a.b", false),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(topic_matches(pattern, topic), expected, "{pattern} vs {topic}");
        }
    }

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
    }
}
