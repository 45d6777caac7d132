//! Blocks of order ids, numbered by Kafka.
//!
//! An order generator claims a block by writing one record to partition 0 of the
//! id-block topic; the offset the broker assigns is the block number. Offsets of a
//! partition are unique and increasing, so blocks claimed by any number of replicas, and
//! by the same replica after a restart, never overlap, and each generator's blocks
//! increase. No other coordination is needed, and a claim costs one produce.

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shop_domain::IdBlock;

use crate::{Error, Result};

/// Claims the next block of order ids for `pipeline`, writing who claimed it.
pub async fn claim_block<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    topic: &str,
    pipeline: &str,
    instance: &str,
) -> Result<IdBlock> {
    let value = format!(r#"{{"pipeline":{pipeline:?},"instance":{instance:?}}}"#);
    let delivery = producer
        .send(
            FutureRecord::to(topic)
                .partition(0)
                .key(pipeline)
                .payload(&value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(source, _)| Error::Produce {
            topic: topic.to_owned(),
            source,
        })?;
    // Offsets are never negative once the broker has acknowledged a record.
    Ok(IdBlock::new(
        u64::try_from(delivery.offset).unwrap_or_default(),
    ))
}
