//! Logging for every binary: one tracing subscriber writing to **stderr**, filtered by
//! `RUST_LOG` (default `info`), as human-readable text or as one JSON object per line.
//!
//! Stderr because stdout belongs to notification-service's notification lines, which users
//! read with `kubectl logs`; keeping logs off stdout lets them tell the two apart
//! (`kubectl logs ... 2>/dev/null` in a terminal, or a collector that reads streams).
//! Libraries only emit events with fields; installing the subscriber is the binary's job,
//! done once in `main`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::error::{Error, Result};

/// How log events are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, event fields at the top level, for log collectors.
    Json,
}

/// The environment variable holding the filter directives, as tracing users expect.
const FILTER_ENV: &str = "RUST_LOG";

/// Installs the process-wide subscriber. Call once, first thing in `main`.
///
/// Fails when `RUST_LOG` is not a valid filter (rather than silently logging nothing) and
/// when a subscriber is already installed.
pub fn init(format: LogFormat) -> Result<()> {
    let filter = filter_from_env()?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => tracing::subscriber::set_global_default(
            builder.with_ansi(std::io::stderr().is_terminal()).finish(),
        ),
        LogFormat::Json => tracing::subscriber::set_global_default(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .finish(),
        ),
    };
    installed.map_err(Error::TelemetryAlreadyInstalled)
}

/// Installs a subscriber that writes through the test harness's capture, so a test's log
/// shows only when it fails. Safe to call from every test: calls after the first (from this
/// or another test of the same binary) do nothing.
pub fn init_for_tests() {
    let filter = filter_from_env().unwrap_or_else(|_| default_filter());
    // An error only means a subscriber is already installed, which is what we want.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn filter_from_env() -> Result<EnvFilter> {
    match std::env::var(FILTER_ENV) {
        Ok(value) => parse_filter(&value),
        Err(std::env::VarError::NotPresent) => Ok(default_filter()),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::LogFilterNotUnicode),
    }
}

/// Parses `RUST_LOG`-style directives; an empty value means the default, `info`.
fn parse_filter(value: &str) -> Result<EnvFilter> {
    EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse(value)
        .map_err(|source| Error::LogFilter {
            value: value.to_owned(),
            source,
        })
}

fn default_filter() -> EnvFilter {
    EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_filter_means_info() {
        let filter = parse_filter("").unwrap();
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::INFO));
    }

    #[test]
    fn filter_directives_are_honoured() {
        let filter = parse_filter("warn,shop_kafka=debug").unwrap();
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::DEBUG));
    }

    #[test]
    fn invalid_filter_is_an_error_that_quotes_it() {
        let error = parse_filter("shop_kafka=loud").unwrap_err();
        assert!(error.to_string().contains("\"shop_kafka=loud\""), "{error}");
    }

    #[test]
    fn test_subscriber_can_be_installed_many_times() {
        init_for_tests();
        init_for_tests();
        tracing::info!(attempt = 2, "still logging");
    }
}
