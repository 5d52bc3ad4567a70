//! The readiness probe: can the brokers be used (TLS and SASL included), and does the events
//! topic exist? When not, it says why in librdkafka's words rather than "timed out".

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onboarding_config::KafkaSettings;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::clients::base_config;
use crate::redaction::ClientError;

/// A client context that logs what librdkafka reports (as the default one does) and keeps the
/// last error (a refused SASL authentication, a failed TLS handshake, a refused connection), so
/// a probe can say why the brokers cannot be used instead of "timed out".
#[derive(Clone, Default)]
struct ErrorReporting {
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

/// Why the probe finds the brokers unusable. The messages are what `/readyz` and
/// `onboard migrate` show, so each is whole on its own.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// librdkafka reported why (authentication, TLS, connection refused); never with a secret:
    /// librdkafka does not repeat them.
    #[error("kafka unreachable: {reason}")]
    Refused {
        /// librdkafka's last reported reason, with a hint for the usual TLS mistakes.
        reason: String,
    },
    /// The brokers did not answer in time and librdkafka said nothing more.
    #[error("kafka unreachable: no answer from {servers} within {seconds} s ({cause})")]
    NoAnswer {
        /// `kafka.bootstrap_servers`, so the reader sees where the probe looked.
        servers: String,
        /// How long the request waited.
        seconds: u64,
        /// The client's own error. Part of the message rather than a source: `/readyz` shows
        /// the message alone.
        cause: ClientError,
    },
    /// The brokers answer, but the events topic does not exist (or has no partitions).
    #[error("kafka topic `{topic}` missing; run `onboard migrate`")]
    TopicMissing {
        /// `kafka.topic`.
        topic: String,
    },
    /// The blocking metadata request could not run.
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Answers whether the broker is reachable (TLS and SASL included) and the topic exists; when
/// not, says why in librdkafka's words (never with a secret: librdkafka does not repeat them).
/// The gateway's `/readyz` asks it; topic creation waits on it before creating anything.
pub struct KafkaProbe {
    client: FutureProducer<ErrorReporting>,
    errors: ErrorReporting,
    topic: String,
    servers: String,
}

/// How long one metadata request of the probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl KafkaProbe {
    /// A probe of the brokers and events topic of `[kafka]`, with its settings (TLS, SASL).
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
    pub async fn check(&self) -> Result<(), ProbeError> {
        let topic = self.topic.clone();
        let md = self.metadata(Some(topic.clone()), PROBE_TIMEOUT).await?;
        match md {
            Some(true) => Ok(()),
            _ => Err(ProbeError::TopicMissing { topic }),
        }
    }

    /// Waits up to `patience` for the brokers to answer; gives up at once with the reason when
    /// librdkafka reports an error (authentication, TLS, connection refused).
    pub async fn reachable(&self, patience: Duration) -> Result<(), ProbeError> {
        let deadline = Instant::now() + patience;
        loop {
            match self.metadata(None, Duration::from_secs(1)).await {
                Ok(_) => return Ok(()),
                Err(ProbeError::NoAnswer { .. }) if Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `Some(topic exists with partitions)` for a topic, `None` without one.
    async fn metadata(
        &self,
        topic: Option<String>,
        timeout: Duration,
    ) -> Result<Option<bool>, ProbeError> {
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
                    Some(reason) => ProbeError::Refused { reason },
                    None => ProbeError::NoAnswer {
                        servers,
                        seconds: timeout.as_secs(),
                        cause: e.into(),
                    },
                }),
            }
        })
        .await?
    }
}
