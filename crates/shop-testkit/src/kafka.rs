//! Kafka on the test bed: client configuration, and topics and consumer groups that are
//! deleted when the test ends.

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::{TestBed, cleanup_on_own_thread, unique_name};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

impl TestBed {
    /// Client configuration with the bed's bootstrap address; add the rest per client.
    pub fn kafka_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.kafka_bootstrap());
        config
    }

    /// An admin client for the bed's broker.
    pub fn kafka_admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        admin(self.kafka_bootstrap())
    }

    /// Creates a topic with a unique name starting with `prefix`, deleted on drop.
    pub async fn topic(&self, prefix: &str, partitions: i32) -> anyhow::Result<TestTopic> {
        let name = unique_name(prefix);
        let admin = self.kafka_admin()?;
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = admin
            .create_topics(
                &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
                &options,
            )
            .await
            .with_context(|| format!("creating topic {name}"))?;
        for result in results {
            result.map_err(|(topic, code)| anyhow::anyhow!("creating topic {topic}: {code}"))?;
        }
        Ok(TestTopic {
            name,
            bootstrap: self.kafka_bootstrap().to_owned(),
        })
    }

    /// A unique consumer group id starting with `prefix`; the group is deleted on drop.
    pub fn group(&self, prefix: &str) -> TestGroup {
        TestGroup {
            id: unique_name(prefix),
            bootstrap: self.kafka_bootstrap().to_owned(),
        }
    }
}

fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .with_context(|| format!("creating an admin client for {bootstrap}"))
}

/// A topic that exists for the duration of a test.
#[derive(Debug)]
pub struct TestTopic {
    name: String,
    bootstrap: String,
}

impl TestTopic {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestTopic {
    fn drop(&mut self) {
        let (name, bootstrap) = (self.name.clone(), self.bootstrap.clone());
        cleanup_on_own_thread(format!("topic {name}"), move || async move {
            let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
            admin(&bootstrap)?.delete_topics(&[&name], &options).await?;
            Ok(())
        });
    }
}

/// A consumer group id that is unique to a test; the group's offsets are deleted on drop.
#[derive(Debug)]
pub struct TestGroup {
    id: String,
    bootstrap: String,
}

impl TestGroup {
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let (id, bootstrap) = (self.id.clone(), self.bootstrap.clone());
        cleanup_on_own_thread(format!("consumer group {id}"), move || async move {
            // A group that never committed does not exist; that is not an error here.
            let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
            let _ = admin(&bootstrap)?.delete_groups(&[&id], &options).await?;
            Ok(())
        });
    }
}
