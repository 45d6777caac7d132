//! RFC 3339 timestamps, the form of every time on the wire.
//!
//! Written in UTC with millisecond precision (`2025-01-02T03:04:05.678Z`): readable,
//! sortable as text, and precise enough for end-to-end latencies of a few milliseconds.
//! Reading is more lenient, because other producers (the seed was Python) write
//! `+00:00`, other offsets, or no fraction.

use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

/// `time` as RFC 3339 in UTC with milliseconds (times beyond jiff's years -9999..=9999
/// are written as its first or last instant).
pub fn rfc3339(time: SystemTime) -> String {
    let timestamp = Timestamp::try_from(time).unwrap_or(if time < SystemTime::UNIX_EPOCH {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    format!("{timestamp:.3}")
}

/// Parses an RFC 3339 timestamp with `Z` or a numeric offset (`+02:00`), or none
/// (taken as UTC); `None` when it is not one or lies before 1970.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let timestamp = match text.parse::<Timestamp>() {
        Ok(timestamp) => timestamp,
        Err(_) => text
            .parse::<DateTime>()
            .ok()?
            .to_zoned(TimeZone::UTC)
            .ok()?
            .timestamp(),
    };
    (timestamp >= Timestamp::UNIX_EPOCH).then(|| SystemTime::from(timestamp))
}

/// The time elapsed from the timestamp `since` to `now`: the latency of an event
/// stamped `since`. `None` when the timestamp is invalid or in the future (clock skew).
pub fn elapsed_since(since: &str, now: SystemTime) -> Option<Duration> {
    now.duration_since(parse_rfc3339(since)?).ok()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn at(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(millis)
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds_and_round_trip() {
        let time = at(1_735_787_045_678);
        assert_eq!(rfc3339(time), "2025-01-02T03:04:05.678Z");
        assert_eq!(parse_rfc3339(&rfc3339(time)), Some(time));
    }

    #[test]
    fn offsets_and_missing_fractions_are_understood() {
        let time = at(1_735_787_045_000);
        for text in [
            "2025-01-02T03:04:05Z",
            "2025-01-02T03:04:05+00:00",
            "2025-01-02T05:04:05+02:00",
            "2025-01-01T22:34:05-04:30",
            "2025-01-02 03:04:05",
        ] {
            assert_eq!(parse_rfc3339(text), Some(time), "{text}");
        }
    }

    #[test]
    fn garbage_is_not_a_timestamp() {
        for text in [
            "",
            "yesterday",
            "2025-13-02T03:04:05Z",
            "2025-01-02T03:04:05+2:00",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(text), None, "{text}");
        }
    }

    #[test]
    fn elapsed_since_gives_latency_and_ignores_future_stamps() {
        let now = at(1_735_787_045_690);
        assert_eq!(
            elapsed_since("2025-01-02T03:04:05.678Z", now),
            Some(Duration::from_millis(12))
        );
        assert_eq!(elapsed_since("2025-01-02T03:04:06.000Z", now), None);
        assert_eq!(elapsed_since("not a time", now), None);
    }
}
