//! Topic names, patterns and the subscription trie used by the hub.
//!
//! Topics are dot-separated segments (`board.7.cursor`). A pattern may use
//! `*` for exactly one segment and `>` (only as the last segment) for one or
//! more remaining segments, as in NATS. Matching walks the trie along the
//! topic's segments, so its cost depends on the topic, not on the number of
//! subscriptions.

use std::collections::{HashMap, HashSet};

use crate::shard::SessionId;

/// Why a topic or pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadTopic {
    #[error("a topic must be 1-{0} bytes")]
    Length(usize),
    #[error("topic segments must be non-empty and free of spaces and control characters")]
    Segment,
    #[error(
        "'*' and '>' must be whole segments, '>' only the last, and neither in a published topic"
    )]
    Wildcard,
}

/// Checks a concrete topic (for `publish`).
pub(crate) fn check_topic(topic: &str, bytes_max: usize) -> Result<(), BadTopic> {
    check(topic, bytes_max, false)
}

/// Checks a subscription pattern.
pub(crate) fn check_pattern(pattern: &str, bytes_max: usize) -> Result<(), BadTopic> {
    check(pattern, bytes_max, true)
}

fn check(text: &str, bytes_max: usize, wildcards: bool) -> Result<(), BadTopic> {
    if text.is_empty() || text.len() > bytes_max {
        return Err(BadTopic::Length(bytes_max));
    }
    let segments: Vec<&str> = text.split('.').collect();
    let last = segments.len() - 1;
    for (index, segment) in segments.iter().enumerate() {
        if segment.is_empty() || segment.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(BadTopic::Segment);
        }
        let wild = *segment == "*" || (*segment == ">" && index == last);
        if (wild && !wildcards) || (!wild && segment.contains(['*', '>'])) {
            return Err(BadTopic::Wildcard);
        }
    }
    Ok(())
}

/// Subscriptions by pattern; each node is one segment.
#[derive(Debug, Default)]
pub(crate) struct Trie {
    children: HashMap<String, Trie>,
    /// Sessions whose pattern ends exactly here.
    here: HashSet<SessionId>,
    /// Sessions whose pattern ends here with `>`.
    rest: HashSet<SessionId>,
}

impl Trie {
    /// Adds `session` under a checked `pattern`.
    pub(crate) fn insert(&mut self, pattern: &str, session: SessionId) {
        let mut node = self;
        let mut segments = pattern.split('.').peekable();
        while let Some(segment) = segments.next() {
            if segment == ">" && segments.peek().is_none() {
                node.rest.insert(session);
                return;
            }
            node = node.children.entry(segment.to_owned()).or_default();
        }
        node.here.insert(session);
    }

    /// Removes `session` from `pattern`, pruning emptied nodes.
    pub(crate) fn remove(&mut self, pattern: &str, session: &SessionId) {
        let segments: Vec<&str> = pattern.split('.').collect();
        self.remove_at(&segments, session);
    }

    fn remove_at(&mut self, segments: &[&str], session: &SessionId) {
        match segments {
            [] => {
                self.here.remove(session);
            }
            [">"] => {
                self.rest.remove(session);
            }
            [first, tail @ ..] => {
                if let Some(child) = self.children.get_mut(*first) {
                    child.remove_at(tail, session);
                    if child.is_empty() {
                        self.children.remove(*first);
                    }
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_empty() && self.rest.is_empty()
    }

    /// Every session with a pattern matching the concrete `topic`.
    pub(crate) fn matches(&self, topic: &str) -> HashSet<SessionId> {
        let segments: Vec<&str> = topic.split('.').collect();
        let mut out = HashSet::new();
        self.collect(&segments, &mut out);
        out
    }

    fn collect(&self, segments: &[&str], out: &mut HashSet<SessionId>) {
        let Some((first, tail)) = segments.split_first() else {
            out.extend(self.here.iter().cloned());
            return;
        };
        out.extend(self.rest.iter().cloned());
        if let Some(child) = self.children.get(*first) {
            child.collect(tail, out);
        }
        if let Some(star) = self.children.get("*") {
            star.collect(tail, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_segment_or_the_rest() {
        let mut trie = Trie::default();
        let (a, b, c): (SessionId, SessionId, SessionId) = ("a".into(), "b".into(), "c".into());
        trie.insert("board.*.cursor", a.clone());
        trie.insert("board.>", b.clone());
        trie.insert("board.1.cursor", c.clone());
        fn sorted(trie: &Trie, topic: &str) -> Vec<String> {
            let mut found: Vec<String> =
                trie.matches(topic).iter().map(|s| s.to_string()).collect();
            found.sort();
            found
        }
        assert_eq!(sorted(&trie, "board.1.cursor"), ["a", "b", "c"]);
        assert_eq!(sorted(&trie, "board.2.cursor"), ["a", "b"]);
        assert_eq!(sorted(&trie, "board.2"), ["b"]);
        assert_eq!(sorted(&trie, "board"), Vec::<String>::new());
        assert_eq!(sorted(&trie, "board.2.cursor.x"), ["b"]);
        trie.remove("board.>", &b);
        trie.remove("board.*.cursor", &a);
        assert_eq!(sorted(&trie, "board.2.cursor"), Vec::<String>::new());
        trie.remove("board.1.cursor", &c);
        assert!(trie.is_empty());
    }

    #[test]
    fn topics_and_patterns_are_validated() {
        assert!(check_topic("a.b", 64).is_ok());
        assert!(check_topic("a.*", 64).is_err());
        assert!(check_topic("a..b", 64).is_err());
        assert!(check_topic("", 64).is_err());
        assert!(check_topic("a b", 64).is_err());
        assert!(check_pattern("a.*.>", 64).is_ok());
        assert!(check_pattern("a.>.b", 64).is_err());
        assert!(check_pattern("a.b*", 64).is_err());
        assert!(check_pattern(&"a".repeat(65), 64).is_err());
    }
}
