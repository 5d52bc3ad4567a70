//! The broker's own delivery time, the limit beside the invitation-to-mail latency: records
//! produced at a given rate with the relay's producer settings (idempotent, `acks=all`, up to
//! 100 records a batch, 1 ms linger: ADR 0036, 0044) to a topic of the probe's own, read by a
//! consumer with the engine's fetch setting (`fetch.wait.max.ms` 10, ADR 0044). Each record's
//! time is from its create time (the producer's timestamp, as the relay's records carry) to the
//! consumer receiving it. Run on a fresh topic and on one first filled with as many record
//! batches a partition as the engine's event topic held: tansu's `memory://` store lists every
//! batch of a partition for a fetch that finds records in it.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};
use serde::Serialize;

/// One probe's records: their way from producer to consumer, in milliseconds.
#[derive(Serialize)]
pub struct Delivery {
    /// Record batches each partition held before the timed records (one record each).
    pub batches_per_partition: u64,
    pub records: usize,
    pub rate_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Creates `topic` with `partitions`, fills each partition with `fill` batches of one record,
/// then produces records at `rate` a second for `seconds` and times each to the consumer.
pub async fn probe(
    brokers: &str,
    topic: &str,
    partitions: i32,
    fill: u64,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Delivery> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the admin client")?;
    let created = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    for result in created {
        result.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    let payload = vec![b'x'; 600];

    // The fill: one record a batch, spread over the partitions.
    let one_per_batch: FutureProducer = producer_config(brokers)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .context("creating the fill's producer")?;
    let total = fill * partitions as u64;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut i = 0u64;
    while i < total || !in_flight.is_empty() {
        while i < total && in_flight.len() < 1000 {
            let record = FutureRecord::<str, [u8]>::to(topic)
                .partition((i % partitions as u64) as i32)
                .payload(&payload);
            in_flight.push(one_per_batch.send(record, Duration::from_secs(30)));
            i += 1;
        }
        if let Some(done) = in_flight.next().await {
            done.map_err(|(e, _)| e).context("a fill record")?;
        }
    }

    // The consumer, from each partition's end as it is now.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("onboarding-bench-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .context("creating the consumer")?;
    let start = tokio::task::block_in_place(|| {
        let mut start = TopicPartitionList::new();
        for p in 0..partitions {
            let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            start.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
        anyhow::Ok(start)
    })?;
    consumer.assign(&start)?;
    let relay: FutureProducer = producer_config(brokers)
        .set("batch.num.messages", "100")
        .set("linger.ms", "1")
        .create()
        .context("creating the timed records' producer")?;
    // The timed records start once the consumer reads every partition: a marker record on each
    // comes back first (a consumer's first fetch after its assignment took up to a second).
    for p in 0..partitions {
        relay
            .send(
                FutureRecord::<str, [u8]>::to(topic)
                    .partition(p)
                    .payload(&payload[..0]),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .context("a marker record")?;
    }
    let mut ready = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.len() < partitions as usize {
        ensure!(
            Instant::now() < deadline,
            "the probe's consumer read {} of {partitions} partitions of {topic} after 60 s",
            ready.len()
        );
        if let Ok(m) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            ready.insert(m?.partition());
        }
    }

    let n = ((rate * seconds) as usize).max(1);
    let receive = async {
        let mut ages = Vec::with_capacity(n);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds + 30.0);
        while ages.len() < n && Instant::now() < deadline {
            let Ok(m) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else {
                continue;
            };
            let m = m?;
            let received = chrono::Utc::now().timestamp_micros() as f64 / 1000.0;
            if let Some(created) = m.timestamp().to_millis() {
                ages.push(received - created as f64);
            }
        }
        anyhow::Ok(ages)
    };
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let send = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut acks = futures::stream::FuturesUnordered::new();
        for key in &keys {
            tick.tick().await;
            let record = FutureRecord::to(topic).key(key).payload(&payload);
            acks.push(relay.send(record, Duration::from_secs(30)));
            // Acknowledgements are collected as they come, so that none waits on the others.
            while let Some(Some(done)) = futures::FutureExt::now_or_never(acks.next()) {
                done.map_err(|(e, _)| e).context("a timed record")?;
            }
        }
        while let Some(done) = acks.next().await {
            done.map_err(|(e, _)| e).context("a timed record")?;
        }
        anyhow::Ok(())
    };
    let (ages, sent) = tokio::join!(receive, send);
    sent?;
    let mut ages = ages?;
    ensure!(
        ages.len() == n,
        "the probe's consumer received {} of {n} records on {topic}",
        ages.len()
    );
    ages.sort_by(f64::total_cmp);
    let pick = |q: f64| ages[((ages.len() as f64 * q).ceil() as usize).clamp(1, ages.len()) - 1];
    Ok(Delivery {
        batches_per_partition: fill,
        records: n,
        rate_per_second: rate,
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
    })
}

fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "none");
    c
}
