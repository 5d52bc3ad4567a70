//! Dead letters: a record a consumer cannot process at all is copied, unchanged and with the
//! reason, to a dead-letter topic, so it never blocks the records behind it.

use std::time::Duration;

use onboarding_config::KafkaSettings;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

/// Header of a dead-lettered record holding the machine-readable reason, which operators and
/// upstream services filter on.
pub const DLQ_REASON_HEADER: &str = "onboard_dlq_reason";

/// The dead-letter topic of the email workers (records of the events topic they cannot process
/// at all): `<kafka.topic>.dlq`. `onboard migrate` creates it with the events topic.
pub fn dead_letter_topic(kafka: &KafkaSettings) -> String {
    format!("{}.dlq", kafka.topic)
}

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
