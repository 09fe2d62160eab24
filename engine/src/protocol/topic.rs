//! Topic names and subscription patterns (docs/protocol.md, section 4): the
//! syntax checks the server applies to `subscribe` and `publish` and the
//! Rust client applies before sending, and the matching predicate.
//!
//! Topics are dot-separated segments (`board.7.cursor`). A pattern may use
//! `*` for exactly one segment and `>` (only as the last segment) for one or
//! more remaining segments, as in NATS.

/// Why a topic or pattern is refused. Carries the refused name (which is
/// within the byte limit whenever it is carried).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadTopic {
    #[error("a topic must be 1-{max} bytes, not {len}")]
    Length { len: usize, max: usize },
    #[error(
        "{topic:?}: topic segments must be non-empty and free of spaces and control characters"
    )]
    Segment { topic: String },
    #[error(
        "{topic:?}: '*' and '>' must be whole segments, '>' only the last, and neither in a \
         published topic"
    )]
    Wildcard { topic: String },
}

/// Checks a concrete topic (for `publish`): no wildcards.
pub fn check_topic(topic: &str, bytes_max: usize) -> Result<(), BadTopic> {
    check(topic, bytes_max, false)
}

/// Checks a subscription pattern: like a topic, plus `*` as a whole segment
/// and `>` as the whole last segment.
pub fn check_pattern(pattern: &str, bytes_max: usize) -> Result<(), BadTopic> {
    check(pattern, bytes_max, true)
}

fn check(text: &str, bytes_max: usize, wildcards: bool) -> Result<(), BadTopic> {
    if text.is_empty() || text.len() > bytes_max {
        return Err(BadTopic::Length { len: text.len(), max: bytes_max });
    }
    let mut segments = text.split('.').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment.is_empty() || segment.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(BadTopic::Segment { topic: text.to_owned() });
        }
        let wild = segment == "*" || (segment == ">" && last);
        if (wild && !wildcards) || (!wild && segment.contains(['*', '>'])) {
            return Err(BadTopic::Wildcard { topic: text.to_owned() });
        }
    }
    Ok(())
}

/// Whether the concrete `topic` matches `pattern`, where `*` matches exactly
/// one segment and a final `>` matches one or more. Both are taken as
/// checked; the server's subscription trie answers the same question for
/// many patterns at once and is tested against this.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    let mut topic_segments = topic.split('.');
    let mut pattern_segments = pattern.split('.').peekable();
    while let Some(segment) = pattern_segments.next() {
        match (segment, topic_segments.next()) {
            (">", Some(_)) if pattern_segments.peek().is_none() => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (literal, Some(actual)) if literal == actual => {}
            _ => return false,
        }
    }
    topic_segments.next().is_none()
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
            ("board.*.cursor", "board.1.cursor", true),
            ("board.>", "board", false),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(topic_matches(pattern, topic), expected, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn topics_and_patterns_are_validated() {
        assert_eq!(check_topic("a.b", 64), Ok(()));
        assert_eq!(check_topic("board.7", 64), Ok(()));
        assert_eq!(check_topic("a.*", 64), Err(BadTopic::Wildcard { topic: "a.*".into() }));
        assert_eq!(check_topic("a..b", 64), Err(BadTopic::Segment { topic: "a..b".into() }));
        assert_eq!(check_topic("", 64), Err(BadTopic::Length { len: 0, max: 64 }));
        assert_eq!(check_topic("a b", 64), Err(BadTopic::Segment { topic: "a b".into() }));
        assert_eq!(check_topic("a\u{7}", 64), Err(BadTopic::Segment { topic: "a\u{7}".into() }));
        assert_eq!(check_pattern("a.*.>", 64), Ok(()));
        assert_eq!(check_pattern("board.>", 64), Ok(()));
        assert_eq!(check_pattern("a.>.b", 64), Err(BadTopic::Wildcard { topic: "a.>.b".into() }));
        assert_eq!(check_pattern("a.b*", 64), Err(BadTopic::Wildcard { topic: "a.b*".into() }));
        assert_eq!(check_pattern(&"a".repeat(65), 64), Err(BadTopic::Length { len: 65, max: 64 }));
        assert_eq!(check_pattern(&"a".repeat(64), 64), Ok(()));
    }
}
