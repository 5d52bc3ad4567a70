//! Explicit topic creation: topics are never auto-created, `onboard migrate` creates them (and
//! the relay recreates the events topics when the broker lost them).

use std::time::Duration;

use onboarding_config::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::clients::base_config;
use crate::dead_letters::dead_letter_topic;
use crate::probe::{KafkaProbe, ProbeError};
use crate::redaction::ClientError;

/// One topic to create: its name and partition count. The replication factor is
/// `kafka.replication_factor` for every topic of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name, from the configuration.
    pub name: String,
    /// Partitions the topic is created with; an existing topic keeps its own.
    pub partitions: i32,
    /// The `retention.ms` the topic is created with; `None`, the brokers' default. An existing
    /// topic keeps its own.
    pub retention_ms: Option<i64>,
}

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The probe client could not be created (its configuration, without values).
    #[error(transparent)]
    Client(ClientError),
    /// The brokers cannot be used, and why (TLS, SASL, no answer).
    #[error(transparent)]
    Unreachable(#[from] ProbeError),
    /// The brokers refused to create a topic.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// The topics of the event log: the events topic (`kafka.topic`, `kafka.partitions`) and the
/// email workers' dead-letter topic (one partition), both kept `kafka.retention_hours`: their
/// records carry personal data in clear (docs/adr/0030).
pub fn event_topics(kafka: &KafkaSettings) -> [TopicSpec; 2] {
    [
        TopicSpec {
            name: kafka.topic.clone(),
            partitions: kafka.partitions,
            retention_ms: Some(kafka.retention_ms()),
        },
        TopicSpec {
            name: dead_letter_topic(kafka),
            partitions: 1,
            retention_ms: Some(kafka.retention_ms()),
        },
    ]
}

/// Creates the event log's topics ([`event_topics`]) if they do not exist.
pub async fn create_event_topics(kafka: &KafkaSettings) -> Result<(), SetupError> {
    create_topics(kafka, &event_topics(kafka)).await
}

/// Creates `topics` if they do not exist; one that exists is left as it is. Fails within
/// seconds, with librdkafka's reason, when the brokers cannot be used (unreachable, TLS or SASL
/// refused), rather than after the admin request's timeout. The one way the engine creates
/// topics, for the event log and the intake alike.
pub async fn create_topics(kafka: &KafkaSettings, topics: &[TopicSpec]) -> Result<(), SetupError> {
    KafkaProbe::new(kafka)
        .map_err(|e| SetupError::Client(e.into()))?
        .reachable(Duration::from_secs(20))
        .await?;
    let admin: AdminClient<DefaultClientContext> = base_config(kafka).create()?;
    let retention: Vec<Option<String>> = topics
        .iter()
        .map(|t| t.retention_ms.map(|ms| ms.to_string()))
        .collect();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&retention)
        .map(|(t, retention)| {
            let topic = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(kafka.replication_factor),
            );
            match retention {
                Some(ms) => topic.set("retention.ms", ms),
                None => topic,
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &opts).await? {
        match result {
            Ok(name) => {
                let spec = topics.iter().find(|t| t.name == name);
                let partitions = spec.map(|t| t.partitions);
                let retention_ms = spec.and_then(|t| t.retention_ms);
                tracing::info!(topic = %name, partitions, retention_ms, "topic created")
            }
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(topic = %name, "topic exists")
            }
            Err((name, code)) => {
                tracing::error!(topic = %name, error = %code, "cannot create topic");
                return Err(KafkaError::AdminOp(code).into());
            }
        }
    }
    Ok(())
}
