//! The service's own settings: topics, consumer group, the payment decision's flags and
//! the delivery guarantee. Each is a flag with an environment fallback and the seed demo's
//! default, so the binary runs by hand, in tests and in a Pod alike. Kafka's address and
//! the pipeline come from `shop_kafka::KafkaArgs`, the replica's name from
//! `shop_runtime::CommonArgs`.

use std::time::Duration;

use shop_kafka::topics::parse_topic;

/// How payments are written, chosen with `--delivery`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Consume-transform-produce in Kafka transactions: the payments of a batch and the
    /// consumer offsets that produced them commit together, so every order gets exactly
    /// one payment, across crashes and rebalances.
    #[default]
    ExactlyOnce,
    /// No transactions: payments are acknowledged first, then the offsets are committed.
    /// Nothing is lost, but an order may be paid twice after a crash or rebalance. Kept
    /// for comparison with exactly-once.
    AtLeastOnce,
}

/// The flags of payment-service, flattened into the binary's clap struct.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct Config {
    /// Topic the orders are read from.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "order_topic", value_parser = parse_topic)]
    pub orders_topic: String,

    /// Topic the payments are written to.
    #[arg(long, env = "PAYMENTS_TOPIC", default_value = "payment_topic", value_parser = parse_topic)]
    pub payments_topic: String,

    /// Topic that receives orders that cannot be parsed or validated.
    #[arg(long, env = "DLQ_TOPIC", default_value = "dead_letter_topic", value_parser = parse_topic)]
    pub dlq_topic: String,

    /// Consumer group of the payment-service replicas; also the prefix of each replica's
    /// transactional id (`<group-id>-<instance>`).
    #[arg(long, env = "PAYMENT_GROUP_ID", default_value = "payment-service", value_parser = parse_name)]
    pub group_id: String,

    /// Fraction of payments that fail, in 0..=1, until a control record says otherwise.
    #[arg(long, env = "PAYMENT_FAILURE_RATIO", default_value_t = 0.1,
          value_parser = parse_failure_ratio, value_name = "RATIO",
          allow_negative_numbers = true)]
    pub failure_ratio: f64,

    /// Seed of the payment decision, until a control record says otherwise: the same seed
    /// fails the same orders.
    #[arg(long, env = "PAYMENT_SEED", default_value_t = 0)]
    pub seed: u64,

    /// Delivery guarantee of the payments.
    #[arg(long, env = "DELIVERY_GUARANTEE", value_enum, default_value_t = Delivery::ExactlyOnce)]
    pub delivery: Delivery,

    /// How long a transaction (or, at-least-once, a batch) collects orders before it is
    /// committed. Sized by time, not count: a commit costs a few broker round trips.
    #[arg(long, env = "TRANSACTION_INTERVAL_MS", default_value_t = 100, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub transaction_interval_ms: u64,

    /// Partitions of the orders, payments and dead-letter topics when this service has to
    /// create them; existing topics are left as they are.
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,
}

impl Default for Config {
    /// The flags' defaults (checked against clap by a test).
    fn default() -> Self {
        Self {
            orders_topic: "order_topic".into(),
            payments_topic: "payment_topic".into(),
            dlq_topic: "dead_letter_topic".into(),
            group_id: "payment-service".into(),
            failure_ratio: 0.1,
            seed: 0,
            delivery: Delivery::ExactlyOnce,
            transaction_interval_ms: 100,
            partitions: 3,
        }
    }
}

impl Config {
    /// How long a transaction stays open.
    pub fn transaction_interval(&self) -> Duration {
        Duration::from_millis(self.transaction_interval_ms)
    }

    /// The transactional id of one replica. A replica restarted under the same instance
    /// name fences its previous incarnation with it and aborts the transaction that one
    /// left open. In Kubernetes the instance is the Pod's name, new for every Pod, so
    /// there the old incarnation is fenced by the consumer group instead (KIP-447: the
    /// offsets go into the transaction with the group's generation, which moves on when
    /// the partitions are reassigned); see the README's section on exactly once.
    pub fn transactional_id(&self, instance: &str) -> String {
        format!("{}-{instance}", self.group_id)
    }
}

/// A failure ratio: a finite number in `0..=1`.
pub fn parse_failure_ratio(value: &str) -> Result<f64, String> {
    let hint = "the failure ratio must be a number in 0..=1 \
                (--failure-ratio or PAYMENT_FAILURE_RATIO), e.g. 0.1 for one in ten";
    match value.trim().parse::<f64>() {
        Ok(ratio) if ratio.is_finite() && (0.0..=1.0).contains(&ratio) => Ok(ratio),
        Ok(ratio) => Err(format!("{ratio} is outside the allowed range: {hint}")),
        Err(_) => Err(format!("{value:?} is not a number: {hint}")),
    }
}

/// A group name: non-empty, without spaces or control characters.
fn parse_name(value: &str) -> Result<String, String> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!(
            "invalid name {value:?}: group names are non-empty and without spaces"
        ))
    } else {
        Ok(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Binary {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Binary::try_parse_from(std::iter::once("payment-service").chain(args.iter().copied()))
            .map(|binary| binary.config)
    }

    const ENV: [&str; 9] = [
        "ORDERS_TOPIC",
        "PAYMENTS_TOPIC",
        "DLQ_TOPIC",
        "PAYMENT_GROUP_ID",
        "PAYMENT_FAILURE_RATIO",
        "PAYMENT_SEED",
        "DELIVERY_GUARANTEE",
        "TRANSACTION_INTERVAL_MS",
        "TOPIC_PARTITIONS",
    ];

    #[test]
    fn defaults_are_the_seed_topics_and_exactly_once() {
        // Whoever runs the tests may have set these; only compare when none is set.
        if ENV.iter().any(|name| std::env::var_os(name).is_some()) {
            return;
        }
        assert_eq!(parse(&[]).unwrap(), Config::default());
    }

    #[test]
    fn flags_are_parsed_into_the_config() {
        let config = parse(&[
            "--orders-topic",
            "o",
            "--payments-topic",
            "p",
            "--dlq-topic",
            "d",
            "--group-id",
            "g",
            "--failure-ratio",
            "0.25",
            "--seed",
            "42",
            "--delivery",
            "at-least-once",
            "--transaction-interval-ms",
            "50",
            "--partitions",
            "6",
        ])
        .unwrap();
        assert_eq!(
            config,
            Config {
                orders_topic: "o".into(),
                payments_topic: "p".into(),
                dlq_topic: "d".into(),
                group_id: "g".into(),
                failure_ratio: 0.25,
                seed: 42,
                delivery: Delivery::AtLeastOnce,
                transaction_interval_ms: 50,
                partitions: 6,
            }
        );
        assert_eq!(config.transaction_interval(), Duration::from_millis(50));
        assert_eq!(config.transactional_id("payment-0"), "g-payment-0");
    }

    #[test]
    fn failure_ratio_outside_zero_to_one_is_refused_naming_flag_and_range() {
        for bad in ["1.5", "-0.1", "NaN", "inf", "ten"] {
            let error = parse(&["--failure-ratio", bad]).unwrap_err().to_string();
            assert!(error.contains("--failure-ratio"), "{bad}: {error}");
            assert!(error.contains("0..=1"), "{bad}: {error}");
        }
        for good in ["0", "1", "0.5", "1.0"] {
            assert!(parse(&["--failure-ratio", good]).is_ok(), "{good}");
        }
    }

    #[test]
    fn unknown_delivery_guarantee_is_refused() {
        let error = parse(&["--delivery", "at-most-once"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("exactly-once"), "{error}");
        assert!(error.contains("at-least-once"), "{error}");
    }

    #[test]
    fn zero_interval_and_empty_names_are_refused() {
        assert!(parse(&["--transaction-interval-ms", "0"]).is_err());
        assert!(parse(&["--partitions", "0"]).is_err());
        assert!(parse(&["--group-id", ""]).is_err());
        assert!(parse(&["--orders-topic", "my orders"]).is_err());
    }
}
