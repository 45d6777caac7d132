//! Unique names for test resources.
//!
//! A name is `<prefix>-<pid>-<counter>-<clock>`: unique within a test binary by the
//! counter, across binaries running at once by the pid, and across runs against the same
//! long-lived broker by the clock. Names are lowercase alphanumerics and dashes, valid as
//! Kafka topic names, consumer group ids and Kubernetes namespace names.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The longest name Kubernetes accepts for a namespace (a DNS-1123 label).
const MAX_LEN: usize = 63;

/// A fresh name starting with `prefix` (lowercased, anything but `[a-z0-9-]` turned into
/// `-`, shortened so that the whole name fits in 63 characters).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        % 1_000_000_000;
    let suffix = format!("-{}-{n}-{clock:x}", std::process::id());
    let mut head: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    head.truncate(MAX_LEN - suffix.len());
    let head = head.trim_matches('-');
    let head = if head.is_empty() { "t" } else { head };
    format!("{head}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differ_and_are_dns_labels() {
        let a = unique_name("Orders_Topic");
        let b = unique_name("Orders_Topic");
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(name.starts_with("orders-topic-"), "{name}");
            assert!(name.len() <= MAX_LEN);
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
        }
    }

    #[test]
    fn long_prefixes_are_shortened_to_a_valid_label() {
        let name = unique_name(&"x".repeat(200));
        assert!(name.len() <= MAX_LEN, "{name}");
        assert!(!name.starts_with('-') && !name.ends_with('-'));
    }
}
