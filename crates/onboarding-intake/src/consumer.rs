//! The consumer of invitation requests: reads a record, invites once, publishes the outcome
//! (or dead-letters the record), and only then stores the record's offset.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use onboarding_config::Settings;
use onboarding_kafka::{
    group_consumer_config, producer, subscribe, ClientError, PartitionLag, Watchdog,
};
use onboarding_store::{Store, StoreError};
use rdkafka::consumer::{CommitMode, Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::invite::invite;
use crate::outcome::{InvitationOutcome, ACCEPTED_TYPE, REJECTED_TYPE};
use crate::request::{classify, request_user_id, DeadLetter, InvitationRequested};

/// Why the intake stopped: its Kafka clients could not be created or subscribed.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A configuration error names the property, never its value.
    #[error("kafka: {0}")]
    Kafka(#[source] ClientError),
}

impl From<KafkaError> for IntakeError {
    fn from(e: KafkaError) -> Self {
        Self::Kafka(e.into())
    }
}

/// The consumer of invitation requests.
pub struct Intake {
    store: Store,
    settings: Arc<Settings>,
    consumer: StreamConsumer,
    consumer_config: rdkafka::ClientConfig,
    producer: FutureProducer,
    /// Measures each partition's lag (gauge `onboard_intake_lag`); an idle intake rejoins its
    /// group when requests wait on a partition nobody reads.
    watchdog: Watchdog,
}

const IDLE_TICK: Duration = Duration::from_secs(1);
/// An idle intake that sees requests wait this long behind a committed offset that does not
/// move rejoins its group (the intake is never idle while it works on a request).
const STALL: Duration = Duration::from_secs(20);

impl Intake {
    /// Joins `intake.group` on `intake.requests_topic`.
    pub fn new(settings: Arc<Settings>, store: Store) -> Result<Self, IntakeError> {
        let consumer_config = group_consumer_config(&settings.kafka, &settings.intake.group);
        let consumer = subscribe(
            &consumer_config,
            &settings.intake.requests_topic,
            DefaultConsumerContext,
        )?;
        Ok(Self {
            producer: producer(&settings.kafka)?,
            watchdog: Watchdog::new(&settings.intake.requests_topic, STALL, "onboard_intake_lag"),
            store,
            settings,
            consumer,
            consumer_config,
        })
    }

    /// Consumes until `shutdown`; commits the stored offsets on the way out.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), IntakeError> {
        tracing::info!(topic = %self.settings.intake.requests_topic, "intake started");
        // After a receive error, a broker that came back without the group leaves the consumer
        // waiting: after a quiet spell a fresh consumer joins again. While idle, the watchdog
        // rejoins when requests wait on a partition nobody reads (another intake was killed and
        // the rebalance left its partitions to nobody, as the email worker's watchdog does).
        let mut disrupted = false;
        let mut quiet = Duration::ZERO;
        loop {
            let lags = self.measure_lag();
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = tokio::time::timeout(IDLE_TICK, self.consumer.recv()) => m,
            };
            let msg = match msg {
                Ok(Ok(m)) => {
                    disrupted = false;
                    quiet = Duration::ZERO;
                    m
                }
                Ok(Err(e)) => {
                    disrupted = true;
                    tracing::warn!(error = %e, "kafka receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(_idle) => {
                    quiet += IDLE_TICK;
                    if disrupted && quiet >= Duration::from_secs(10) {
                        tracing::warn!(
                            "no records since the broker came back; rejoining the consumer group"
                        );
                        self.rejoin()?;
                        disrupted = false;
                        quiet = Duration::ZERO;
                    } else if lags.is_some_and(|lags| self.stalled(&lags)) {
                        self.rejoin()?;
                    }
                    continue;
                }
            };
            let mut backoff = Duration::from_millis(200);
            loop {
                // The request's span, in the trace its headers carry (docs/adr/0029).
                let span = onboarding_kafka::trace_context::follow(
                    msg.headers(),
                    tracing::info_span!(
                        "intake record",
                        partition = msg.partition(),
                        offset = msg.offset()
                    ),
                );
                match self.process(&msg).instrument(span).await {
                    Ok(()) => break,
                    Err(e) => {
                        if matches!(e, ProcessError::Kafka(_)) {
                            // A broker that lost its state refuses an idempotent producer's id
                            // for good (UNKNOWN_PRODUCER_ID, seen as a timeout); a fresh producer
                            // starts with a new one. Each failure took a message timeout already.
                            match producer(&self.settings.kafka) {
                                Ok(p) => self.producer = p,
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot recreate the Kafka producer")
                                }
                            }
                        }
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot record the request's outcome; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return self.close(),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            self.consumer.store_offset_from_message(&msg)?;
        }
        self.close()
    }

    /// Measures each partition's lag when the last measurement is older than
    /// [`onboarding_kafka::watchdog::CHECK_EVERY`] (blocking calls to the broker).
    fn measure_lag(&mut self) -> Option<Vec<PartitionLag>> {
        if !self.watchdog.due() {
            return None;
        }
        match tokio::task::block_in_place(|| self.watchdog.measure(&self.consumer)) {
            Ok(lags) => Some(lags),
            Err(e) => {
                tracing::debug!(error = %e, "cannot measure the intake's lag");
                None
            }
        }
    }

    /// True when requests wait on a partition whose committed offset has not moved for
    /// [`STALL`] while this intake is idle, so nobody reads it.
    fn stalled(&mut self, lags: &[PartitionLag]) -> bool {
        let stalled = self.watchdog.stalled(lags, Instant::now());
        if stalled.is_empty() {
            return false;
        }
        tracing::warn!(partitions = ?stalled, "requests wait on partitions nobody reads; rejoining the consumer group");
        true
    }

    /// Leaves the consumer group (committing what was handled) and joins it again.
    fn rejoin(&mut self) -> Result<(), IntakeError> {
        let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
        self.consumer = subscribe(
            &self.consumer_config,
            &self.settings.intake.requests_topic,
            DefaultConsumerContext,
        )?;
        self.watchdog.reset();
        Ok(())
    }

    fn close(self) -> Result<(), IntakeError> {
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %e, "final offset commit failed; requests may be seen again (harmless)");
        }
        tracing::info!("intake stopped");
        Ok(())
    }

    /// Handles one record completely (outcome or dead letter acknowledged by the broker).
    async fn process(&self, msg: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        let request = match classify(msg.payload()) {
            Ok(r) => r,
            Err((reason, detail)) => {
                metrics::counter!("onboard_intake_requests_total", "outcome" => reason.code())
                    .increment(1);
                tracing::info!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    reason = reason.code(),
                    "request dead-lettered"
                );
                return self.dead_letter(msg, reason, &detail).await;
            }
        };
        let user_id = request_user_id(&request.source, &request.id);
        let outcome = match invite(&self.store, &self.settings, &request, user_id).await {
            Ok(outcome) => outcome,
            // Retrying would meet the same refusal and hold up the partition for good.
            Err(StoreError::Unstorable { sqlstate, .. }) => {
                let reason = DeadLetter::Unstorable;
                metrics::counter!("onboard_intake_requests_total", "outcome" => reason.code())
                    .increment(1);
                tracing::warn!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    %sqlstate,
                    "the database refused the request's values; request dead-lettered"
                );
                let detail = format!(
                    "the database refused a value of this request (SQLSTATE {sqlstate}); correct \
                     the request and send it again"
                );
                return self.dead_letter(msg, reason, &detail).await;
            }
            Err(e) => return Err(e.into()),
        };
        let label = outcome
            .reason
            .as_ref()
            .map_or("accepted", |r| r.code.as_str())
            .to_owned();
        metrics::counter!("onboard_intake_requests_total", "outcome" => label.clone()).increment(1);
        tracing::info!(%user_id, outcome = %label, "invitation request handled");
        self.publish_outcome(&request, user_id, &outcome).await
    }

    async fn publish_outcome(
        &self,
        request: &InvitationRequested,
        user_id: Uuid,
        outcome: &InvitationOutcome,
    ) -> Result<(), ProcessError> {
        let ce_type = if outcome.status == "accepted" {
            ACCEPTED_TYPE
        } else {
            REJECTED_TYPE
        };
        // Stable across redeliveries of the request, so consumers can drop repeats.
        let ce_id = Uuid::new_v5(&user_id, ce_type.as_bytes()).to_string();
        let value = serde_json::to_vec(outcome).map_err(ProcessError::Encode)?;
        let time = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let user = user_id.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(9);
        for (key, value) in [
            ("ce_specversion", "1.0"),
            ("ce_id", ce_id.as_str()),
            ("ce_type", ce_type),
            ("ce_source", self.settings.kafka.source.as_str()),
            ("ce_time", time.as_str()),
            ("ce_correlationid", request.id.as_str()),
            ("ce_correlationsource", request.source.as_str()),
            ("content-type", "application/json"),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        if outcome.user_id.is_some() {
            headers = headers.insert(Header {
                key: "ce_subject",
                value: Some(user.as_str()),
            });
        }
        let record = FutureRecord::to(&self.settings.intake.outcomes_topic)
            .key(&user)
            .payload(&value)
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| ProcessError::Kafka(e))?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        msg: &BorrowedMessage<'_>,
        reason: DeadLetter,
        detail: &str,
    ) -> Result<(), ProcessError> {
        onboarding_kafka::dead_letter(
            &self.producer,
            &self.settings.intake.dead_letter_topic,
            msg,
            reason.code(),
            detail,
        )
        .await
        .map_err(ProcessError::Kafka)?;
        Ok(())
    }
}

/// Why a record could not be handled yet; the intake retries the same record.
#[derive(Debug, thiserror::Error)]
enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("kafka: {0}")]
    Kafka(#[source] KafkaError),
    #[error("cannot encode the outcome: {0}")]
    Encode(#[source] serde_json::Error),
}
