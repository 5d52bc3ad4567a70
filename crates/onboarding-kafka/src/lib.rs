//! Kafka client plumbing that several roles of the engine share, so each of them talks to the
//! brokers with the same settings and none of them depends on another role to do so.
//!
//! - [`clients`]: the configuration every client starts from (brokers, TLS, SASL,
//!   `kafka.properties`), the producer, and the group consumer of the email worker and the intake.
//! - [`topics`]: explicit topic creation (`onboard migrate`, and the relay when the broker lost
//!   the events topic).
//! - [`dead_letters`]: copying a record that cannot be processed to a dead-letter topic.
//! - [`resume`]: how the consumers of the events topic resume from a committed offset inside
//!   one of the relay's record batches.
//! - [`probe`]: the readiness check that says why the brokers cannot be used.
//! - [`redaction`]: librdkafka errors without the property values they repeat.
//! - [`watchdog`]: a consumer group's lag, and the partitions nobody reads (the email worker's
//!   the provisioner's and the intake's).
//! - [`start_over`]: after the broker lost the topic, consumers read it in a consumer group of
//!   the new generation, from the beginning (docs/adr/0037, 0038).
//! - [`trace_context`]: the W3C trace context in record headers.
//! - [`lanes`]: one lane per key, so a consumer handles many records at once while each key's
//!   records keep their order, and stores only offsets below the lowest unfinished one (the email
//!   worker's and the intake's).
//!
//! Architecture invariant: no secret of `[kafka]` (a SASL password, a key password) ever reaches
//! an error message or a log line; configuration errors name the property, never its value.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clients;
pub mod dead_letters;
pub mod lanes;
pub mod probe;
pub mod redaction;
pub mod resume;
pub mod start_over;
pub mod topics;
pub mod trace_context;
pub mod watchdog;

pub use clients::{
    base_config, check_config, commit_stored, group_consumer_config, producer, relay_producer,
    relay_producer_config, subscribe, RelayProducerContext,
};
pub use dead_letters::{dead_letter, dead_letter_topic, DLQ_REASON_HEADER};
pub use probe::{KafkaProbe, ProbeError};
pub use redaction::{redact, ClientError};
pub use resume::Rewind;
pub use start_over::{group_in_generation, Generation, GroupContext};
pub use topics::{create_event_topics, create_topics, SetupError, TopicSpec};
pub use watchdog::{PartitionLag, Watchdog};

#[cfg(test)]
pub(crate) mod test_settings {
    use onboarding_config::KafkaSettings;

    /// `[kafka]` as read from a minimal valid configuration plus `extra` lines.
    pub fn kafka(extra: &str) -> KafkaSettings {
        let toml = format!(
            r#"
            [output_adapter.email]
            from_address = "noreply@pickup.example"
            hostname = "smtp.pickup.example"
            [database]
            url = "postgres://127.0.0.1/onboarding"
            [kafka]
            bootstrap_servers = "127.0.0.1:9092"
            {extra}
            [gateway]
            public_base_url = "https://id.pickup.example"
            [codes]
            active_key = "k1"
            [[codes.keys]]
            id = "k1"
            secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
            "#
        );
        onboarding_config::Settings::from_toml_str(&toml)
            .expect("valid settings")
            .kafka
    }
}
