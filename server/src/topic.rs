//! The subscription trie used by the hub.
//!
//! Topic and pattern syntax, and what a pattern matches, are the engine's
//! (`concord_engine::protocol::topic`, shared with the Rust client); the trie
//! answers the same question for every subscription at once. Matching walks
//! the trie along the topic's segments, so its cost depends on the topic,
//! not on the number of subscriptions. A test checks it against
//! `topic_matches` over every small pattern and topic.

use std::collections::{HashMap, HashSet};

use crate::shard::SessionId;

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

    /// The trie and the engine's `topic_matches` agree on every checked
    /// pattern of up to three segments and every topic of up to four, over
    /// a two-letter alphabet plus the wildcards (all of them, not a sample).
    #[test]
    fn the_trie_matches_exactly_what_topic_matches_says() {
        use concord_engine::protocol::{check_pattern, check_topic, topic_matches};

        fn words(alphabet: &[&str], segments_max: usize) -> Vec<String> {
            let mut all: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
            let mut last = all.clone();
            for _ in 1..segments_max {
                last = last
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |s| format!("{w}.{s}")))
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        }
        let patterns: Vec<String> = words(&["a", "b", "*", ">"], 3)
            .into_iter()
            .filter(|p| check_pattern(p, 64).is_ok())
            .collect();
        let topics: Vec<String> =
            words(&["a", "b"], 4).into_iter().filter(|t| check_topic(t, 64).is_ok()).collect();
        assert!(patterns.len() > 50 && topics.len() == 30, "{} {}", patterns.len(), topics.len());
        let mut trie = Trie::default();
        for pattern in &patterns {
            trie.insert(pattern, SessionId::from(pattern.as_str()));
        }
        for topic in &topics {
            let found = trie.matches(topic);
            for pattern in &patterns {
                let session = SessionId::from(pattern.as_str());
                let expected = topic_matches(pattern, topic);
                assert_eq!(found.contains(&session), expected, "{pattern} vs {topic}");
            }
        }
        for pattern in &patterns {
            trie.remove(pattern, &SessionId::from(pattern.as_str()));
        }
        assert!(trie.is_empty());
    }
}
