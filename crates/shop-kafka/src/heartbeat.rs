//! Heartbeats: what each replica has applied and counted, for the controller and
//! `shopctl status`.
//!
//! A replica publishes its heartbeat every few seconds and right away when asked (after
//! it applied a control record, so `Applied` is reported without waiting a period). The
//! key is `<pipeline>/<service>/<instance>` on a compacted topic, so the topic holds the
//! latest heartbeat of every replica; on a clean shutdown the replica deletes its key with
//! a tombstone, so it is not mistaken for a live one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use shop_domain::Heartbeat;
use shop_domain::control::heartbeat_key;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::context::ClientLog;
use crate::{Error, KafkaArgs, Result};

/// How often a replica reports when nothing changes.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// What a replica reports in a heartbeat (the identity is added by the publisher).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub applied_generation: Option<u64>,
    pub orders_per_second: Option<f64>,
    pub payment_failure_ratio: Option<f64>,
    pub paused: Option<bool>,
    pub counters: BTreeMap<String, u64>,
}

/// Handle to a running heartbeat publisher.
#[derive(Debug)]
pub struct Heartbeats {
    now: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Heartbeats {
    /// Starts publishing `report()` for this replica every `interval` until `shutdown`,
    /// then deletes the replica's heartbeat.
    pub fn spawn(
        args: &KafkaArgs,
        service: &str,
        instance: &str,
        interval: Duration,
        report: impl Fn() -> Report + Send + 'static,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let producer: FutureProducer<ClientLog> = args
            .client_config(&format!("{service}-heartbeat"))
            .set("linger.ms", "0")
            .create_with_context(ClientLog::new("heartbeat"))
            .map_err(|source| Error::Client {
                bootstrap: args.bootstrap_servers.clone(),
                source,
            })?;
        let publisher = Publisher {
            producer,
            topic: args.heartbeat_topic.clone(),
            key: heartbeat_key(&args.pipeline, service, instance),
            identity: (
                args.pipeline.clone(),
                service.to_owned(),
                instance.to_owned(),
            ),
        };
        let now = Arc::new(Notify::new());
        let task = tokio::spawn(publisher.run(interval, report, Arc::clone(&now), shutdown));
        Ok(Self { now, task })
    }

    /// Publishes a heartbeat now instead of at the next period.
    pub fn publish_now(&self) {
        self.now.notify_one();
    }

    /// Waits until the publisher has written its tombstone after shutdown.
    pub async fn finished(self) {
        let _ = self.task.await;
    }
}

struct Publisher {
    producer: FutureProducer<ClientLog>,
    topic: String,
    key: String,
    identity: (String, String, String),
}

impl Publisher {
    async fn run(
        self,
        interval: Duration,
        report: impl Fn() -> Report,
        now: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
                () = now.notified() => {}
            }
            let payload = self.heartbeat(report()).to_json();
            let record = FutureRecord::to(&self.topic)
                .key(&self.key)
                .payload(&payload);
            // A heartbeat that cannot be written is simply late: the next one carries the
            // same, newer information. So it is bounded by the period, not retried.
            let sent = tokio::select! {
                () = shutdown.cancelled() => break,
                sent = self.producer.send(record, interval) => sent,
            };
            if let Err((error, _)) = sent {
                warn!(topic = %self.topic, key = %self.key, %error, "heartbeat not written");
            }
        }
        let tombstone = FutureRecord::<str, [u8]>::to(&self.topic).key(&self.key);
        match self.producer.send(tombstone, Duration::from_secs(5)).await {
            Ok(_) => debug!(key = %self.key, "heartbeat removed"),
            Err((error, _)) => warn!(key = %self.key, %error, "heartbeat not removed at shutdown"),
        }
        let _ = self.producer.flush(Duration::from_secs(5));
    }

    fn heartbeat(&self, report: Report) -> Heartbeat {
        let (pipeline, service, instance) = self.identity.clone();
        Heartbeat {
            pipeline,
            service,
            instance,
            applied_generation: report.applied_generation,
            orders_per_second: report.orders_per_second,
            payment_failure_ratio: report.payment_failure_ratio,
            paused: report.paused,
            counters: report.counters,
            timestamp: shop_domain::time::rfc3339(SystemTime::now()),
            ..Heartbeat::default()
        }
    }
}
