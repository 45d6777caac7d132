//! What notification-service is told: the topics and group it uses, and the process
//! plumbing (`Settings`) the binary or a test hands to [`crate::run`].

use shop_kafka::KafkaArgs;
use shop_kafka::topics::parse_topic;
use shop_runtime::LogFormat;

/// The service's own flags, each with an environment fallback for Pods. Defaults are the
/// seed's topic names, so `notification-service` run by hand next to the seed's producers
/// just works.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Topic of payments to print.
    #[arg(long, env = "PAYMENTS_TOPIC", default_value = "payment_topic", value_parser = parse_topic)]
    pub payments_topic: String,

    /// Topic that receives payments which cannot be parsed, with the error in headers.
    #[arg(long, env = "DLQ_TOPIC", default_value = "dead_letter_topic", value_parser = parse_topic)]
    pub dlq_topic: String,

    /// Consumer group: replicas in one group share the partitions; its committed offsets
    /// say what has been printed.
    #[arg(
        long,
        env = "NOTIFICATION_GROUP_ID",
        default_value = "notification-service"
    )]
    pub group_id: String,

    /// How many recent payments are remembered to avoid printing one twice (a replay, not
    /// another payment for a reused order id).
    #[arg(long, env = "DEDUP_WINDOW", default_value_t = Config::DEFAULT_DEDUP_WINDOW)]
    pub dedup_window: usize,

    /// Partitions of the payments and dead-letter topics when they have to be created
    /// (an existing topic is left as it is).
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// How each payment is printed on stdout: `text` (the ✅/❌ line people read) or
    /// `json` (one object per line, for machines). Independent of `LOG_FORMAT`, which
    /// formats the logs on stderr.
    #[arg(long, env = "LINE_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub line_format: LogFormat,
}

impl Config {
    /// Payments remembered by default: more than any uncommitted tail a rebalance can
    /// replay, at a few MB of memory.
    pub const DEFAULT_DEDUP_WINDOW: usize = 100_000;
}

/// The flag defaults, for tests and embedding: `Config { payments_topic, ..Default }`.
impl Default for Config {
    fn default() -> Self {
        Self {
            payments_topic: "payment_topic".into(),
            dlq_topic: "dead_letter_topic".into(),
            group_id: "notification-service".into(),
            dedup_window: Config::DEFAULT_DEDUP_WINDOW,
            partitions: 3,
            line_format: LogFormat::Text,
        }
    }
}

/// Everything [`crate::run`] needs; `metrics` and `health` are shared with the HTTP
/// server.
pub type Settings = shop_runtime::ServiceContext<KafkaArgs, Config>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn the_line_format_is_a_flag_of_its_own() {
        let parsed = Cli::try_parse_from(["n", "--line-format", "json"])
            .unwrap()
            .config;
        assert_eq!(parsed.line_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["n", "--line-format", "yaml"]).is_err());
    }

    #[test]
    fn defaults_are_the_seeds_topics_and_match_default() {
        // The environment of whoever runs the tests may set these; only check without them.
        let vars = [
            "PAYMENTS_TOPIC",
            "DLQ_TOPIC",
            "NOTIFICATION_GROUP_ID",
            "DEDUP_WINDOW",
            "TOPIC_PARTITIONS",
            "LINE_FORMAT",
        ];
        if vars.iter().any(|v| std::env::var_os(v).is_some()) {
            return;
        }
        let parsed = Cli::try_parse_from(["notification-service"])
            .unwrap()
            .config;
        assert_eq!(parsed, Config::default());
        assert_eq!(parsed.payments_topic, "payment_topic");
    }

    #[test]
    fn zero_partitions_are_refused() {
        assert!(Cli::try_parse_from(["n", "--partitions", "0"]).is_err());
        let parsed = Cli::try_parse_from(["n", "--partitions", "6", "--dedup-window", "10"])
            .unwrap()
            .config;
        assert_eq!((parsed.partitions, parsed.dedup_window), (6, 10));
    }
}
