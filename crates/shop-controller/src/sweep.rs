//! The sweep: topics of pipelines that no longer exist are deleted.
//!
//! There are no finalizers (an uninstall must never hang on a controller that is gone),
//! so a deleted ShopPipeline's Deployments go by garbage collection and its topics by this
//! periodic sweep. A topic is swept only when all of these hold: its name is
//! `<namespace>.<name>.(orders|payments|dlq)`, the control topic has a record for
//! `<namespace>/<name>` (so this controller created the pipeline), and the API server,
//! asked just now, has no such ShopPipeline. The control record is then removed with a
//! tombstone.
//!
//! The control topic is shared by every controller of the cluster: a controller that
//! watches one namespace sweeps only that namespace's pipelines. The others' are not in
//! its list of existing pipelines, which would make them look deleted.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::Api;
use kube::api::ListParams;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use shop_kafka::context::ClientLog;
use tracing::{info, warn};

use crate::crd::ShopPipeline;
use crate::reconcile::Context;

const SUFFIXES: [&str; 3] = ["orders", "payments", "dlq"];

/// The pipeline key (`<namespace>/<name>`) a topic belongs to, if it is a pipeline topic.
pub fn pipeline_of_topic(topic: &str) -> Option<String> {
    let (namespace, rest) = topic.split_once('.')?;
    let (name, suffix) = rest.rsplit_once('.')?;
    (!namespace.is_empty() && !name.is_empty() && SUFFIXES.contains(&suffix))
        .then(|| format!("{namespace}/{name}"))
}

/// Topics to delete: pipeline topics whose pipeline has a control record but no resource,
/// in `scope` (the watched namespace) when the controller watches only one.
pub fn orphans(
    topics: &[String],
    published: &BTreeSet<String>,
    existing: &BTreeSet<String>,
    scope: Option<&str>,
) -> Vec<String> {
    let in_scope = |pipeline: &str| {
        scope.is_none_or(|namespace| pipeline.split_once('/').map(|(ns, _)| ns) == Some(namespace))
    };
    topics
        .iter()
        .filter(|t| {
            pipeline_of_topic(t)
                .is_some_and(|p| in_scope(&p) && published.contains(&p) && !existing.contains(&p))
        })
        .cloned()
        .collect()
}

/// One sweep of the pipelines in `scope` (every namespace when `None`; `pipelines` lists
/// the same scope). Returns the topics it deleted.
pub async fn sweep(
    ctx: &Context,
    pipelines: &Api<ShopPipeline>,
    scope: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let existing: BTreeSet<String> = pipelines
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|p| {
            Some(format!(
                "{}/{}",
                p.metadata.namespace.as_deref()?,
                p.metadata.name.as_deref()?
            ))
        })
        .collect();
    let published: BTreeSet<String> = ctx
        .published
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .keys()
        .cloned()
        .collect();
    let kafka = ctx.kafka.clone();
    let topics = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let consumer: BaseConsumer<ClientLog> = kafka
            .client_config("shop-controller-sweep")
            .create_with_context(ClientLog::new("sweep"))?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .collect())
    })
    .await??;
    let doomed = orphans(&topics, &published, &existing, scope);
    if doomed.is_empty() {
        return Ok(doomed);
    }
    let admin: AdminClient<ClientLog> = ctx
        .kafka
        .client_config("shop-controller-sweep")
        .create_with_context(ClientLog::new("sweep-admin"))?;
    let names: Vec<&str> = doomed.iter().map(String::as_str).collect();
    let mut failed = BTreeSet::new();
    for result in admin.delete_topics(&names, &AdminOptions::new()).await? {
        match result {
            Ok(topic) => info!(%topic, "deleted topic of a deleted pipeline"),
            // Gone already (another sweep, or by hand): that is what was wanted.
            Err((topic, RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                info!(%topic, "topic of a deleted pipeline already gone");
            }
            Err((topic, code)) => {
                warn!(%topic, %code, "topic of a deleted pipeline not deleted; retrying next sweep");
                ctx.metrics.sweep_failures.inc();
                failed.insert(topic);
            }
        }
    }
    for key in fully_deleted(&doomed, &failed) {
        let tombstone = FutureRecord::<str, [u8]>::to(&ctx.kafka.control_topic).key(&key);
        if let Err((error, _)) = ctx.producer.send(tombstone, Duration::from_secs(10)).await {
            warn!(pipeline = %key, %error, "control record of a deleted pipeline not removed");
            continue;
        }
        ctx.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
    }
    Ok(doomed)
}

/// The pipelines all of whose doomed topics were deleted. Only their control records are
/// removed: a pipeline with a topic left keeps its record, so the next sweep finds the
/// topic an orphan again and retries.
pub fn fully_deleted(doomed: &[String], failed: &BTreeSet<String>) -> BTreeSet<String> {
    let kept: BTreeSet<String> = failed.iter().filter_map(|t| pipeline_of_topic(t)).collect();
    doomed
        .iter()
        .filter_map(|t| pipeline_of_topic(t))
        .filter(|key| !kept.contains(key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn pipeline_topics_are_recognised_by_name() {
        assert_eq!(
            pipeline_of_topic("shop.demo.orders").as_deref(),
            Some("shop/demo")
        );
        assert_eq!(
            pipeline_of_topic("shop.my.app.dlq").as_deref(),
            Some("shop/my.app")
        );
        assert_eq!(pipeline_of_topic("shopstream.control"), None);
        assert_eq!(pipeline_of_topic("order_topic"), None);
        assert_eq!(pipeline_of_topic("shop.demo.other"), None);
    }

    #[test]
    fn only_topics_of_deleted_pipelines_we_created_are_swept() {
        let topics: Vec<String> = [
            "a.gone.orders",
            "a.gone.payments",
            "a.live.orders",
            "b.foreign.orders",
            "order_topic",
        ]
        .map(String::from)
        .to_vec();
        let doomed = orphans(
            &topics,
            &set(&["a/gone", "a/live"]),
            &set(&["a/live"]),
            None,
        );
        assert_eq!(doomed, ["a.gone.orders", "a.gone.payments"]);
    }

    #[test]
    fn a_pipeline_with_a_topic_left_keeps_its_control_record() {
        let doomed: Vec<String> = ["a.x.orders", "a.x.payments", "a.y.orders"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            fully_deleted(&doomed, &set(&["a.x.payments"])),
            set(&["a/y"])
        );
        assert_eq!(fully_deleted(&doomed, &set(&[])), set(&["a/x", "a/y"]));
    }

    #[test]
    fn a_namespaced_sweep_judges_only_its_own_namespace() {
        let topics: Vec<String> = ["a.gone.orders", "b.live.orders"]
            .map(String::from)
            .to_vec();
        // Watching `a`, the controller lists only a's pipelines: b/live is not among them.
        let published = set(&["a/gone", "b/live"]);
        let existing = set(&[]);
        assert_eq!(
            orphans(&topics, &published, &existing, Some("a")),
            ["a.gone.orders"]
        );
        assert_eq!(orphans(&topics, &published, &existing, None).len(), 2);
    }
}
