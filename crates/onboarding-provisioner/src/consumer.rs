//! The receive loop: the provisioner's consumer group reads the event topic; each `activated`
//! record is provisioned before its offset is stored (auto-commit on, automatic offset storing
//! off: at least once, as the email worker does).
//!
//! Records are handled one at a time, in order: while the directory is down the loop waits on
//! the record in hand (retrying with backoff) instead of reading on, so nothing is skipped and
//! nothing is lost; the directory being down holds up every account alike.

use std::sync::Arc;
use std::time::Duration;

use onboarding_config::Settings;
use onboarding_events::{PublicEvent, UserActivatedV1};
use onboarding_store::Store;
use rdkafka::consumer::{CommitMode, Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::provision::Provision;
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

/// Consumes the public event topic and provisions each activated account.
pub struct Provisioner {
    provision: Provision,
    consumer: StreamConsumer,
    consumer_config: rdkafka::ClientConfig,
    topic: String,
}

impl Provisioner {
    pub fn new(
        settings: &Settings,
        store: Store,
        user_store: Arc<dyn UserStore>,
    ) -> Result<Self, ProvisionerError> {
        let group = &settings
            .user_store
            .as_ref()
            .ok_or(ProvisionerError::NotConfigured)?
            .consumer_group;
        let mut consumer_config = onboarding_kafka::group_consumer_config(&settings.kafka, group);
        consumer_config.set("topic.metadata.refresh.interval.ms", "5000");
        let consumer = subscribe(&consumer_config, &settings.kafka.topic)?;
        Ok(Self {
            provision: Provision::new(store, user_store),
            consumer,
            consumer_config,
            topic: settings.kafka.topic.clone(),
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
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = tokio::time::timeout(IDLE_TICK, self.consumer.recv()) => m,
            };
            match received {
                Ok(Ok(m)) => {
                    disrupted = false;
                    quiet = Duration::ZERO;
                    let (partition, offset) = (m.partition(), m.offset());
                    if !self.handle(&m, &shutdown).await {
                        break;
                    }
                    if let Err(e) = self.consumer.store_offset(&self.topic, partition, offset) {
                        tracing::debug!(error = %e, partition, offset, "cannot store the offset (partition revoked?); the record will be seen again");
                    }
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
                        let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
                        self.consumer = subscribe(&self.consumer_config, &self.topic)?;
                        disrupted = false;
                        quiet = Duration::ZERO;
                    }
                }
            }
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %e, "final offset commit failed; records may be seen again");
        }
        tracing::info!("provisioner stopped");
        Ok(())
    }

    /// Handles one record; false when `shutdown` came first (the record is not done).
    async fn handle(&self, msg: &BorrowedMessage<'_>, shutdown: &CancellationToken) -> bool {
        let ce_type = msg
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "ce_type"))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok());
        if ce_type != Some(UserActivatedV1::TYPE) {
            return true;
        }
        let event = match PublicEvent::parse(
            UserActivatedV1::TYPE,
            msg.payload().unwrap_or_default(),
        ) {
            Ok(PublicEvent::UserActivated(e)) => e,
            Ok(_) => return true,
            Err(e) => {
                // The email worker sets such records aside on the dead-letter topic; here there
                // is nothing to provision from it.
                tracing::error!(error = %e, partition = msg.partition(), offset = msg.offset(), "unreadable activation record skipped");
                metrics::counter!("onboard_provisioning_total", "outcome" => "unreadable")
                    .increment(1);
                return true;
            }
        };
        self.provision
            .until_done(event.user_id, shutdown)
            .await
            .is_some()
    }
}

fn subscribe(
    config: &rdkafka::ClientConfig,
    topic: &str,
) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    onboarding_kafka::subscribe(config, topic, DefaultConsumerContext)
}
