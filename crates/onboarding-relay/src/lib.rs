//! The outbox relay: moves committed events from PostgreSQL to Kafka.
//!
//! Architecture invariants:
//! - One relay publishes at a time (a transaction-scoped advisory lock), reading the outbox in
//!   id order, so each user's events reach Kafka in order, keyed by user id.
//! - A row is deleted only after the broker acknowledged its record (idempotent producer,
//!   `acks=all`). A crash in between publishes the row again with the same `ce_id`: consumers
//!   deduplicate. Nothing committed is ever skipped.
//! - A row that cannot be mapped to a public event moves to `outbox_dead_letter`; it never
//!   blocks the rows behind it.
#![forbid(unsafe_code)]

pub mod kafka;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use onboarding_config::KafkaSettings;
use onboarding_domain::OnboardingEvent;
use onboarding_events::{PublicEvent, CONTENT_TYPE, SPEC_VERSION};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Arbitrary but fixed: the advisory lock that elects the active relay.
const RELAY_LOCK: i64 = 0x6f6e_626f_6172_6401;
const NOTIFY_CHANNEL: &str = "onboard_outbox";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka did not acknowledge: {0}")]
    Kafka(String),
}

pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    topic: String,
    source: String,
    batch_size: i64,
}

/// One outbox row on its way to Kafka.
struct Pending {
    id: i64,
    key: String,
    value: Vec<u8>,
    ce_id: Uuid,
    ce_type: &'static str,
    time: DateTime<Utc>,
}

impl Relay {
    pub fn new(pool: PgPool, kafka: &KafkaSettings) -> Result<Self, RelayError> {
        Ok(Self {
            pool,
            producer: kafka::producer(kafka).map_err(|e| RelayError::Kafka(e.to_string()))?,
            topic: kafka.topic.clone(),
            source: kafka.source.clone(),
            batch_size: 500,
        })
    }

    /// Relays until `shutdown` fires. Wakes on `NOTIFY` from the outbox trigger, and polls once a
    /// second in case a notification was missed. Errors back off and retry; nothing is dropped.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        tracing::info!(topic = %self.topic, "relay started");
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.relay_batch().await {
                Ok(n) if n > 0 => {
                    backoff = Duration::from_millis(200);
                    if shutdown.is_cancelled() {
                        break;
                    }
                    continue;
                }
                Ok(_) => backoff = Duration::from_millis(200),
                Err(e) => {
                    metrics::counter!("onboard_relay_errors_total").increment(1);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "relay batch failed; will retry");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                n = listener.recv() => {
                    if let Err(e) = n {
                        tracing::warn!(error = %e, "outbox notification channel failed; polling");
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        tracing::info!("relay stopped");
        Ok(())
    }

    /// Publishes up to one batch. Returns how many rows left the outbox.
    pub async fn relay_batch(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !leader {
            return Ok(0);
        }
        let rows = sqlx::query(
            "SELECT id, aggregate_id, sequence, event_type, payload, recorded_at \
             FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }

        let mut pending = Vec::with_capacity(rows.len());
        let mut dead = Vec::new();
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let aggregate_id: String = row.try_get("aggregate_id")?;
            let sequence: i64 = row.try_get("sequence")?;
            let payload: serde_json::Value = row.try_get("payload")?;
            let recorded_at: DateTime<Utc> = row.try_get("recorded_at")?;
            let mapped = Uuid::parse_str(&aggregate_id)
                .map_err(|e| format!("aggregate id is not a UUID: {e}"))
                .and_then(|user_id| {
                    serde_json::from_value::<OnboardingEvent>(payload.clone())
                        .map(|ev| PublicEvent::from_domain(user_id, sequence, ev))
                        .map_err(|e| format!("payload does not deserialise: {e}"))
                });
            match mapped {
                Ok(event) => pending.push(Pending {
                    id,
                    key: aggregate_id,
                    value: event.to_json(),
                    ce_id: event.ce_id(),
                    ce_type: event.ce_type(),
                    time: recorded_at,
                }),
                Err(error) => {
                    let event_type: String = row.try_get("event_type")?;
                    dead.push((id, aggregate_id, sequence, event_type, payload, error));
                }
            }
        }

        let sends = pending.iter().map(|p| {
            let time = p.time.to_rfc3339_opts(SecondsFormat::Micros, true);
            let ce_id = p.ce_id.to_string();
            let headers = OwnedHeaders::new_with_capacity(7)
                .insert(Header {
                    key: "ce_id",
                    value: Some(ce_id.as_str()),
                })
                .insert(Header {
                    key: "ce_type",
                    value: Some(p.ce_type),
                })
                .insert(Header {
                    key: "ce_source",
                    value: Some(self.source.as_str()),
                })
                .insert(Header {
                    key: "ce_specversion",
                    value: Some(SPEC_VERSION),
                })
                .insert(Header {
                    key: "ce_time",
                    value: Some(time.as_str()),
                })
                .insert(Header {
                    key: "ce_subject",
                    value: Some(p.key.as_str()),
                })
                .insert(Header {
                    key: "content-type",
                    value: Some(CONTENT_TYPE),
                });
            let record = FutureRecord::to(&self.topic)
                .key(&p.key)
                .payload(&p.value)
                .headers(headers);
            self.producer.send(record, Duration::from_secs(30))
        });
        let results = futures::future::join_all(sends).await;
        if let Some(Err((e, _))) = results.iter().find(|r| r.is_err()) {
            // Nothing is deleted: the whole batch is retried. Records that did reach the
            // broker will be published again with the same ce_id.
            return Err(RelayError::Kafka(e.to_string()));
        }

        for (id, aggregate_id, sequence, event_type, payload, error) in &dead {
            tracing::error!(outbox_id = id, %aggregate_id, sequence, %event_type, %error, "outbox row cannot be published; moved to outbox_dead_letter");
            sqlx::query(
                "INSERT INTO outbox_dead_letter (id, aggregate_id, sequence, event_type, payload, error) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(aggregate_id)
            .bind(sequence)
            .bind(event_type)
            .bind(payload)
            .bind(error)
            .execute(&mut *tx)
            .await?;
        }
        let ids: Vec<i64> = pending
            .iter()
            .map(|p| p.id)
            .chain(dead.iter().map(|d| d.0))
            .collect();
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::counter!("onboard_relay_published_total").increment(pending.len() as u64);
        metrics::counter!("onboard_relay_dead_lettered_total").increment(dead.len() as u64);
        tracing::debug!(
            published = pending.len(),
            dead = dead.len(),
            "relayed batch"
        );
        Ok(ids.len())
    }
}
