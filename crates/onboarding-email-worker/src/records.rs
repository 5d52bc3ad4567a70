//! One record: its type decides what it asks for. A `code_issued` or `activated` record goes to
//! [`Delivery`]; other types need nothing; a record that cannot be read at all is copied to the
//! dead-letter topic. A record is handled once its outcome is recorded.

use std::time::{Duration, Instant};

use onboarding_events::{CodeIssuedV1, PublicEvent, UserActivatedV1};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::delivery::{Delivery, Outcome};
use crate::HandleError;

/// The record's `ce_type` header, if it has one that is text.
fn ce_type(msg: &impl Message) -> Option<&str> {
    msg.headers()?
        .iter()
        .find(|h| h.key == "ce_type")?
        .value
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Whether a record asks for no mail: it names a type, and not one the worker mails for. Such a
/// record needs neither its user's lane nor the database (most of the topic: every other event
/// of an account, the mails' own outcomes). A record without a type is not one of them: it is
/// set aside on the dead-letter topic.
pub(crate) fn needs_nothing(msg: &impl Message) -> bool {
    ce_type(msg)
        .is_some_and(|t| !t.is_empty() && t != CodeIssuedV1::TYPE && t != UserActivatedV1::TYPE)
}

/// Handles one record; shared by every lane.
pub(crate) struct RecordHandler {
    delivery: Delivery,
    dead_letters: FutureProducer,
    dead_letter_topic: String,
}

impl RecordHandler {
    pub(crate) fn new(
        delivery: Delivery,
        dead_letters: FutureProducer,
        dead_letter_topic: String,
    ) -> Self {
        Self {
            delivery,
            dead_letters,
            dead_letter_topic,
        }
    }

    pub(crate) fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Handles a record, retrying through a database outage until its outcome is recorded (its
    /// lane, and so its user, waits meanwhile; other users go on). False when
    /// `shutdown` came first: the record is left for redelivery.
    pub(crate) async fn handle_until_recorded(
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
        onboarding_kafka::dead_letter(
            &self.dead_letters,
            &self.dead_letter_topic,
            msg,
            reason,
            error,
        )
        .await
        .map_err(HandleError::DeadLetter)?;
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
        let ce_type = ce_type(msg).unwrap_or_default().to_owned();
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
        // How long the record took from its producer (the relay) to here: the broker, the fetch,
        // and the wait for a free lane. Clocks of two hosts differ by their skew.
        let record_age_ms = record_age(msg).map(|age| age.as_secs_f64() * 1000.0);
        if let Some(age) = record_age_ms {
            metrics::histogram!("onboard_mail_record_age_seconds").record(age / 1000.0);
        }
        let outcome = self.delivery.handle(&event).await?;
        if outcome == Outcome::Sent {
            metrics::histogram!("onboard_mail_send_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        tracing::info!(user_id = %event.user_id, code_id = %event.code_id, outcome = outcome.label(), record_age_ms, "code-issued event handled");
        Ok(())
    }
}

/// The time since the record's Kafka timestamp (its producer's create time, or the broker's
/// append time on a topic set to log it), when it has one; none for a timestamp in the future.
fn record_age(msg: &OwnedMessage) -> Option<Duration> {
    let millis = msg.timestamp().to_millis()?;
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).ok()?);
    std::time::SystemTime::now().duration_since(at).ok()
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;

    use super::*;

    fn at(timestamp: Timestamp) -> OwnedMessage {
        OwnedMessage::new(None, None, "t".into(), timestamp, 0, 0, None)
    }

    #[test]
    fn a_records_age_runs_from_its_kafka_timestamp_and_is_unknown_without_one() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let made = i64::try_from((now - Duration::from_millis(1500)).as_millis()).unwrap();
        let age = record_age(&at(Timestamp::CreateTime(made))).unwrap();
        assert!(
            age >= Duration::from_millis(1500) && age < Duration::from_secs(60),
            "{age:?}"
        );
        let appended = record_age(&at(Timestamp::LogAppendTime(made))).unwrap();
        assert!(appended >= Duration::from_millis(1500), "{appended:?}");
        assert_eq!(record_age(&at(Timestamp::NotAvailable)), None);
        let future = i64::try_from((now + Duration::from_secs(60)).as_millis()).unwrap();
        assert_eq!(record_age(&at(Timestamp::CreateTime(future))), None);
    }
}
