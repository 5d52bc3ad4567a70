//! The consumer of invitation requests: reads a record, invites once, publishes the outcome
//! (or dead-letters the record), and only then stores the record's offset.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use onboarding_config::Settings;
use onboarding_domain::value::{UserDomain, Username};
use onboarding_kafka::lanes::{HandleFuture, Handled, Lane, Lanes};
use onboarding_kafka::{
    group_consumer_config, producer, subscribe, ClientError, Generation, GroupContext,
    PartitionLag, Watchdog,
};
use onboarding_store::{Store, StoreError};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::invite::invite;
use crate::outcome::{InvitationOutcome, ACCEPTED_TYPE, REJECTED_TYPE};
use crate::request::{classify, request_user_id, DeadLetter, InvitationRequested};

/// Why the intake stopped: its Kafka clients could not be created or subscribed, or a request's
/// handler failed (a bug: the process exits, as the email worker does, and the request is read
/// again after the restart).
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A configuration error names the property, never its value.
    #[error("kafka: {0}")]
    Kafka(#[source] ClientError),
    #[error("a request's handler failed: {0}; the request will be seen again after a restart")]
    Lane(#[source] tokio::task::JoinError),
}

impl From<KafkaError> for IntakeError {
    fn from(e: KafkaError) -> Self {
        Self::Kafka(e.into())
    }
}

/// The consumer of invitation requests.
pub struct Intake {
    handling: Arc<Handling>,
    settings: Arc<Settings>,
    /// Shared with the watchdog's measurement while one runs (on the blocking pool).
    consumer: Arc<StreamConsumer<GroupContext>>,
    consumer_config: rdkafka::ClientConfig,
    /// The event topic's generation: the requests topic is lost with the broker too, so the
    /// intake reads it in the consumer group of the generation (docs/adr/0038).
    generation: Generation,
    /// Measures each partition's lag (gauge `onboard_intake_lag`); an idle intake rejoins its
    /// group when requests wait on a partition nobody reads.
    watchdog: Watchdog,
}

/// What handling one record needs, shared by the records in flight.
struct Handling {
    store: Store,
    settings: Arc<Settings>,
    /// The producer of outcomes and dead letters, with the number of times it was replaced.
    producer: Mutex<(u64, FutureProducer)>,
}

const IDLE_TICK: Duration = Duration::from_secs(1);
/// An idle intake that sees requests wait this long behind a committed offset that does not
/// move rejoins its group (the intake is never idle while it works on a request).
const STALL: Duration = Duration::from_secs(20);

/// A record as the receive loop hands it to its lane: the record, and what it was read as.
type Received = (
    OwnedMessage,
    Result<InvitationRequested, (DeadLetter, String)>,
);

impl Intake {
    /// Joins `intake.group` (or its group of `generation`, the event topic's generation read
    /// from PostgreSQL) on `intake.requests_topic`.
    pub fn new(
        settings: Arc<Settings>,
        store: Store,
        generation: i64,
    ) -> Result<Self, IntakeError> {
        let generation = Generation::new(
            &settings.intake.group,
            &settings.intake.requests_topic,
            generation,
        );
        let mut consumer_config = group_consumer_config(&settings.kafka, &settings.intake.group);
        generation.configure(&mut consumer_config);
        let consumer = Arc::new(subscribe(
            &consumer_config,
            &settings.intake.requests_topic,
            GroupContext::new(),
        )?);
        Ok(Self {
            generation,
            handling: Arc::new(Handling {
                producer: Mutex::new((0, producer(&settings.kafka)?)),
                store,
                settings: settings.clone(),
            }),
            watchdog: Watchdog::new(&settings.intake.requests_topic, STALL, "onboard_intake_lag"),
            settings,
            consumer,
            consumer_config,
        })
    }

    /// Consumes until `shutdown`; commits the stored offsets on the way out.
    ///
    /// Up to `intake.concurrency` requests are handled at once, in lanes (`onboarding_kafka::
    /// lanes`): a request starts only after every earlier request for the same username (in one
    /// domain) and every earlier one with the same source and id finished, so the earlier
    /// request wins a name or an id, as when one request is handled at a time; a record that is
    /// not a request waits in its partition's lane. A partition's offset is stored only once
    /// every record up to it was handled.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), IntakeError> {
        tracing::info!(
            topic = %self.settings.intake.requests_topic,
            concurrency = self.settings.intake.concurrency.get(),
            "intake started"
        );
        let handling = self.handling.clone();
        let stop = shutdown.clone();
        let mut lanes: Lanes<Received> = Lanes::new(
            self.settings.intake.concurrency,
            shutdown.clone(),
            Arc::new(move |(msg, request)| -> HandleFuture {
                let (handling, stop) = (handling.clone(), stop.clone());
                // The request's span, in the trace its headers carry (docs/adr/0029).
                let span = onboarding_kafka::trace_context::follow(
                    msg.headers(),
                    tracing::info_span!(
                        "intake record",
                        partition = msg.partition(),
                        offset = msg.offset()
                    ),
                );
                Box::pin(
                    async move { handling.handle_until_done(&msg, request, &stop).await }
                        .instrument(span),
                )
            }),
        );
        // After a receive error, a broker that came back without the group leaves the consumer
        // waiting: after a quiet spell a fresh consumer joins again. While idle, the watchdog
        // rejoins when requests wait on a partition nobody reads (another intake was killed and
        // the rebalance left its partitions to nobody, as the email worker's watchdog does).
        let mut disrupted = false;
        let mut quiet = Duration::ZERO;
        loop {
            if self
                .generation
                .moved(
                    self.handling
                        .store
                        .topic_generation(&self.settings.kafka.topic),
                )
                .await
            {
                self.drain(&mut lanes).await;
                self.rejoin().await?;
                disrupted = false;
                quiet = Duration::ZERO;
            }
            let lags = self.measure_lag().await;
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                handled = lanes.handled() => {
                    match handled {
                        Ok(handled) => self.store_offset(handled),
                        // The failed request's lanes and its partition's offsets stop; the
                        // intake finishes the other requests in hand, commits what they
                        // finished and exits, so that a restart reads the request again.
                        Err(e) => {
                            self.drain(&mut lanes).await;
                            let _ = self.close().await;
                            return Err(IntakeError::Lane(e));
                        }
                    }
                    continue;
                }
                m = tokio::time::timeout(IDLE_TICK, self.consumer.recv()), if lanes.has_room() => m,
            };
            match received {
                Ok(Ok(m)) => {
                    disrupted = false;
                    quiet = Duration::ZERO;
                    let request = classify(m.payload());
                    let waits_in = lanes_of(m.partition(), &request);
                    lanes.dispatch_in(waits_in, m.partition(), m.offset(), (m.detach(), request));
                }
                Ok(Err(e)) => {
                    disrupted = true;
                    tracing::warn!(error = %e, "kafka receive failed; retrying");
                    tokio::task::block_in_place(|| {
                        onboarding_kafka::start_over::pause_on_broker_loss(
                            self.consumer.as_ref(),
                            &e,
                        )
                    });
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(_idle) => {
                    quiet += IDLE_TICK;
                    // A consumer that lost its brokers fetches nothing more, whatever it received since.
                    let lost = self.consumer.context().lost_brokers();
                    if (disrupted || lost) && quiet >= Duration::from_secs(10) {
                        tracing::warn!(
                            "no records since the broker came back; rejoining the consumer group"
                        );
                        self.drain(&mut lanes).await;
                        self.rejoin().await?;
                        disrupted = false;
                        quiet = Duration::ZERO;
                    } else if lanes.in_flight() == 0 && lags.is_some_and(|lags| self.stalled(&lags))
                    {
                        self.rejoin().await?;
                    }
                }
            }
        }
        self.drain(&mut lanes).await;
        self.close().await
    }

    /// Stores a partition's offset once every request up to it was handled. A partition revoked
    /// meanwhile refuses it: its new holder reads the requests again, and handling a request
    /// again invites nobody twice.
    fn store_offset(&self, handled: Handled) {
        if let Err(e) = self.consumer.store_offset(
            &self.settings.intake.requests_topic,
            handled.partition,
            handled.offset,
        ) {
            tracing::debug!(
                error = %e,
                partition = handled.partition,
                offset = handled.offset,
                "cannot store the offset of a handled request (partition revoked?); it will be seen again"
            );
        }
    }

    /// Waits until every lane finished the requests it holds and stores their offsets.
    async fn drain(&mut self, lanes: &mut Lanes<Received>) {
        for handled in lanes.drain().await {
            self.store_offset(handled);
        }
    }

    /// Each partition's lag, from the measurement that finished since the last call, if one did;
    /// one starts beside the loop when the last is older than
    /// [`onboarding_kafka::watchdog::CHECK_EVERY`] (blocking calls to the broker).
    async fn measure_lag(&mut self) -> Option<Vec<PartitionLag>> {
        match self.watchdog.poll(&self.consumer).await? {
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

    /// Leaves the consumer group (committing what was handled) and joins the group of the known
    /// generation.
    async fn rejoin(&mut self) -> Result<(), IntakeError> {
        // The measurement in flight lets go of the consumer first.
        self.watchdog.settle().await;
        let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
        self.generation.configure(&mut self.consumer_config);
        self.consumer = Arc::new(subscribe(
            &self.consumer_config,
            &self.settings.intake.requests_topic,
            GroupContext::new(),
        )?);
        self.watchdog.reset();
        Ok(())
    }

    async fn close(mut self) -> Result<(), IntakeError> {
        self.watchdog.settle().await;
        if let Err(e) = onboarding_kafka::commit_stored(self.consumer.as_ref()) {
            tracing::warn!(error = %e, "final offset commit failed; requests may be seen again (harmless)");
        }
        tracing::info!("intake stopped");
        Ok(())
    }
}

/// The lanes of a record: a request waits for the earlier requests for the same username (in
/// the same domain) and for the earlier requests with the same source and id (the same user id);
/// a record that is not a request waits in its partition's lane.
fn lanes_of(
    partition: i32,
    request: &Result<InvitationRequested, (DeadLetter, String)>,
) -> Vec<Lane> {
    let Ok(request) = request else {
        return vec![Lane::Unkeyed(partition)];
    };
    let d = &request.data;
    let domain = d
        .domain
        .as_deref()
        .filter(|d| !d.trim().is_empty())
        .and_then(|d| UserDomain::parse(d).ok())
        .unwrap_or_else(UserDomain::primary);
    // A name that does not parse is refused whatever its lane; its raw form keeps it apart.
    let name = Username::parse(&d.username).map_or_else(|_| d.username.clone(), |u| u.key());
    let user_id = request_user_id(&request.source, &request.id);
    vec![
        Lane::Key(format!("username:{}/{name}", domain.as_str()).into_bytes()),
        Lane::Key(format!("user:{user_id}").into_bytes()),
    ]
}

impl Handling {
    /// Handles one record until its outcome (or dead letter) was acknowledged, retrying with
    /// backoff; `false` when `shutdown` came first (the record is left for the next reader).
    async fn handle_until_done(
        &self,
        msg: &OwnedMessage,
        request: Result<InvitationRequested, (DeadLetter, String)>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Duration::from_millis(200);
        loop {
            let (generation, producer) = self.producer();
            match self.process(msg, &request, &producer).await {
                Ok(()) => return true,
                Err(e) => {
                    if matches!(e, ProcessError::Kafka(_)) {
                        self.renew_producer(generation);
                    }
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot record the request's outcome; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn producer(&self) -> (u64, FutureProducer) {
        let guard = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        (guard.0, guard.1.clone())
    }

    /// A broker that lost its state refuses an idempotent producer's id for good
    /// (UNKNOWN_PRODUCER_ID, seen as a timeout); a fresh producer starts with a new one. Each
    /// failure took a message timeout already. Of the requests that failed with the same
    /// producer, the first replaces it.
    fn renew_producer(&self, failed: u64) {
        let mut guard = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if guard.0 != failed {
            return;
        }
        match producer(&self.settings.kafka) {
            Ok(p) => *guard = (failed + 1, p),
            Err(e) => tracing::warn!(error = %e, "cannot recreate the Kafka producer"),
        }
    }

    /// Handles one record completely (outcome or dead letter acknowledged by the broker).
    async fn process(
        &self,
        msg: &OwnedMessage,
        request: &Result<InvitationRequested, (DeadLetter, String)>,
        producer: &FutureProducer,
    ) -> Result<(), ProcessError> {
        let request = match request {
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
                return dead_letter(producer, &self.settings, msg, *reason, detail).await;
            }
        };
        let user_id = request_user_id(&request.source, &request.id);
        let outcome = match invite(&self.store, &self.settings, request, user_id).await {
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
                return dead_letter(producer, &self.settings, msg, reason, &detail).await;
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
        self.publish_outcome(producer, request, user_id, &outcome)
            .await
    }

    async fn publish_outcome(
        &self,
        producer: &FutureProducer,
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
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| ProcessError::Kafka(e))?;
        Ok(())
    }
}

async fn dead_letter(
    producer: &FutureProducer,
    settings: &Settings,
    msg: &OwnedMessage,
    reason: DeadLetter,
    detail: &str,
) -> Result<(), ProcessError> {
    onboarding_kafka::dead_letter(
        producer,
        &settings.intake.dead_letter_topic,
        msg,
        reason.code(),
        detail,
    )
    .await
    .map_err(ProcessError::Kafka)?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str, username: &str, domain: Option<&str>) -> Vec<u8> {
        let mut data = serde_json::json!({"username": username, "email": "jane@pickup.example"});
        if let Some(domain) = domain {
            data["domain"] = domain.into();
        }
        serde_json::json!({
            "specversion": "1.0", "id": id, "source": "urn:pickup:hr",
            "type": "com.pickup.hr.user.invitation.requested", "data": data,
        })
        .to_string()
        .into_bytes()
    }

    fn lanes(value: &[u8]) -> Vec<Lane> {
        lanes_of(3, &classify(Some(value)))
    }

    #[test]
    fn requests_for_one_name_share_its_lane_whatever_its_case_or_the_default_domains_spelling() {
        let jane = lanes(&request("1", "Jane", None));
        let again = lanes(&request("2", "JANE", Some("primary")));
        assert_eq!(jane[0], again[0], "one username lane");
        assert_ne!(jane[1], again[1], "two request ids, two users");
        let other_domain = lanes(&request("3", "jane", Some("EMPLOYEES")));
        assert_ne!(jane[0], other_domain[0]);
    }

    #[test]
    fn a_request_id_used_again_for_another_name_shares_the_users_lane() {
        let jane = lanes(&request("7", "jane", None));
        let ola = lanes(&request("7", "ola", None));
        assert_ne!(jane[0], ola[0]);
        assert_eq!(jane[1], ola[1]);
    }

    #[test]
    fn a_record_that_is_not_a_request_waits_in_its_partitions_lane() {
        assert_eq!(lanes(b"not json"), [Lane::Unkeyed(3)]);
    }
}
