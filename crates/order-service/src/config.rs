//! The service's own flags, each with an environment fallback for Pods.
//!
//! They are the starting point only: once a control record for the pipeline exists, its
//! rate and pause state win (see [`crate::run`]). Values are checked while parsing,
//! so a wrong setting stops the process before it touches Kafka, with a message that
//! names the flag and says what to write instead.

/// Flags of order-service (the Kafka and process flags are shared with the other binaries).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct Config {
    /// Topic the orders are written to. Created with --partitions partitions when missing.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "order_topic", value_parser = shop_kafka::topics::parse_topic)]
    pub orders_topic: String,

    /// Orders generated per second until a control record says otherwise; fractions
    /// allowed, 0 means idle.
    #[arg(long, env = "ORDERS_PER_SECOND", default_value_t = 1.0,
          value_parser = parse_rate, allow_negative_numbers = true)]
    pub orders_per_second: f64,

    /// Start paused (no orders) until a control record says otherwise.
    #[arg(long, env = "PAUSED")]
    pub paused: bool,

    /// Partitions of the orders topic, used only when this service creates it.
    #[arg(long = "partitions", env = "TOPIC_PARTITIONS", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,
}

impl Config {
    /// Settings for tests: `orders_per_second` into `topic`, not paused, 3 partitions.
    pub fn new(topic: impl Into<String>, orders_per_second: f64) -> Self {
        Self {
            orders_topic: topic.into(),
            orders_per_second,
            paused: false,
            partitions: 3,
        }
    }
}

/// A rate in `0..=100000`; NaN, infinities and negatives are refused.
fn parse_rate(value: &str) -> Result<f64, String> {
    let hint = "set --orders-per-second (or ORDERS_PER_SECOND) to a number from 0 to 100000, \
                e.g. 20 or 0.5; 0 means idle";
    let rate: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number: {hint}"))?;
    shop_domain::validate_rate(rate).map_err(|error| format!("{error}: {hint}"))
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
        Binary::try_parse_from(std::iter::once("order-service").chain(args.iter().copied()))
            .map(|binary| binary.config)
    }

    #[test]
    fn fractional_and_zero_rates_are_accepted() {
        for (text, rate) in [("0.01", 0.01), ("0", 0.0), ("50000", 50_000.0)] {
            let config = parse(&["--orders-per-second", text]).unwrap();
            assert_eq!(config.orders_per_second, rate);
        }
    }

    #[test]
    fn negative_nan_and_too_high_rates_are_refused_naming_the_flag() {
        for bad in ["-5", "NaN", "inf", "100001", "fast"] {
            let error = parse(&["--orders-per-second", bad])
                .unwrap_err()
                .to_string();
            assert!(error.contains("--orders-per-second"), "{bad}: {error}");
            assert!(error.contains("0 to 100000"), "{bad}: {error}");
        }
    }

    #[test]
    fn topic_names_kafka_would_refuse_are_refused() {
        assert_eq!(
            parse(&["--orders-topic", "shop.demo.orders"])
                .unwrap()
                .orders_topic,
            "shop.demo.orders"
        );
        for bad in ["", "a b", "..", "orders/x"] {
            let error = parse(&["--orders-topic", bad]).unwrap_err().to_string();
            assert!(error.contains("--orders-topic"), "{bad}: {error}");
        }
    }

    #[test]
    fn partitions_must_be_positive() {
        assert!(parse(&["--partitions", "0"]).is_err());
        assert_eq!(parse(&["--partitions", "6"]).unwrap().partitions, 6);
    }

    #[test]
    fn paused_is_a_flag() {
        assert!(parse(&["--paused"]).unwrap().paused);
        // PAUSED may be set by whoever runs the tests; only check the default when not.
        if std::env::var_os("PAUSED").is_none() {
            assert!(!parse(&[]).unwrap().paused);
        }
    }
}
