//! Names that are unique per process and call, so parallel tests never collide.

use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The next value of a process-wide counter.
pub fn next() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Keeps `[A-Za-z0-9_]` and turns everything else into `-`, cut to `max` characters.
///
/// The result is safe as a single path component, a container id and a netns name.
pub fn sanitize(hint: &str, max: usize) -> String {
    let cleaned: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    if cleaned.is_empty() {
        "x".to_string()
    } else {
        cleaned
    }
}

/// `<prefix>-<hint>-<pid>-<n>` with the hint sanitized and cut to 24 characters.
pub fn name(prefix: &str, hint: &str) -> String {
    format!(
        "{prefix}-{}-{}-{}",
        sanitize(hint, 24),
        std::process::id(),
        next()
    )
}

/// A container id unique to this process and call: `<hint>-<pid>-<n>`.
pub fn container_id(hint: &str) -> String {
    format!("{}-{}-{}", sanitize(hint, 32), std::process::id(), next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_safe_chars() {
        assert_eq!(sanitize("a/b c..d", 40), "a-b-c--d");
        assert_eq!(sanitize("", 4), "x");
        assert_eq!(sanitize("abcdef", 3), "abc");
    }

    #[test]
    fn names_differ() {
        assert_ne!(name("kt", "h"), name("kt", "h"));
        assert_ne!(container_id("h"), container_id("h"));
    }
}
