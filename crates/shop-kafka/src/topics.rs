//! Creating the topics a service needs, with the settings DESIGN.md gives them.
//!
//! Creating is idempotent: a topic that exists is left as it is (its partition count and
//! config are the operator's business once it exists). Without this, a broker with
//! `auto.create.topics.enable` would create the compacted topics as plain ones. The
//! controller, which owns its pipelines' topics, also grows them ([`grow_partitions`]) when
//! a ShopPipeline asks for more partitions.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

use crate::context::ClientLog;
use crate::{Error, KafkaArgs, Result};

/// What a topic should look like when it has to be created.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub config: Vec<(&'static str, String)>,
}

impl TopicSpec {
    /// A compacted topic: control records, heartbeats, id blocks (latest value per key).
    pub fn compacted(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            partitions: 1,
            config: vec![("cleanup.policy", "compact".into())],
        }
    }

    /// An event topic (orders, payments, dead letters): deleted after its retention.
    pub fn events(name: &str, partitions: i32) -> Self {
        Self {
            name: name.to_owned(),
            partitions,
            config: vec![("cleanup.policy", "delete".into())],
        }
    }

    /// Sets a topic config entry, e.g. `retention.ms`.
    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.config.push((key, value.into()));
        self
    }
}

/// The three compacted topics of the control loop that every service uses.
pub fn control_plane_topics(args: &KafkaArgs) -> Vec<TopicSpec> {
    vec![
        TopicSpec::compacted(&args.control_topic),
        TopicSpec::compacted(&args.heartbeat_topic),
        TopicSpec::compacted(&args.id_block_topic),
    ]
}

/// Creates each topic that does not exist yet (replication factor 1 is not assumed: the
/// broker's default replication factor is used).
pub async fn ensure_topics(args: &KafkaArgs, topics: &[TopicSpec]) -> Result<()> {
    let admin: AdminClient<ClientLog> = args
        .client_config("shopstream-admin")
        .create_with_context(ClientLog::new("admin"))
        .map_err(|source| Error::Client {
            bootstrap: args.bootstrap_servers.clone(),
            source,
        })?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let mut topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(-1));
            for (key, value) in &t.config {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| Error::CreateTopic {
            topic: names(topics),
            detail: e.to_string(),
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::CreateTopic {
                    topic,
                    detail: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Grows each topic of `topics` that has fewer partitions than its spec asks for (Kafka
/// can add partitions, never remove them; a topic with more is left as it is). Topics that
/// do not exist are skipped: [`ensure_topics`] creates them. Returns the topics grown.
pub async fn grow_partitions(args: &KafkaArgs, topics: &[TopicSpec]) -> Result<Vec<String>> {
    let admin: AdminClient<ClientLog> = args
        .client_config("shopstream-admin")
        .create_with_context(ClientLog::new("admin"))
        .map_err(|source| Error::Client {
            bootstrap: args.bootstrap_servers.clone(),
            source,
        })?;
    let mut grow = Vec::new();
    for topic in topics {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&topic.name), Duration::from_secs(10))
            .map_err(|source| Error::Metadata {
                topic: topic.name.clone(),
                source,
            })?;
        let current = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic.name && t.error().is_none())
            .map(|t| t.partitions().len());
        if let Some(current) = current
            && current < usize::try_from(topic.partitions).unwrap_or(0)
        {
            grow.push(NewPartitions::new(
                &topic.name,
                usize::try_from(topic.partitions).unwrap_or(0),
            ));
        }
    }
    if grow.is_empty() {
        return Ok(Vec::new());
    }
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_partitions(&grow, &options)
        .await
        .map_err(|e| Error::CreateTopic {
            topic: names(topics),
            detail: format!("adding partitions: {e}"),
        })?;
    let mut grown = Vec::new();
    for result in results {
        match result {
            Ok(topic) => grown.push(topic),
            Err((topic, code)) => {
                return Err(Error::CreateTopic {
                    topic,
                    detail: format!("adding partitions: {code}"),
                });
            }
        }
    }
    Ok(grown)
}

/// A Kafka topic name as the broker accepts it: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or
/// `..`. The value parser of every topic flag, so a bad name stops the process at start
/// with a message that says what to write (clap adds the flag).
pub fn parse_topic(value: &str) -> std::result::Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 249
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a Kafka topic name: use 1 to 249 letters, digits, '.', '_' or '-'"
        ))
    }
}

fn names(topics: &[TopicSpec]) -> String {
    topics
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_kafka_accepts_are_accepted() {
        for name in [
            "order_topic",
            "shop.demo.orders",
            "a-b_c.1",
            &"x".repeat(249),
        ] {
            assert_eq!(parse_topic(name).as_deref(), Ok(name));
        }
    }

    #[test]
    fn topic_names_kafka_refuses_are_refused_saying_what_to_write() {
        for name in ["", ".", "..", "a b", "orders/x", "café", &"x".repeat(250)] {
            let error = parse_topic(name).unwrap_err();
            assert!(error.contains("1 to 249 letters"), "{name}: {error}");
        }
    }
}
