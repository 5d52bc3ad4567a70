//! The records the engine published, read back from a Kafka topic, each record of the engine's
//! own topic checked against the committed JSON Schema of its type.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};
use serde_json::Value;

use crate::{unique, Stack};

/// A record read back from the topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub value: Value,
    pub raw_value: String,
    pub headers: HashMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

impl Stack {
    /// Reads the topic from the beginning until `until` is satisfied by the records seen (60 s max).
    pub async fn read_topic(&self, until: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        self.read_topic_of(&self.topic, until).await
    }

    /// Like `read_topic`, for another topic (e.g. the dead-letter topic).
    pub async fn read_topic_of(
        &self,
        topic: &str,
        until: impl Fn(&[Record]) -> bool,
    ) -> Vec<Record> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .set("group.id", unique("e2e-reader-"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("kafka consumer");
        consumer.subscribe(&[topic]).unwrap();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !until(&records) {
            assert!(
                Instant::now() < deadline,
                "the expected records did not arrive on {topic} within 60 s; got {records:#?}"
            );
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
            else {
                continue;
            };
            let raw_value = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
            let headers = headers_of(&m);
            // The engine's own topic holds JSON of its schemas only; a dead-letter topic holds
            // what could not be read.
            let value: Value = if topic == self.topic {
                let value = serde_json::from_str(&raw_value).expect("record values are JSON");
                let ce_type = headers.get("ce_type").map(String::as_str).unwrap_or("");
                validate_against_schema(ce_type, &value);
                value
            } else {
                serde_json::from_str(&raw_value).unwrap_or(Value::Null)
            };
            records.push(Record {
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value,
                raw_value,
                headers,
                partition: m.partition(),
                offset: m.offset(),
            });
        }
        records
    }

    /// The records of one user, in topic order.
    pub async fn user_records(&self, user_id: &str, types: &[&str]) -> Vec<Record> {
        let want: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        let records = self
            .read_topic(|rs| {
                let seen: Vec<&String> = rs
                    .iter()
                    .filter(|r| r.key == user_id)
                    .map(|r| &r.headers["ce_type"])
                    .collect();
                want.iter().all(|w| seen.contains(&w))
            })
            .await;
        records.into_iter().filter(|r| r.key == user_id).collect()
    }
}

/// A Kafka record's headers, as text.
pub fn headers_of(m: &impl Message) -> HashMap<String, String> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks a record's value against the committed JSON Schema of its `ce_type`
/// (`schemas/events/<ce_type>.json`); every test that reads the topic goes through here.
pub fn validate_against_schema(ce_type: &str, value: &Value) {
    static VALIDATORS: std::sync::OnceLock<Mutex<HashMap<String, jsonschema::Validator>>> =
        std::sync::OnceLock::new();
    let mut validators = VALIDATORS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let validator = validators.entry(ce_type.to_owned()).or_insert_with(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas/events")
            .join(format!("{ce_type}.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "a record of type `{ce_type}` has no schema at {}: {e}",
                path.display()
            )
        });
        let schema: Value = serde_json::from_str(&text).expect("schemas are JSON");
        jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("{} is not a valid JSON Schema: {e}", path.display()))
    });
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "a `{ce_type}` record does not match its schema: {errors:?}\n{value}"
    );
}
