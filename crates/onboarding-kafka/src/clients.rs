//! The client configurations of the engine: one base that carries `[kafka]` (brokers, TLS, SASL,
//! `kafka.properties`) into every client, and the producer and group consumer built on it.

use onboarding_config::KafkaSettings;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::ClientConfig;

use crate::redaction::ClientError;

/// The configuration every client of the engine starts from: the brokers, the security settings
/// of `[kafka]` (TLS, SASL) and `kafka.properties`. Starting from it is what makes a setting of
/// `[kafka]` reach every role.
pub fn base_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", "onboard")
        // Topics are created explicitly (`onboard migrate`), never as a side effect.
        .set("allow.auto.create.topics", "false")
        // A connection that is not up (TCP, TLS handshake, SASL) within 10 s is reported as an
        // error (librdkafka waits 30 s by default): e.g. TLS against a plain listener that
        // never answers the handshake.
        .set("socket.connection.setup.timeout.ms", "10000");
    for (key, value) in kafka.client_properties() {
        c.set(key, value);
    }
    c
}

/// Checks the librdkafka properties once, so a misspelt or invalid one is named at start. The
/// error names the property, never its value (it may be the password).
pub fn check_config(kafka: &KafkaSettings) -> Result<(), ClientError> {
    base_config(kafka).create_native_config()?;
    Ok(())
}

/// A consumer in `group` that reads from the start of a partition it has no offset for and
/// commits only the offsets the application stores, once it has handled their records (at least
/// once; the handlers are idempotent). Used by the email worker and the intake.
pub fn group_consumer_config(kafka: &KafkaSettings, group: &str) -> ClientConfig {
    let mut c = base_config(kafka);
    c.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000");
    // A fetch that finds nothing new waits at most this long for a record. librdkafka's default
    // is 500 ms. tansu (0.6) answers every fetch only when this time has passed, records or not,
    // with the records it found when the fetch arrived: a record waits from one to two times this
    // long at every consumer it passes (the benchmark's invitation-to-mail p50 was 494 ms with
    // 500, 44 ms with 20; at 10 the record's wait went from 31 to 16 ms on average,
    // docs/performance.md and docs/adr/0044). An idle consumer then fetches about 100 times a
    // second per broker; `kafka.properties` can set another value.
    if !kafka
        .client_properties()
        .iter()
        .any(|(key, _)| *key == "fetch.wait.max.ms")
    {
        c.set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS);
    }
    c
}

/// The group consumers' `fetch.wait.max.ms` unless `kafka.properties` sets it.
pub const FETCH_WAIT_MAX_MS: &str = "10";

/// A consumer created from `config` with `context` and subscribed to `topic`: how a group
/// consumer starts, and how it joins its group again after the broker came back without it.
pub fn subscribe<C: ConsumerContext + 'static>(
    config: &ClientConfig,
    topic: &str,
    context: C,
) -> Result<StreamConsumer<C>, KafkaError> {
    let consumer: StreamConsumer<C> = config.create_with_context(context)?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Commits the offsets `consumer` stored, as it stops. Nothing stored since the last commit
/// (librdkafka's `NoOffset`: an idle consumer, or one whose auto-commit already took them) is
/// not a failure, so a clean stop logs no warning.
pub fn commit_stored<C: ConsumerContext>(consumer: &impl Consumer<C>) -> Result<(), KafkaError> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => Ok(()),
        other => other,
    }
}

/// The producer of the records other systems read (the intake's outcomes, dead letters).
/// Idempotent, `acks=all`: a retried send never duplicates or reorders within a partition.
///
/// One record per batch: tansu answers a fetch that starts inside a batch with the batch after
/// it, so a reader resuming from a committed offset in the middle of a batch would skip the rest
/// of that batch, or wait forever when it is the last one. With single-record batches every
/// offset starts a batch (docs/adr/0004), whoever reads them. The relay's records are read by the
/// engine's own consumers, which resume from before a batch: [`relay_producer`].
pub fn producer(kafka: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    producer_config(kafka, 1).create()
}

/// The relay's producer: as [`producer`], with up to `kafka.relay_batch_records` records per
/// batch. Every consumer of the events topic resumes that many records before its committed
/// offset and skips what lies below it ([`crate::resume`], docs/adr/0036).
pub fn relay_producer(
    kafka: &KafkaSettings,
) -> Result<FutureProducer<RelayProducerContext>, KafkaError> {
    relay_producer_config(kafka).create_with_context(RelayProducerContext)
}

/// The relay producer's configuration.
pub fn relay_producer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut c = producer_config(kafka, kafka.relay_batch_records);
    // librdkafka's statistics, for the batches' sizes ([`RelayProducerContext`]).
    c.set("statistics.interval.ms", "5000");
    // The relay hands librdkafka all the records of its batch at once and sends nothing more
    // until the broker acknowledged them, so a record can only wait for the others of its own
    // batch: enough time to queue them (microseconds each) keeps them in one batch per
    // partition. librdkafka's 5 ms only delayed every record by 5 ms (docs/adr/0044).
    c.set("linger.ms", RELAY_LINGER_MS);
    c
}

/// The relay producer's `linger.ms` (docs/adr/0044).
pub const RELAY_LINGER_MS: &str = "1";

/// Counts the relay's record batches and the records in them, from librdkafka's statistics
/// (`onboard_relay_kafka_batches_total`, `onboard_relay_kafka_batch_records_total`): their
/// quotient is the records per batch the broker took.
pub struct RelayProducerContext;

impl ClientContext for RelayProducerContext {
    fn stats(&self, statistics: Statistics) {
        // The batch histograms are windows: librdkafka starts them afresh at every report.
        let (batches, records) = statistics
            .topics
            .values()
            .fold((0, 0), |(b, r), t| (b + t.batchcnt.cnt, r + t.batchcnt.sum));
        metrics::counter!("onboard_relay_kafka_batches_total").increment(batches.max(0) as u64);
        metrics::counter!("onboard_relay_kafka_batch_records_total")
            .increment(records.max(0) as u64);
    }
}

fn producer_config(kafka: &KafkaSettings, records_per_batch: u32) -> ClientConfig {
    let mut c = base_config(kafka);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("batch.num.messages", records_per_batch.max(1).to_string())
        // A record waits this long for others to share its batch (librdkafka's default).
        .set("linger.ms", "5")
        .set("message.timeout.ms", "10000")
        .set("compression.type", "none");
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_settings::kafka;

    #[test]
    fn a_misspelt_or_invalid_property_is_named_without_its_value() {
        let err = check_config(&kafka(
            "[kafka.properties]\n\"sasl.passwrd\" = \"kafka-secret-value\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`sasl.passwrd`"), "{err}");
        assert!(!err.contains("kafka-secret"), "{err}");
        let err = check_config(&kafka(
            "[kafka.properties]\n\"ssl.key.password\" = \"kafka-secret-value\"\n\"socket.timeout.ms\" = \"kafka-secret-soon\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`socket.timeout.ms`"), "{err}");
        assert!(!err.contains("kafka-secret"), "{err}");
    }

    #[test]
    fn consumers_wait_briefly_for_records_unless_told_otherwise() {
        let config = group_consumer_config(&kafka(""), "g");
        assert_eq!(config.get("fetch.wait.max.ms"), Some(FETCH_WAIT_MAX_MS));
        let config = group_consumer_config(
            &kafka("[kafka.properties]\n\"fetch.wait.max.ms\" = \"250\""),
            "g",
        );
        assert_eq!(config.get("fetch.wait.max.ms"), Some("250"));
    }

    #[test]
    fn the_relay_batches_as_many_records_as_the_consumers_read_back() {
        let k = kafka("relay_batch_records = 250");
        assert_eq!(
            relay_producer_config(&k).get("batch.num.messages"),
            Some("250")
        );
        assert_eq!(crate::Rewind::new(&k).start_for(1_000), 750);
        // Others' readers know nothing of the read-back: one record per batch for them.
        assert_eq!(producer_config(&k, 1).get("batch.num.messages"), Some("1"));
        assert_eq!(
            relay_producer_config(&k).get("enable.idempotence"),
            Some("true")
        );
        // The relay queues its whole batch at once: a short linger keeps it together without
        // delaying it (docs/adr/0044). Others' single-record batches never linger.
        assert_eq!(
            relay_producer_config(&k).get("linger.ms"),
            Some(RELAY_LINGER_MS)
        );
    }

    #[test]
    fn tls_and_sasl_settings_reach_librdkafka() {
        // librdkafka accepts them (it is built with OpenSSL, which TLS and SCRAM need).
        let k = kafka(
            "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"onboard\"\nsasl_password = \"kafka-secret-value\"",
        );
        check_config(&k).expect("librdkafka takes SASL_SSL with SCRAM");
        let config = base_config(&k);
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(config.get("sasl.password"), Some("kafka-secret-value"));
        assert!(!format!("{config:?}").contains("kafka-secret"));
    }

    #[test]
    fn a_consumer_with_nothing_stored_commits_without_a_failure() {
        use rdkafka::consumer::BaseConsumer;
        // Never connects: nothing listens on port 9; nothing was stored.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "commit-unit")
            .create()
            .expect("consumer");
        let raw = consumer
            .commit_consumer_state(CommitMode::Sync)
            .unwrap_err();
        assert_eq!(raw.rdkafka_error_code(), Some(RDKafkaErrorCode::NoOffset));
        assert!(commit_stored(&consumer).is_ok());
    }
}
