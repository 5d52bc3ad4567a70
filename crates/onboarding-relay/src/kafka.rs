//! Kafka clients shared by the engine's components: the idempotent producer, explicit topic
//! creation, and the readiness probe.

use std::time::Duration;

use onboarding_config::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use rdkafka::Message;
use secrecy::ExposeSecret;

pub fn base_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", "onboard")
        // Topics are created explicitly (`onboard migrate`), never as a side effect.
        .set("allow.auto.create.topics", "false");
    for (key, value) in &kafka.properties {
        c.set(key, value.expose_secret());
    }
    c
}

/// Idempotent, `acks=all`: a retried send never duplicates or reorders within a partition.
///
/// One record per batch: tansu answers a fetch that starts inside a batch with the batch after
/// it, so a consumer resuming from a committed offset in the middle of a batch (after a
/// rebalance or a restart) would skip the rest of that batch, or wait forever when it is the last
/// one. With single-record batches every offset starts a batch (docs/adr/0004).
pub fn producer(kafka: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    base_config(kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("batch.num.messages", "1")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "10000")
        .set("compression.type", "none")
        .create()
}

/// The dead-letter topic of the email workers: records they cannot process at all.
pub fn dead_letter_topic(kafka: &KafkaSettings) -> String {
    format!("{}.dlq", kafka.topic)
}

/// Creates the events topic and its dead-letter topic if they do not exist. Topics are never
/// auto-created.
pub async fn create_topics(kafka: &KafkaSettings) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_config(kafka).create()?;
    let topic = NewTopic::new(
        &kafka.topic,
        kafka.partitions,
        TopicReplication::Fixed(kafka.replication_factor),
    );
    let dlq_name = dead_letter_topic(kafka);
    let dlq = NewTopic::new(
        &dlq_name,
        1,
        TopicReplication::Fixed(kafka.replication_factor),
    );
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&topic, &dlq], &opts).await? {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, partitions = kafka.partitions, "topic created")
            }
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(topic = %name, "topic exists")
            }
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(
                    |_| tracing::error!(topic = %name, error = %code, "cannot create topic"),
                )
            }
        }
    }
    Ok(())
}

/// Answers whether the broker is reachable and the topic exists.
pub struct KafkaProbe {
    client: FutureProducer,
    topic: String,
}

impl KafkaProbe {
    pub fn new(kafka: &KafkaSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            client: base_config(kafka).create()?,
            topic: kafka.topic.clone(),
        })
    }

    pub async fn check(&self) -> Result<(), String> {
        let client = self.client.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let md = client
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(3))
                .map_err(|e| format!("kafka unreachable: {e}"))?;
            match md.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                _ => Err(format!(
                    "kafka topic `{topic}` missing; run `onboard migrate`"
                )),
            }
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// Header of a dead-lettered record holding the machine-readable reason.
pub const DLQ_REASON_HEADER: &str = "onboard_dlq_reason";

/// Copies a record that cannot be processed to a dead-letter topic: its key, value and headers
/// unchanged, plus `onboard_dlq_reason` (machine-readable), `onboard_dlq_detail` and where it came
/// from (`onboard_dlq_topic`, `_partition`, `_offset`). Returns once the broker acknowledged it, so
/// the caller stores the record's offset only after that.
pub async fn dead_letter(
    producer: &FutureProducer,
    topic: &str,
    msg: &impl Message,
    reason: &str,
    detail: &str,
) -> Result<(), KafkaError> {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = msg.headers() {
        for h in original.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
    for (key, value) in [
        (DLQ_REASON_HEADER, reason),
        ("onboard_dlq_detail", detail),
        ("onboard_dlq_topic", msg.topic()),
        ("onboard_dlq_partition", partition.as_str()),
        ("onboard_dlq_offset", offset.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
    if let Some(key) = msg.key() {
        record = record.key(key);
    }
    if let Some(payload) = msg.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}
