//! The crate's one error type. Each variant names what failed and with what input, so a
//! binary can hand it to `anyhow` and print it as it is.

/// Everything that can go wrong while setting up a process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `RUST_LOG` is set but is not a valid `EnvFilter` directive list.
    #[error("invalid RUST_LOG filter {value:?} (example: RUST_LOG=info,shop_kafka=debug)")]
    LogFilter {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },

    /// `RUST_LOG` is set but is not valid Unicode.
    #[error("RUST_LOG is not valid Unicode")]
    LogFilterNotUnicode,

    /// A global tracing subscriber was installed before [`crate::telemetry::init`].
    #[error("cannot install the tracing subscriber: one is already installed in this process")]
    TelemetryAlreadyInstalled(#[source] tracing::subscriber::SetGlobalDefaultError),

    /// The HTTP port for `/healthz`, `/readyz` and `/metrics` could not be bound.
    #[error(
        "cannot listen on 0.0.0.0:{port} for /healthz, /readyz and /metrics{}; \
         choose another port with {flag_hint}",
        in_use_hint(.source)
    )]
    Bind {
        port: u16,
        flag_hint: String,
        #[source]
        source: std::io::Error,
    },

    /// A metric could not be written in the OpenMetrics text format; only a label set whose
    /// hand-written `EncodeLabelSet` fails can cause this.
    #[error("cannot encode the metrics registry in the OpenMetrics text format")]
    MetricsEncode(#[source] std::fmt::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Says the obvious cause of the most common bind failure in the message itself; the
/// operating system's wording ("Address in use") follows as the error's source.
fn in_use_hint(source: &std::io::Error) -> &'static str {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        ": the port is already in use by another process"
    } else {
        ""
    }
}
