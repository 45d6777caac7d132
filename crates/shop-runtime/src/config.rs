//! The command-line conventions every binary shares. Each binary flattens [`CommonArgs`]
//! into its own clap struct (`#[command(flatten)]`), so `--log-format`, `--http-port` and
//! `--instance` mean the same thing everywhere, each with an environment fallback for Pods.

use crate::telemetry::LogFormat;

/// Flags shared by every shopstream binary.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct CommonArgs {
    /// Log format on stderr.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Port of the /healthz, /readyz and /metrics server [default: the binary's own port].
    #[arg(long, env = "HTTP_PORT", value_name = "PORT")]
    pub http_port: Option<u16>,

    /// Name of this replica in heartbeats, transactional ids and logs [default: the Pod's
    /// name ($HOSTNAME) under Kubernetes, else HOSTNAME-PID, unique per process].
    #[arg(long = "instance", env = "INSTANCE_ID", value_name = "NAME", value_parser = parse_instance)]
    pub instance_id: Option<String>,
}

impl CommonArgs {
    /// How to change the HTTP port, for error messages (see [`crate::http::bind`]).
    pub const HTTP_PORT_HINT: &str = "--http-port or HTTP_PORT";

    /// The HTTP port chosen by flag or environment, else the binary's `default` (each
    /// binary has its own, so they can run side by side on one machine).
    pub fn http_port_or(&self, default: u16) -> u16 {
        self.http_port.unwrap_or(default)
    }

    /// This replica's name: `--instance`/`INSTANCE_ID`; else, in a Pod, `HOSTNAME` (which
    /// Kubernetes sets to the Pod's name, unique among the replicas); else
    /// `<hostname>-<pid>` (or `local-<pid>`), unique per process, because replicas started
    /// by hand on one machine share its host name and would otherwise share a
    /// transactional id and fence each other. It becomes the last segment of the heartbeat
    /// key `<ns>/<pipeline>/<service>/<instance>`, so it never contains `/`.
    pub fn instance(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            default_instance(
                std::env::var("HOSTNAME").ok(),
                std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
                std::process::id(),
            )
        })
    }
}

fn default_instance(hostname: Option<String>, in_kubernetes: bool, pid: u32) -> String {
    match hostname.filter(|name| parse_instance(name).is_ok()) {
        Some(pod) if in_kubernetes => pod,
        Some(host) => format!("{host}-{pid}"),
        None => format!("local-{pid}"),
    }
}

/// Rejects names that would break the heartbeat key or be invisible in logs.
fn parse_instance(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("the instance name must not be empty".to_owned())
    } else if value.contains('/') {
        Err(format!(
            "the instance name {value:?} must not contain '/': it ends the heartbeat key <ns>/<pipeline>/<service>/<instance>"
        ))
    } else if value.chars().any(char::is_control) || value.contains(' ') {
        Err(format!(
            "the instance name {value:?} must not contain spaces or control characters"
        ))
    } else {
        Ok(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Binary {
        #[command(flatten)]
        common: CommonArgs,
    }

    fn parse(args: &[&str]) -> Result<CommonArgs, clap::Error> {
        Binary::try_parse_from(std::iter::once("binary").chain(args.iter().copied()))
            .map(|binary| binary.common)
    }

    #[test]
    fn flags_are_parsed_into_common_args() {
        let common = parse(&[
            "--log-format",
            "json",
            "--http-port",
            "9000",
            "--instance",
            "a-1",
        ])
        .unwrap();
        assert_eq!(common.log_format, LogFormat::Json);
        assert_eq!(common.http_port_or(8081), 9000);
        assert_eq!(common.instance(), "a-1");
    }

    #[test]
    fn http_port_falls_back_to_the_binarys_default() {
        let common = CommonArgs::default();
        assert_eq!(common.http_port_or(8083), 8083);
    }

    #[test]
    fn log_format_defaults_to_text() {
        // LOG_FORMAT may be set by whoever runs the tests; only check it when it is not.
        if std::env::var_os("LOG_FORMAT").is_none() {
            assert_eq!(parse(&[]).unwrap().log_format, LogFormat::Text);
        }
    }

    #[test]
    fn unknown_log_format_is_refused() {
        assert!(parse(&["--log-format", "yaml"]).is_err());
    }

    #[test]
    fn instance_with_a_slash_is_refused() {
        let error = parse(&["--instance", "a/b"]).unwrap_err();
        assert!(
            error.to_string().contains("must not contain '/'"),
            "{error}"
        );
    }

    #[test]
    fn instance_defaults_to_the_pod_name_else_one_per_process() {
        assert_eq!(
            default_instance(Some("orders-7d9f-x2".into()), true, 42),
            "orders-7d9f-x2"
        );
        assert_eq!(
            default_instance(Some("laptop".into()), false, 42),
            "laptop-42"
        );
        assert_eq!(default_instance(None, false, 42), "local-42");
        assert_eq!(default_instance(Some(String::new()), true, 42), "local-42");
    }
}
