//! A Kafka broker of a test's own.
//!
//! The test bed's broker is shared by every test, so a test that must stop a broker,
//! restart it, or run it with other settings (refusing to delete topics, a replication
//! factor the single node cannot meet) starts one of its own: `testbed/kafka.sh` on free
//! ports with a state directory under the system's temporary directory. It is stopped and
//! its state removed when dropped.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::bed::repo_dir;
use crate::process::free_port;

/// A single-node broker run by `testbed/kafka.sh` for one test.
#[derive(Debug)]
pub struct OwnBroker {
    env: Vec<(&'static str, String)>,
    bootstrap: String,
    state: PathBuf,
}

impl OwnBroker {
    /// Starts a fresh broker (`kafka.sh up`), with `extra_properties` (lines of
    /// `server.properties`, may be empty) added to the test bed's settings.
    ///
    /// # Panics
    /// When the broker does not start; `kafka.sh` has printed the log to read.
    pub fn start(extra_properties: &str) -> Self {
        let port = free_port();
        let state = std::env::temp_dir().join(format!("shopstream-broker-{port}"));
        let broker = Self {
            env: vec![
                ("SHOPSTREAM_KAFKA_PORT", port.to_string()),
                ("SHOPSTREAM_KAFKA_CONTROLLER_PORT", free_port().to_string()),
                ("SHOPSTREAM_TESTBED_STATE", state.display().to_string()),
                (
                    "SHOPSTREAM_KAFKA_EXTRA_PROPERTIES",
                    extra_properties.to_owned(),
                ),
            ],
            bootstrap: format!("127.0.0.1:{port}"),
            state,
        };
        broker.kafka_sh("up");
        broker
    }

    /// `host:port` of the broker.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// A client configuration with only the broker's address set.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// Stops the broker and keeps its data (`kafka.sh stop`): an outage.
    ///
    /// # Panics
    /// When `kafka.sh stop` fails.
    pub fn stop(&self) {
        self.kafka_sh("stop");
    }

    /// Starts the stopped broker again on the data it had (`kafka.sh start`).
    ///
    /// # Panics
    /// When it does not come up.
    pub fn start_again(&self) {
        self.kafka_sh("start");
    }

    /// Creates `topic` with replication factor 1 and `cleanup.policy` `cleanup`.
    ///
    /// # Panics
    /// When the broker refuses it.
    pub async fn create_topic(&self, topic: &str, partitions: i32, cleanup: &str) {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .unwrap_or_else(|error| panic!("admin client for {}: {error}", self.bootstrap));
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
            .set("cleanup.policy", cleanup);
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
        let results = admin
            .create_topics([&new], &options)
            .await
            .unwrap_or_else(|error| panic!("creating topic {topic}: {error}"));
        for result in results {
            if let Err((topic, code)) = result {
                panic!("creating topic {topic}: {code}");
            }
        }
    }

    fn kafka_sh(&self, verb: &str) {
        let status = self.command(verb).status();
        match status {
            Ok(status) if status.success() => {}
            other => panic!("testbed/kafka.sh {verb} for {}: {other:?}", self.bootstrap),
        }
    }

    fn command(&self, verb: &str) -> Command {
        let mut command = Command::new(repo_dir().join("testbed/kafka.sh"));
        command
            .arg(verb)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.command("down").status();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
