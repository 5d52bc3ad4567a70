//! The email worker: consumes the public event topic and mails each issued code's link.
//!
//! Architecture invariants:
//! - At least once: a record's offset is stored only after its outcome was recorded on the
//!   aggregate (`InvitationMailSent`; or `InvitationMailFailed` plus a row in the delayed store
//!   or `InvitationMailAbandoned`), after it was found to need nothing, or after it was copied
//!   to the dead-letter topic. Auto-commit then commits stored offsets only.
//! - Never blocked by a failing mail: one SMTP attempt per record; later attempts come from the
//!   delayed store (`mail_retries`), claimed under a lease by `Delivery::run_retries`.
//! - Mail once per code: before sending, the worker reads the aggregate and skips a code that
//!   was already mailed, superseded, expired or used; the aggregate refuses a second "sent" for
//!   the same code. What remains is the window between the SMTP server's acceptance and the
//!   append of `InvitationMailSent` (milliseconds), documented in docs/ARCHITECTURE.md; a mail
//!   sent again there carries the same Message-ID (`Mailer::message_id_for`).
//! - In order per partition, partitions side by side: each partition's records are handled one
//!   after another by its own lane ([`lanes`]); up to `kafka.email_worker_concurrency` records
//!   are in flight at once, and a partition's offset is stored only once that record and every
//!   record before it on the partition were handled (docs/adr/0010).
//! - Never silent: the watchdog rejoins the group when records wait on a partition nobody reads
//!   (docs/adr/0004).
//! - The welcome mail after activation is best effort: it is sent once (the aggregate refuses a
//!   second `WelcomeMailSent`); a transient failure waits in the delayed store like an
//!   invitation's, and giving up is only logged and counted, not recorded.
//! - The link token is minted here from the event's public fields and the code key; it exists
//!   only in the mail.
#![forbid(unsafe_code)]

pub mod lanes;
pub mod mail;
pub mod templates;
pub mod watchdog;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use onboarding_config::Settings;
use onboarding_domain::code::{CodeBinding, CodeId, CodeKeyring};
use onboarding_domain::EmailDelivery;
use onboarding_domain::{OnboardingCommand, OnboardingError};
use onboarding_events::{CodeIssuedV1, PublicEvent, UserActivatedV1};
use onboarding_relay::kafka::group_consumer_config;
use onboarding_store::{Actor, MailRetry, Store, StoreError};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use lanes::{HandleFuture, Handled, Lanes};
pub use mail::{Invitation, MailError, Mailer};

/// Why a record was left unhandled (its offset is not stored; it will be seen again).
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write to the dead-letter topic: {0}")]
    DeadLetter(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Setup(#[from] mail::SetupError),
    #[error("a partition lane failed: {0}; its records will be seen again after a restart")]
    Lane(#[from] tokio::task::JoinError),
}

/// What became of one attempt at an invitation (or of a welcome mail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    AlreadySent,
    Superseded,
    Expired,
    /// Active, revoked, expired or locked: no code is waiting for this mail.
    NotPending,
    UnknownUser,
    /// A transient failure; the mail waits in the delayed store for its next attempt.
    RetryScheduled,
    /// Given up: a permanent failure, or the attempts or the time allowed ran out.
    Abandoned,
    /// A welcome mail given up on (permanent failure, attempts or time ran out, or its template
    /// failed): best effort, logged and counted only.
    Failed {
        permanent: bool,
    },
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::AlreadySent => "already_sent",
            Self::Superseded => "superseded",
            Self::Expired => "expired",
            Self::NotPending => "not_pending",
            Self::UnknownUser => "unknown_user",
            Self::RetryScheduled => "retry_scheduled",
            Self::Abandoned => "abandoned",
            Self::Failed { permanent: true } => "failed_permanent",
            Self::Failed { permanent: false } => "failed_transient",
        }
    }
}

/// When to try a mail again and when to give up on it.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max_age: chrono::Duration,
}

impl RetryPolicy {
    /// The wait after `attempt` failed: `initial` doubled per earlier attempt, at most an hour,
    /// with ±20 % jitter so that mails that failed together are not retried together.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(Duration::from_secs(3600));
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        base.mul_f64(jitter)
    }
}

/// Sends mails and records their fate; shared by the record loop and the retry loop.
#[derive(Clone)]
pub struct Delivery {
    store: Store,
    mailer: Arc<Mailer>,
    keyring: Arc<CodeKeyring>,
    public_base_url: String,
    policy: RetryPolicy,
}

pub struct EmailWorker {
    records: Arc<RecordHandler>,
    consumer: WorkerConsumer,
    consumer_config: rdkafka::ClientConfig,
    topic: String,
    watchdog: watchdog::Watchdog,
    /// The consumer's rebalance count when the watchdog last looked.
    rebalances_seen: u64,
    /// Records in flight at most (`kafka.email_worker_concurrency`).
    concurrency: usize,
}

/// Handles one record; shared by the lanes of every partition.
struct RecordHandler {
    delivery: Delivery,
    dead_letters: FutureProducer,
    dead_letter_topic: String,
}

/// How long the worker waits for a record before it counts as idle.
const IDLE_TICK: Duration = Duration::from_secs(1);

impl EmailWorker {
    pub fn new(settings: &Settings, store: Store) -> Result<Self, WorkerError> {
        let concurrency = settings.kafka.email_worker_concurrency.max(1);
        // One connection per record in flight, and one for the retry task.
        let mailer = Mailer::new(
            &settings.output_adapter.email,
            &settings.organisation.name,
            concurrency + 1,
        )?;
        let mut consumer_config =
            group_consumer_config(&settings.kafka, &settings.kafka.email_worker_group);
        // Notice a recreated topic (after a broker lost its data) within seconds.
        consumer_config.set("topic.metadata.refresh.interval.ms", "5000");
        let consumer = subscribe(&consumer_config, &settings.kafka.topic)?;
        let email = &settings.output_adapter.email;
        Ok(Self {
            records: Arc::new(RecordHandler {
                delivery: Delivery {
                    keyring: store.services().keyring.clone(),
                    store,
                    mailer: Arc::new(mailer),
                    public_base_url: settings
                        .gateway
                        .public_base_url
                        .trim_end_matches('/')
                        .to_owned(),
                    policy: RetryPolicy {
                        max_attempts: email.max_attempts.max(1),
                        initial: Duration::from_secs(email.retry_initial_seconds.max(1)),
                        max_age: chrono::Duration::minutes(
                            i64::try_from(email.max_age_minutes).unwrap_or(i64::MAX / 60_000),
                        ),
                    },
                },
                dead_letters: onboarding_relay::kafka::producer(&settings.kafka)?,
                dead_letter_topic: onboarding_relay::kafka::dead_letter_topic(&settings.kafka),
            }),
            consumer,
            consumer_config,
            topic: settings.kafka.topic.clone(),
            watchdog: watchdog::Watchdog::new(
                &settings.kafka.topic,
                Duration::from_secs(settings.kafka.email_worker_stall_seconds),
            ),
            rebalances_seen: 0,
            concurrency: concurrency as usize,
        })
    }

    /// Consumes until `shutdown`; finishes the records in hand, then commits stored offsets.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        match self.records.delivery.mailer.test_connection().await {
            Ok(true) => tracing::info!("email worker started; SMTP server answers"),
            Ok(false) | Err(_) => {
                tracing::warn!("email worker started, but the SMTP server does not answer yet; mails will be retried")
            }
        }
        // Mails that failed transiently wait in the delayed store, not on the partition; a task
        // of their own tries them when they are due. It finishes the attempt in hand at shutdown.
        let stop_retries = shutdown.child_token();
        let retries = tokio::spawn(
            self.records
                .delivery
                .clone()
                .run_retries(stop_retries.clone()),
        );
        let result = self.consume(shutdown).await;
        stop_retries.cancel();
        let _ = retries.await;
        result
    }

    /// Receives records while fewer than `concurrency` are in flight and hands each to its
    /// partition's lane; stores each partition's offset as its lane reports records handled.
    async fn consume(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let records = self.records.clone();
        let stop = shutdown.clone();
        let mut lanes: Lanes<OwnedMessage> = Lanes::new(
            self.concurrency,
            shutdown.clone(),
            Arc::new(move |msg| -> HandleFuture {
                let (records, stop) = (records.clone(), stop.clone());
                Box::pin(async move { records.handle_until_recorded(&msg, &stop).await })
            }),
        );
        // Set when the broker became unreachable; cleared by the next record. A broker that comes
        // back without our consumer group (an in-memory broker that restarted) leaves the
        // consumer waiting forever, so after a quiet spell a fresh consumer rejoins.
        let mut disrupted = false;
        let mut quiet = Duration::ZERO;
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                handled = lanes.handled() => {
                    self.store_offset(handled?);
                    metrics::gauge!("onboard_mail_in_flight").set(lanes.in_flight() as f64);
                    // Measures the lag; a busy worker never rejoins.
                    self.watch(false);
                    continue;
                }
                m = tokio::time::timeout(IDLE_TICK, self.consumer.recv()), if lanes.has_room() => m,
            };
            match received {
                Ok(Ok(m)) => {
                    disrupted = false;
                    quiet = Duration::ZERO;
                    lanes.dispatch(m.partition(), m.offset(), m.detach());
                    metrics::gauge!("onboard_mail_in_flight").set(lanes.in_flight() as f64);
                }
                Ok(Err(e)) => {
                    disrupted = true;
                    tracing::warn!(error = %e, "kafka receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(_idle) => {
                    quiet += IDLE_TICK;
                    if disrupted && quiet >= Duration::from_secs(10) {
                        tracing::warn!(
                            "no records since the broker came back; rejoining the consumer group"
                        );
                        self.drain_and_rejoin(&mut lanes).await?;
                        disrupted = false;
                        quiet = Duration::ZERO;
                    } else if self.watch(lanes.in_flight() == 0) {
                        self.drain_and_rejoin(&mut lanes).await?;
                    }
                }
            }
        }
        self.drain(&mut lanes).await;
        self.close()
    }

    /// Stores the offset after a handled record (the lane reported it, so every record before
    /// it on its partition was handled too). Auto-commit commits it.
    fn store_offset(&self, handled: Handled) {
        if let Err(e) = self
            .consumer
            .store_offset(&self.topic, handled.partition, handled.offset)
        {
            // The partition was revoked in a rebalance meanwhile: its new holder reads the
            // record again, and handling it again sends nothing twice.
            tracing::debug!(
                error = %e,
                partition = handled.partition,
                offset = handled.offset,
                "cannot store the offset of a handled record (partition revoked?); it will be seen again"
            );
        }
    }

    /// Waits until every lane finished the records it holds and stores their offsets.
    async fn drain(&mut self, lanes: &mut Lanes<OwnedMessage>) {
        for handled in lanes.drain().await {
            self.store_offset(handled);
        }
        metrics::gauge!("onboard_mail_in_flight").set(0.0);
    }

    /// Finishes the records in hand (their offsets belong to this consumer), then rejoins.
    async fn drain_and_rejoin(
        &mut self,
        lanes: &mut Lanes<OwnedMessage>,
    ) -> Result<(), WorkerError> {
        self.drain(lanes).await;
        self.rejoin()
    }

    /// Measures the lag now and then; true when the worker should rejoin the group so that it
    /// reassigns the partitions: it is idle (no record in flight) and a partition's records wait
    /// while its committed offset stands still.
    fn watch(&mut self, idle: bool) -> bool {
        if !self.watchdog.due() {
            return false;
        }
        let measured = tokio::task::block_in_place(|| self.watchdog.measure(&self.consumer));
        let lags = match measured {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot measure the consumer lag");
                return false;
            }
        };
        // After a rebalance the partitions' new holders get the whole stall time.
        let rebalances = self
            .consumer
            .context()
            .rebalances
            .load(std::sync::atomic::Ordering::Relaxed);
        if rebalances != self.rebalances_seen {
            self.rebalances_seen = rebalances;
            self.watchdog.reset();
        }
        let stalled = self.watchdog.stalled(&lags, Instant::now());
        if idle && !stalled.is_empty() {
            let waiting: Vec<String> = lags
                .iter()
                .filter(|l| stalled.contains(&l.partition))
                .map(|l| {
                    format!(
                        "{}: {} waiting at offset {}",
                        l.partition,
                        l.high_watermark - l.committed,
                        l.committed
                    )
                })
                .collect();
            tracing::warn!(partitions = %waiting.join("; "), "records wait on partitions nobody reads; rejoining the consumer group");
            metrics::counter!("onboard_consumer_rejoins_total").increment(1);
            return true;
        }
        false
    }

    /// Leaves the consumer group (committing what was handled) and joins it again.
    fn rejoin(&mut self) -> Result<(), WorkerError> {
        let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
        self.consumer = subscribe(&self.consumer_config, &self.topic)?;
        self.watchdog.reset();
        self.rebalances_seen = 0;
        Ok(())
    }

    fn close(self) -> Result<(), WorkerError> {
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %e, "final offset commit failed; records may be seen again");
        }
        tracing::info!("email worker stopped");
        Ok(())
    }
}

impl RecordHandler {
    /// Handles a record, retrying through a database outage until its outcome is recorded (its
    /// lane, and so its partition, waits meanwhile; other partitions go on). False when
    /// `shutdown` came first: the record is left for redelivery.
    async fn handle_until_recorded(
        &self,
        msg: &OwnedMessage,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.process(msg).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, partition = msg.partition(), retry_in_ms = backoff.as_millis() as u64, "cannot record the outcome; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Copies a record that cannot be processed at all to the dead-letter topic, with its key,
    /// value and headers, plus `onboard_dlq_reason` (machine-readable: `missing_type`,
    /// `unreadable_payload`), `onboard_dlq_detail`, and where it came from. Returns once the broker
    /// acknowledged it, so the record's offset is stored only after that.
    async fn dead_letter(
        &self,
        msg: &OwnedMessage,
        reason: &str,
        error: &str,
    ) -> Result<(), HandleError> {
        onboarding_relay::kafka::dead_letter(
            &self.dead_letters,
            &self.dead_letter_topic,
            msg,
            reason,
            error,
        )
        .await
        .map_err(|e| HandleError::DeadLetter(e.to_string()))?;
        metrics::counter!("onboard_mail_dead_lettered_total", "reason" => reason.to_owned())
            .increment(1);
        tracing::warn!(
            reason,
            partition = msg.partition(),
            offset = msg.offset(),
            topic = %self.dead_letter_topic,
            "record set aside on the dead-letter topic"
        );
        Ok(())
    }

    async fn process(&self, msg: &OwnedMessage) -> Result<(), HandleError> {
        let ce_type = msg
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "ce_type"))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or_default()
            .to_owned();
        if ce_type.is_empty() {
            return self
                .dead_letter(msg, "missing_type", "the record has no ce_type header")
                .await;
        }
        if ce_type != CodeIssuedV1::TYPE && ce_type != UserActivatedV1::TYPE {
            return Ok(());
        }
        let event = match PublicEvent::parse(&ce_type, msg.payload().unwrap_or_default()) {
            Ok(PublicEvent::CodeIssued(e)) => e,
            Ok(PublicEvent::UserActivated(e)) => {
                let outcome = self.delivery.welcome(&e).await?;
                metrics::counter!("onboard_mail_total", "kind" => "welcome", "outcome" => outcome.label()).increment(1);
                tracing::info!(user_id = %e.user_id, outcome = outcome.label(), "activation handled");
                return Ok(());
            }
            Ok(_) => return Ok(()),
            Err(e) => {
                // Not ours to fix and retrying cannot help: set it aside and move on.
                tracing::error!(error = %e, partition = msg.partition(), offset = msg.offset(), "unreadable record sent to the dead-letter topic");
                metrics::counter!("onboard_mail_total", "outcome" => "unreadable").increment(1);
                return self
                    .dead_letter(msg, "unreadable_payload", &e.to_string())
                    .await;
            }
        };
        let started = Instant::now();
        let outcome = self.delivery.handle(&event).await?;
        metrics::counter!("onboard_mail_total", "kind" => "invitation", "outcome" => outcome.label()).increment(1);
        if outcome == Outcome::Sent {
            metrics::histogram!("onboard_mail_send_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        tracing::info!(user_id = %event.user_id, code_id = %event.code_id, outcome = outcome.label(), "code-issued event handled");
        Ok(())
    }
}

impl Delivery {
    /// Makes the first attempt at an issued code's mail, unless it needs none.
    #[tracing::instrument(skip_all, fields(user_id = %event.user_id))]
    pub async fn handle(&self, event: &CodeIssuedV1) -> Result<Outcome, HandleError> {
        let code_id = CodeId::from_random_bytes(*event.code_id.as_bytes());
        Ok(self.attempt(event.user_id, code_id, 1, None).await?)
    }

    /// Tries the mail for `code_id` once (attempt number `attempt`; `first_failed_at` is set for
    /// retries) and records the outcome: sent; failed with the next attempt scheduled in the
    /// delayed store; or failed and abandoned.
    async fn attempt(
        &self,
        user_id: uuid::Uuid,
        code_id: CodeId,
        attempt: u32,
        first_failed_at: Option<chrono::DateTime<Utc>>,
    ) -> Result<Outcome, StoreError> {
        let Some(account) = self.store.load(user_id).await? else {
            return Ok(Outcome::UnknownUser);
        };
        if account.mail_sent_for(code_id) {
            return Ok(Outcome::AlreadySent);
        }
        let Some(live) = account.live_code() else {
            return Ok(Outcome::NotPending);
        };
        if live.code_id != code_id {
            return Ok(Outcome::Superseded);
        }
        if Utc::now() >= live.expires_at {
            return Ok(Outcome::Expired);
        }
        match &account.delivery {
            // Given up already (the record was seen again after a restart).
            Some(EmailDelivery::Abandoned { .. }) => return Ok(Outcome::Abandoned),
            // The record was seen again while its mail waits in the delayed store: the retry
            // task owns it.
            Some(EmailDelivery::Failed {
                next_attempt_at: Some(_),
                ..
            }) if first_failed_at.is_none() => return Ok(Outcome::RetryScheduled),
            _ => {}
        }
        let (Some(username), Some(email)) = (&account.username, &account.email) else {
            return Ok(Outcome::UnknownUser);
        };
        let binding = CodeBinding {
            user_id,
            code_id,
            expires_at: live.expires_at,
        };
        let Some(token) = self.keyring.mint(&live.key_id, &binding) else {
            let reason = format!("code key `{}` is no longer configured", live.key_id);
            return self
                .record_failure(user_id, code_id, attempt, first_failed_at, reason, true)
                .await;
        };
        let link = format!("{}/confirm?code={}", self.public_base_url, token.expose());
        let revoke_link = format!("{}/revoke?code={}", self.public_base_url, token.expose());
        let rendered = self.mailer.render(&Invitation {
            to: email.as_str(),
            username: username.as_str(),
            link: &link,
            revoke_link: &revoke_link,
            locale: account.locale.as_ref().map(|l| l.as_str()),
            time_zone: account.time_zone.as_ref().map(|t| t.as_str()),
            expires_at: live.expires_at,
        });
        let rendered = match rendered {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("template error: {e}");
                return self
                    .record_failure(user_id, code_id, attempt, first_failed_at, reason, true)
                    .await;
            }
        };
        let message_id = self
            .mailer
            .message_id_for(&format!("invitation/{}", code_id.as_uuid()));
        let result = self
            .mailer
            .send_as(email.as_str(), &rendered, message_id)
            .await;
        metrics::counter!("onboard_mail_attempts_total", "kind" => "invitation", "result" => match &result {
            Ok(_) => "accepted",
            Err(e) if e.is_permanent() => "permanent_failure",
            Err(_) => "transient_failure",
        })
        .increment(1);
        match result {
            Ok(accepted) => {
                let template = rendered.template.clone();
                let outcome = self
                    .record_after_send(user_id, |now| OnboardingCommand::RecordMailSent {
                        code_id,
                        message_id: accepted.message_id.clone(),
                        smtp_response: accepted.smtp_response.clone(),
                        template: Some(template.clone()),
                        now,
                    })
                    .await?;
                if first_failed_at.is_some() {
                    self.store.remove_mail_retry(code_id.as_uuid()).await?;
                }
                Ok(outcome)
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, recipient_domain = %email.domain(), "invitation mail failed");
                self.record_failure(
                    user_id,
                    code_id,
                    attempt,
                    first_failed_at,
                    e.to_string(),
                    e.is_permanent(),
                )
                .await
            }
        }
    }

    /// Records a failed attempt; schedules the next one or gives up.
    async fn record_failure(
        &self,
        user_id: uuid::Uuid,
        code_id: CodeId,
        attempt: u32,
        first_failed_at: Option<chrono::DateTime<Utc>>,
        reason: String,
        permanent: bool,
    ) -> Result<Outcome, StoreError> {
        let now = Utc::now();
        let first_failed_at = first_failed_at.unwrap_or(now);
        let give_up = if permanent {
            Some(format!("permanent failure: {reason}"))
        } else if attempt >= self.policy.max_attempts {
            Some(format!("{attempt} attempts failed; the last: {reason}"))
        } else if now - first_failed_at >= self.policy.max_age {
            Some(format!(
                "still failing {} minutes after the first failure; the last: {reason}",
                (now - first_failed_at).num_minutes()
            ))
        } else {
            None
        };
        let next_attempt_at = match give_up {
            Some(_) => None,
            None => Some(
                now + chrono::Duration::from_std(self.policy.delay_after(attempt))
                    .unwrap_or_else(|_| chrono::Duration::hours(1)),
            ),
        };
        let failed = OnboardingCommand::RecordMailFailed {
            code_id,
            reason: reason.clone(),
            permanent,
            attempt,
            next_attempt_at,
            now,
        };
        let actor = Actor::system("email-worker");
        match self.store.execute(user_id, failed, &actor).await {
            Ok(()) => {}
            Err(StoreError::Refused(OnboardingError::MailAlreadySent(_))) => {
                self.store.remove_mail_retry(code_id.as_uuid()).await?;
                return Ok(Outcome::AlreadySent);
            }
            Err(e) => return Err(e),
        }
        match next_attempt_at {
            Some(next) => {
                self.store
                    .schedule_mail_retry(&MailRetry {
                        kind: MailRetry::INVITATION.to_owned(),
                        user_id,
                        code_id: code_id.as_uuid(),
                        attempts: attempt as i32,
                        first_failed_at,
                        next_attempt_at: next,
                        last_error: reason,
                    })
                    .await?;
                Ok(Outcome::RetryScheduled)
            }
            None => {
                let why = give_up.unwrap_or(reason);
                let abandon = OnboardingCommand::RecordMailAbandoned {
                    code_id,
                    reason: why,
                    attempts: attempt,
                    now: Utc::now(),
                };
                match self.store.execute(user_id, abandon, &actor).await {
                    Ok(()) | Err(StoreError::Refused(OnboardingError::MailAlreadySent(_))) => {}
                    Err(e) => return Err(e),
                }
                self.store.remove_mail_retry(code_id.as_uuid()).await?;
                Ok(Outcome::Abandoned)
            }
        }
    }

    /// Tries due mails from the delayed store until `shutdown`.
    pub async fn run_retries(self, shutdown: CancellationToken) {
        loop {
            let claimed = self
                .store
                .claim_due_mail_retry(Utc::now(), Utc::now() + chrono::Duration::minutes(5))
                .await;
            let pause = match claimed {
                Ok(Some(retry)) => {
                    let attempt = u32::try_from(retry.attempts).unwrap_or(0) + 1;
                    let kind = if retry.kind == MailRetry::WELCOME {
                        "welcome"
                    } else {
                        "invitation"
                    };
                    let outcome = if kind == "welcome" {
                        self.welcome_attempt(retry.user_id, attempt, Some(retry.first_failed_at))
                            .await
                    } else {
                        let code_id = CodeId::from_random_bytes(*retry.code_id.as_bytes());
                        self.attempt(retry.user_id, code_id, attempt, Some(retry.first_failed_at))
                            .await
                    };
                    match outcome {
                        Ok(outcome) => {
                            if outcome != Outcome::RetryScheduled {
                                // Sent, given up, or nothing left to send for this code.
                                if let Err(e) = self.store.remove_mail_retry(retry.code_id).await {
                                    tracing::warn!(error = %e, "cannot remove a finished retry; it will be seen again");
                                }
                            }
                            metrics::counter!("onboard_mail_total", "kind" => kind, "outcome" => outcome.label()).increment(1);
                            tracing::info!(user_id = %retry.user_id, kind, attempt, outcome = outcome.label(), "mail retry handled");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "mail retry could not be recorded; it is tried again after its lease")
                        }
                    }
                    Duration::ZERO
                }
                Ok(None) => Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the delayed mail store; retrying");
                    Duration::from_secs(5)
                }
            };
            // Counted when nothing is due, not after every retry.
            if !pause.is_zero() {
                if let Ok(n) = self.store.mail_retries_waiting().await {
                    metrics::gauge!("onboard_mail_retries_waiting").set(n as f64);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Records that the SMTP server accepted a mail. The mail is out: this retries for up to a
    /// minute (through database hiccups and concurrent changes) rather than let the record be
    /// handled again, which would mail a second time.
    async fn record_after_send(
        &self,
        user_id: uuid::Uuid,
        command: impl Fn(chrono::DateTime<Utc>) -> OnboardingCommand,
    ) -> Result<Outcome, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(100);
        loop {
            match self
                .store
                .execute(user_id, command(Utc::now()), &Actor::system("email-worker"))
                .await
            {
                Ok(()) => return Ok(Outcome::Sent),
                Err(StoreError::Refused(
                    OnboardingError::MailAlreadySent(_) | OnboardingError::WelcomeAlreadySent,
                )) => return Ok(Outcome::AlreadySent),
                Err(e @ (StoreError::Conflict | StoreError::Unavailable(_)))
                    if Instant::now() < deadline =>
                {
                    tracing::warn!(error = %e, "mail sent but not yet recorded; retrying the record");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, %user_id, "mail sent but could not be recorded; it may be sent again");
                    return Err(e);
                }
            }
        }
    }

    /// Sends the "your account is ready" mail once after activation. Like an invitation mail it
    /// gets one attempt here; a transient failure waits in the delayed store
    /// ([`Delivery::run_retries`]), so it never holds the partition.
    #[tracing::instrument(skip_all, fields(user_id = %event.user_id))]
    pub async fn welcome(&self, event: &UserActivatedV1) -> Result<Outcome, StoreError> {
        // Seen again (a restart, a rebalance) while its retry waits: the retry task owns it.
        if self.store.mail_retry_waits(event.user_id).await? {
            return Ok(Outcome::RetryScheduled);
        }
        self.welcome_attempt(event.user_id, 1, None).await
    }

    /// Tries the welcome mail once (attempt number `attempt`; `first_failed_at` is set for
    /// retries); on a transient failure schedules the next attempt, within `max_attempts` and
    /// `max_age`. The welcome mail is best effort: giving up is logged and counted, not recorded.
    async fn welcome_attempt(
        &self,
        user_id: uuid::Uuid,
        attempt: u32,
        first_failed_at: Option<chrono::DateTime<Utc>>,
    ) -> Result<Outcome, StoreError> {
        let Some(account) = self.store.load(user_id).await? else {
            return Ok(Outcome::UnknownUser);
        };
        if account.welcome_sent_at.is_some() {
            return Ok(Outcome::AlreadySent);
        }
        let (Some(username), Some(email), Some(activated_at)) =
            (&account.username, &account.email, account.activated_at)
        else {
            return Ok(Outcome::NotPending);
        };
        let rendered = match self.mailer.render_welcome(
            username.as_str(),
            activated_at,
            account.locale.as_ref().map(|l| l.as_str()),
            account.time_zone.as_ref().map(|t| t.as_str()),
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "welcome template failed; no welcome mail");
                return Ok(Outcome::Failed { permanent: true });
            }
        };
        let message_id = self.mailer.message_id_for(&format!("welcome/{user_id}"));
        let result = self
            .mailer
            .send_as(email.as_str(), &rendered, message_id)
            .await;
        metrics::counter!("onboard_mail_attempts_total", "kind" => "welcome", "result" => match &result {
            Ok(_) => "accepted",
            Err(e) if e.is_permanent() => "permanent_failure",
            Err(_) => "transient_failure",
        })
        .increment(1);
        let error = match result {
            Ok(accepted) => {
                return self
                    .record_after_send(user_id, |now| OnboardingCommand::RecordWelcomeMailSent {
                        message_id: accepted.message_id.clone(),
                        template: rendered.template.clone(),
                        now,
                    })
                    .await;
            }
            Err(e) => e,
        };
        let now = Utc::now();
        let first_failed_at = first_failed_at.unwrap_or(now);
        let give_up = error.is_permanent()
            || attempt >= self.policy.max_attempts
            || now - first_failed_at >= self.policy.max_age;
        if give_up {
            tracing::warn!(error = %error, attempt, recipient_domain = %email.domain(), "welcome mail failed; giving up");
            return Ok(Outcome::Failed {
                permanent: error.is_permanent(),
            });
        }
        let next_attempt_at = now
            + chrono::Duration::from_std(self.policy.delay_after(attempt))
                .unwrap_or_else(|_| chrono::Duration::hours(1));
        tracing::warn!(error = %error, attempt, %next_attempt_at, recipient_domain = %email.domain(), "welcome mail failed; retry scheduled");
        self.store
            .schedule_mail_retry(&MailRetry {
                kind: MailRetry::WELCOME.to_owned(),
                user_id,
                code_id: user_id,
                attempts: attempt as i32,
                first_failed_at,
                next_attempt_at,
                last_error: error.to_string(),
            })
            .await?;
        Ok(Outcome::RetryScheduled)
    }
}

/// Logs the consumer group's decisions (which partitions this worker holds) and counts them.
#[derive(Default)]
pub struct WorkerContext {
    rebalances: std::sync::atomic::AtomicU64,
}

impl ClientContext for WorkerContext {}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let list = |tpl: &TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| e.partition().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = %list(tpl), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %list(tpl), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

type WorkerConsumer = StreamConsumer<WorkerContext>;

fn subscribe(config: &rdkafka::ClientConfig, topic: &str) -> Result<WorkerConsumer, WorkerError> {
    let consumer: WorkerConsumer = config.create_with_context(WorkerContext::default())?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_per_attempt_with_jitter_and_stop_growing_at_an_hour() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(30),
            max_age: chrono::Duration::hours(24),
        };
        for (attempt, base) in [(1, 30.0), (2, 60.0), (3, 120.0), (8, 3600.0), (40, 3600.0)] {
            for _ in 0..50 {
                let d = policy.delay_after(attempt).as_secs_f64();
                assert!(
                    (base * 0.8..=base * 1.2).contains(&d),
                    "attempt {attempt}: {d} s"
                );
            }
        }
    }
}
