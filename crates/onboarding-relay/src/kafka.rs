//! Kafka clients shared by the engine's components: the idempotent producer, explicit topic
//! creation, and the readiness probe.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onboarding_config::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use rdkafka::Message;

/// The configuration every client of the engine starts from: the brokers, the security settings
/// of `[kafka]` (TLS, SASL) and `kafka.properties`.
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
pub fn check_config(kafka: &KafkaSettings) -> Result<(), String> {
    base_config(kafka)
        .create_native_config()
        .map(|_| ())
        .map_err(|e| redact(&e))
}

/// A client error without the property value librdkafka's config errors repeat.
pub fn redact(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, _) => {
            format!("kafka client configuration: {description} (property `{key}`)")
        }
        other => other.to_string(),
    }
}

/// A client context that logs what librdkafka reports (as the default one does) and keeps the
/// last error (a refused SASL authentication, a failed TLS handshake, a refused connection), so
/// a probe can say why the brokers cannot be used instead of "timed out".
#[derive(Clone, Default)]
pub struct ErrorReporting {
    last: Arc<Mutex<Option<String>>>,
}

impl ErrorReporting {
    /// The last error reported since the brokers last answered.
    fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn clear(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn record(&self, reason: &str) {
        let mut reason = reason.to_owned();
        if reason.contains("SSL_HANDSHAKE") && reason.contains("timed out") {
            reason.push_str(
                " (the broker did not answer the TLS handshake: is it a TLS listener? \
                 check kafka.security_protocol and the port)",
            );
        } else if reason.contains("Disconnected") && reason.contains("APIVERSION_QUERY") {
            reason.push_str(
                " (the broker hung up on the first request: a TLS listener, or one that \
                 requires SASL? check kafka.security_protocol)",
            );
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }
}

impl ClientContext for ErrorReporting {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        DefaultClientContext.log(level, fac, message);
        // A broker connection failed, and why (TLS handshake, disconnect, timeout); librdkafka
        // reports some of these only here.
        if fac == "FAIL" {
            let reason = message
                .split_once("]: ")
                .filter(|(thread, _)| thread.starts_with("[thrd:"))
                .map_or(message, |(_, rest)| rest);
            self.record(reason);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!("librdkafka: {error}: {reason}");
        // "1/1 brokers are down" follows the error that says why; keep that one.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            self.record(reason);
        }
    }
}

/// Why a topic could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
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
/// auto-created. Fails within seconds, with librdkafka's reason, when the brokers cannot be used
/// (unreachable, TLS or SASL refused).
pub async fn create_topics(kafka: &KafkaSettings) -> Result<(), SetupError> {
    KafkaProbe::new(kafka)
        .map_err(|e| SetupError::Unreachable(redact(&e)))?
        .reachable(Duration::from_secs(20))
        .await
        .map_err(SetupError::Unreachable)?;
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
                )?
            }
        }
    }
    Ok(())
}

/// Answers whether the broker is reachable (TLS and SASL included) and the topic exists; when
/// not, says why in librdkafka's words (never with a secret: librdkafka does not repeat them).
pub struct KafkaProbe {
    client: FutureProducer<ErrorReporting>,
    errors: ErrorReporting,
    topic: String,
    servers: String,
}

/// How long one metadata request of the probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl KafkaProbe {
    pub fn new(kafka: &KafkaSettings) -> Result<Self, KafkaError> {
        let errors = ErrorReporting::default();
        let mut config = base_config(kafka);
        // librdkafka reports some connection failures (a disconnect while asking the broker's
        // API versions) at info level; it only logs what the log filter lets through.
        config.set_log_level(RDKafkaLogLevel::Info);
        Ok(Self {
            client: config.create_with_context(errors.clone())?,
            errors,
            topic: kafka.topic.clone(),
            servers: kafka.bootstrap_servers.clone(),
        })
    }

    /// One metadata request for the topic.
    pub async fn check(&self) -> Result<(), String> {
        let topic = self.topic.clone();
        let md = self.metadata(Some(topic.clone()), PROBE_TIMEOUT).await?;
        match md {
            Some(true) => Ok(()),
            _ => Err(format!(
                "kafka topic `{topic}` missing; run `onboard migrate`"
            )),
        }
    }

    /// Waits up to `patience` for the brokers to answer; gives up at once with the reason when
    /// librdkafka reports an error (authentication, TLS, connection refused).
    pub async fn reachable(&self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        loop {
            match self.metadata(None, Duration::from_secs(1)).await {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.starts_with("kafka unreachable: no answer")
                        && Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `Some(topic exists with partitions)` for a topic, `None` without one.
    async fn metadata(
        &self,
        topic: Option<String>,
        timeout: Duration,
    ) -> Result<Option<bool>, String> {
        let client = self.client.clone();
        let errors = self.errors.clone();
        let servers = self.servers.clone();
        tokio::task::spawn_blocking(move || {
            let result = client.client().fetch_metadata(topic.as_deref(), timeout);
            match result {
                Ok(md) => Ok({
                    errors.clear();
                    topic.map(|_| {
                        md.topics()
                            .first()
                            .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty())
                    })
                }),
                // What librdkafka reported says why better than a timeout.
                Err(e) => Err(match errors.last() {
                    Some(reason) => format!("kafka unreachable: {reason}"),
                    None => format!(
                        "kafka unreachable: no answer from {servers} within {} s ({})",
                        timeout.as_secs(),
                        redact(&e)
                    ),
                }),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(extra: &str) -> KafkaSettings {
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

    #[test]
    fn a_misspelt_or_invalid_property_is_named_without_its_value() {
        let err = check_config(&kafka(
            "[kafka.properties]\n\"sasl.passwrd\" = \"kafka-secret-value\"",
        ))
        .unwrap_err();
        assert!(err.contains("`sasl.passwrd`"), "{err}");
        assert!(!err.contains("kafka-secret"), "{err}");
        let err = check_config(&kafka(
            "[kafka.properties]\n\"ssl.key.password\" = \"kafka-secret-value\"\n\"socket.timeout.ms\" = \"kafka-secret-soon\"",
        ))
        .unwrap_err();
        assert!(err.contains("`socket.timeout.ms`"), "{err}");
        assert!(!err.contains("kafka-secret"), "{err}");
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
}
