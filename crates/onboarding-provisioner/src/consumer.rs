//! The receive loop: the provisioner's consumer group reads the event topic; each `activated`
//! record is provisioned, each `disabled`, `enabled`, `email_changed` and `claims_updated` record
//! makes the entry follow the account (locked without her password while she is disabled), and
//! each `erased` record's entry is removed, before its offset is stored (auto-commit on,
//! automatic offset storing off: at least once, as the email worker does).
//!
//! Records are handled one at a time, in order: while the directory is down the loop waits on
//! the record in hand (retrying with backoff) instead of reading on, so nothing is skipped and
//! nothing is lost; the directory being down holds up every account alike. While idle, the
//! group's watchdog (`onboarding_kafka::Watchdog`, docs/adr/0004) rejoins the group when records
//! wait on a partition nobody reads (a provisioner killed and restarted within its session).
//! Each partition it is given is read from `kafka.relay_batch_records` records before its
//! committed offset, and the records below that offset are skipped: they were handled
//! (docs/adr/0036).

use std::sync::Arc;
use std::time::{Duration, Instant};

use onboarding_config::KafkaSettings;
use onboarding_config::Settings;
use onboarding_events::{
    AccountDisabledV1, AccountEnabledV1, ClaimsUpdatedV1, EmailChangedV1, PublicEvent,
    UserActivatedV1, UserErasedV1,
};
use onboarding_kafka::{Generation, GroupContext, Rewind, Watchdog};
use onboarding_store::Store;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::provision::{Provision, Trigger};
use crate::user_store::UserStore;

/// Why the provisioner cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionerError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("no [user_store] is configured; the provisioner has nothing to provision into (see docs/configuration.md)")]
    NotConfigured,
}

const IDLE_TICK: Duration = Duration::from_secs(1);
/// An idle provisioner that sees records wait this long behind a committed offset that does not
/// move rejoins its group (the provisioner is never idle while it works on a record).
const STALL: Duration = Duration::from_secs(20);

/// Consumes the public event topic and provisions each activated account.
pub struct Provisioner {
    provision: Provision,
    /// Shared with the watchdog's measurement while one runs (on the blocking pool).
    consumer: Arc<StreamConsumer<GroupContext>>,
    consumer_config: rdkafka::ClientConfig,
    kafka: KafkaSettings,
    topic: String,
    store: Store,
    /// The topic's generation: the provisioner reads in the consumer group of the generation
    /// (docs/adr/0038).
    generation: Generation,
    watchdog: Watchdog,
}

impl Provisioner {
    /// A provisioner in `user_store.consumer_group` (or its group of `generation`, the topic's
    /// generation read from PostgreSQL).
    pub fn new(
        settings: &Settings,
        store: Store,
        user_store: Arc<dyn UserStore>,
        generation: i64,
    ) -> Result<Self, ProvisionerError> {
        let group = &settings
            .user_store
            .as_ref()
            .ok_or(ProvisionerError::NotConfigured)?
            .consumer_group;
        let generation = Generation::new(group, &settings.kafka.topic, generation);
        let mut consumer_config = onboarding_kafka::group_consumer_config(&settings.kafka, group);
        generation.configure(&mut consumer_config);
        consumer_config.set("topic.metadata.refresh.interval.ms", "5000");
        let consumer = Arc::new(subscribe(&consumer_config, &settings.kafka)?);
        Ok(Self {
            provision: Provision::new(store.clone(), user_store),
            consumer,
            consumer_config,
            kafka: settings.kafka.clone(),
            topic: settings.kafka.topic.clone(),
            store,
            generation,
            watchdog: Watchdog::new(&settings.kafka.topic, STALL, "onboard_provisioner_lag"),
        })
    }

    /// Consumes until `shutdown`; the record in hand is finished or left for redelivery.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ProvisionerError> {
        match self.provision.user_store().check().await {
            Ok(()) => tracing::info!("provisioner started; the user store answers"),
            Err(e) => {
                tracing::warn!(reason = %e, "provisioner started, but the user store cannot be used yet; provisioning waits for it")
            }
        }
        // After a receive error, a broker that came back without the group leaves the consumer
        // waiting: after a quiet spell a fresh consumer joins again (as the email worker does).
        let mut disrupted = false;
        let mut quiet = Duration::ZERO;
        loop {
            if self
                .generation
                .moved(self.store.topic_generation(&self.topic))
                .await
            {
                self.rejoin().await?;
                disrupted = false;
                quiet = Duration::ZERO;
            }
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = tokio::time::timeout(IDLE_TICK, self.consumer.recv()) => m,
            };
            match received {
                Ok(Ok(m)) => {
                    disrupted = false;
                    quiet = Duration::ZERO;
                    let (partition, offset) = (m.partition(), m.offset());
                    // Read again from before the committed offset (a batch's start): handled.
                    if self
                        .consumer
                        .context()
                        .already_handled(m.topic(), partition, offset)
                    {
                        continue;
                    }
                    // The record's span, in the trace its headers carry (docs/adr/0029).
                    let span = onboarding_kafka::trace_context::follow(
                        m.headers(),
                        tracing::info_span!("provisioner record", partition, offset),
                    );
                    if !self.handle(&m, &shutdown).instrument(span).await {
                        break;
                    }
                    if let Err(e) = self.consumer.store_offset(&self.topic, partition, offset) {
                        tracing::debug!(error = %e, partition, offset, "cannot store the offset (partition revoked?); the record will be seen again");
                    }
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
                        self.rejoin().await?;
                        disrupted = false;
                        quiet = Duration::ZERO;
                    } else if self.stalled().await {
                        self.rejoin().await?;
                    }
                }
            }
        }
        self.watchdog.settle().await;
        if let Err(e) = onboarding_kafka::commit_stored(self.consumer.as_ref()) {
            tracing::warn!(error = %e, "final offset commit failed; records may be seen again");
        }
        tracing::info!("provisioner stopped");
        Ok(())
    }

    /// Measures the group's lag now and then, beside the loop; true when records wait on a
    /// partition whose committed offset has not moved for [`STALL`] (this provisioner is idle, so
    /// nobody reads it).
    async fn stalled(&mut self) -> bool {
        let lags = match self.watchdog.poll(&self.consumer).await {
            None => return false,
            Some(Ok(lags)) => lags,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "cannot measure the provisioner's lag");
                return false;
            }
        };
        let stalled = self.watchdog.stalled(&lags, Instant::now());
        if stalled.is_empty() {
            return false;
        }
        tracing::warn!(partitions = ?stalled, "records wait on partitions nobody reads; rejoining the consumer group");
        true
    }

    /// Leaves the consumer group (committing what was handled) and joins the group of the known
    /// generation.
    async fn rejoin(&mut self) -> Result<(), ProvisionerError> {
        // The measurement in flight lets go of the consumer first.
        self.watchdog.settle().await;
        let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
        self.generation.configure(&mut self.consumer_config);
        self.consumer = Arc::new(subscribe(&self.consumer_config, &self.kafka)?);
        self.watchdog.reset();
        Ok(())
    }

    /// Handles one record; false when `shutdown` came first (the record is not done).
    async fn handle(&self, msg: &BorrowedMessage<'_>, shutdown: &CancellationToken) -> bool {
        let ce_type = msg
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "ce_type"))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok());
        if ce_type == Some(UserErasedV1::TYPE) {
            return match PublicEvent::parse(UserErasedV1::TYPE, msg.payload().unwrap_or_default()) {
                Ok(PublicEvent::UserErased(e)) => self
                    .provision
                    .remove_until_done(e.user_id, shutdown)
                    .await
                    .is_some(),
                Ok(_) => true,
                Err(e) => {
                    tracing::error!(error = %e, partition = msg.partition(), offset = msg.offset(), "unreadable erasure record skipped");
                    true
                }
            };
        }
        // The activation provisions her; a later change of the account (disabled, enabled, a new
        // address, new claims) makes her entry follow it (docs/adr/0032).
        let (ce_type, trigger) = match ce_type {
            Some(t @ UserActivatedV1::TYPE) => (t, Trigger::Activation),
            Some(
                t @ (AccountDisabledV1::TYPE
                | AccountEnabledV1::TYPE
                | EmailChangedV1::TYPE
                | ClaimsUpdatedV1::TYPE),
            ) => (t, Trigger::Change),
            _ => return true,
        };
        let user_id = match PublicEvent::parse(ce_type, msg.payload().unwrap_or_default()) {
            Ok(event) => event.user_id(),
            Err(e) => {
                // The email worker sets such records aside on the dead-letter topic; here there
                // is nothing to provision from it.
                tracing::error!(error = %e, ce_type, partition = msg.partition(), offset = msg.offset(), "unreadable record skipped");
                metrics::counter!("onboard_provisioning_total", "outcome" => "unreadable")
                    .increment(1);
                return true;
            }
        };
        self.provision
            .until_done(user_id, trigger, shutdown)
            .await
            .is_some()
    }
}

fn subscribe(
    config: &rdkafka::ClientConfig,
    kafka: &KafkaSettings,
) -> Result<StreamConsumer<GroupContext>, rdkafka::error::KafkaError> {
    onboarding_kafka::subscribe(
        config,
        &kafka.topic,
        GroupContext::with_rewind(Rewind::new(kafka)),
    )
}
