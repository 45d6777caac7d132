//! Kafka settings shared by every binary.
//!
//! Defaults are those of the seed when run by hand (`localhost:9092`); under the
//! controller every value comes from the environment of the Pod.

use rdkafka::ClientConfig;
use shop_domain::control::{CONTROL_TOPIC, HEARTBEAT_TOPIC, ID_BLOCK_TOPIC};

use crate::topics::parse_topic;

/// Flags (with environment fallbacks) that say where Kafka is and which pipeline this
/// process belongs to.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated `host:port` pairs.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "localhost:9092",
          value_parser = parse_bootstrap_servers)]
    pub bootstrap_servers: String,

    /// The pipeline this process belongs to: the key of its control records
    /// (`<namespace>/<name>` under the controller).
    #[arg(long, env = "PIPELINE", default_value = "demo", value_parser = parse_pipeline)]
    pub pipeline: String,

    /// Compacted topic of control records (rate, failure ratio, pause, seed).
    #[arg(long, env = "CONTROL_TOPIC", default_value = CONTROL_TOPIC, value_parser = parse_topic)]
    pub control_topic: String,

    /// Compacted topic where every replica reports what it applied and counted.
    #[arg(long, env = "HEARTBEAT_TOPIC", default_value = HEARTBEAT_TOPIC, value_parser = parse_topic)]
    pub heartbeat_topic: String,

    /// Topic whose offsets number the blocks of order ids.
    #[arg(long, env = "ID_BLOCK_TOPIC", default_value = ID_BLOCK_TOPIC, value_parser = parse_topic)]
    pub id_block_topic: String,
}

impl KafkaArgs {
    /// Settings for tests and tools: the given broker, the default topics, pipeline `demo`.
    pub fn for_broker(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            pipeline: "demo".into(),
            control_topic: CONTROL_TOPIC.into(),
            heartbeat_topic: HEARTBEAT_TOPIC.into(),
            id_block_topic: ID_BLOCK_TOPIC.into(),
        }
    }

    /// Client configuration with the bootstrap servers and a client id that shows up in
    /// the broker's logs and metrics.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", client_id)
            // Reconnect quickly after a broker restart, but never hammer a down broker.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "5000");
        config
    }

    /// Configuration of a consumer that `assign()`s partitions and reads them to their end:
    /// no offsets committed, partition EOF reported. `group` is only there because
    /// librdkafka wants one for `assign()`; nothing joins it or commits to it.
    pub fn reader_config(&self, client_id: &str, group: &str) -> ClientConfig {
        let mut config = self.client_config(client_id);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        config
    }
}

/// Accepts `host:port[,host:port...]`; refuses anything else with a message that shows
/// the expected form.
pub fn parse_bootstrap_servers(value: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "{why} in {value:?}: expected comma-separated host:port pairs, \
             e.g. --bootstrap-servers localhost:9092 (or KAFKA_BOOTSTRAP_SERVERS)"
        )
    };
    if value.trim().is_empty() {
        return Err(bad("no address"));
    }
    for server in value.split(',') {
        let server = server.trim();
        let server = server.strip_prefix("PLAINTEXT://").unwrap_or(server);
        let (host, port) = server.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
        if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
            return Err(bad(&format!("bad host {host:?}")));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(bad(&format!("bad port {port:?}"))),
        }
    }
    Ok(value.to_owned())
}

/// A pipeline key: non-empty, printable, no spaces (it is part of record keys and
/// client ids).
pub fn parse_pipeline(value: &str) -> Result<String, String> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid pipeline {value:?}: use a name such as `demo` or `<namespace>/<name>`, \
             without spaces (--pipeline or PIPELINE)"
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_servers_accept_host_port_lists() {
        for ok in [
            "localhost:9092",
            "127.0.0.1:19092,kafka-0.kafka:9092",
            "[::1]:9092",
        ] {
            assert_eq!(parse_bootstrap_servers(ok).as_deref(), Ok(ok));
        }
    }

    #[test]
    fn bad_bootstrap_servers_say_what_to_write() {
        for bad in [
            "",
            "localhost",
            "localhost:notaport",
            "localhost:0",
            ":9092",
            "a b:1",
        ] {
            let err = parse_bootstrap_servers(bad).unwrap_err();
            assert!(
                err.contains("expected comma-separated host:port"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn pipelines_are_keys_without_spaces() {
        assert!(parse_pipeline("default/demo").is_ok());
        assert!(
            parse_pipeline("my pipe")
                .unwrap_err()
                .contains("--pipeline")
        );
        assert!(parse_pipeline("").is_err());
    }
}
