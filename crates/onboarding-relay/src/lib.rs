//! The outbox relay: moves committed events from PostgreSQL to Kafka.
//!
//! Architecture invariants:
//! - One relay publishes at a time (a transaction-scoped advisory lock), reading the outbox in
//!   id order, so each user's events reach Kafka in order, keyed by user id. Outbox ids are
//!   drawn under the append lock (migration 0008), so id order is also the log's commit order
//!   across users.
//! - A row is deleted only after the broker acknowledged its record (idempotent producer,
//!   `acks=all`). A crash in between publishes the row again with the same `ce_id`: consumers
//!   deduplicate. Nothing committed is ever skipped.
//! - A row that cannot be mapped to a public event moves to `outbox_dead_letter`; it never
//!   blocks the rows behind it.
//! - After the broker lost records, the log is republished in chunks (`relay_republish`), with
//!   its progress committed after each acknowledged chunk. Meanwhile an outbox row waits only if
//!   its user has events still to be republished, so each user's events stay in order and new
//!   users' events do not wait for the republish (docs/adr/0025).
#![forbid(unsafe_code)]

pub mod backlog;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use onboarding_config::KafkaSettings;
use onboarding_events::{PublicEvent, CONTENT_TYPE, SPEC_VERSION};
use onboarding_kafka::{ClientError, SetupError};
use onboarding_store::personal::ToOpen;
use onboarding_store::{Erased, PersonalKeys};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// Arbitrary but fixed: the advisory lock that elects the active relay.
const RELAY_LOCK: i64 = 0x6f6e_626f_6172_6401;
const NOTIFY_CHANNEL: &str = "onboard_outbox";
/// How often the relay compares the broker's high watermarks with what it published.
const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Events of the log still to republish after the broker lost records.
pub const REPUBLISH_REMAINING: &str = "onboard_relay_republish_remaining";
/// How often the relay measures the outbox backlog ([`backlog`]).
const BACKLOG_INTERVAL: Duration = Duration::from_secs(1);

/// Why a relay step failed; the relay retries it, nothing is skipped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A send was not acknowledged, the broker could not be asked, or the producer could not be
    /// created (a configuration error names the property, never its value).
    #[error("kafka did not acknowledge: {0}")]
    Kafka(#[source] ClientError),
    /// The events topics could not be recreated after the broker lost them.
    #[error("kafka did not acknowledge: {0}")]
    Topics(#[from] SetupError),
    /// The blocking watermark query could not run.
    #[error("kafka did not acknowledge: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<KafkaError> for RelayError {
    fn from(e: KafkaError) -> Self {
        Self::Kafka(e.into())
    }
}

/// The outbox relay: one per process that runs it; one of them publishes at a time.
pub struct Relay {
    pool: PgPool,
    kafka: KafkaSettings,
    producer: FutureProducer<onboarding_kafka::RelayProducerContext>,
    topic: String,
    source: String,
    batch_size: i64,
    keys: PersonalKeys,
}

/// A row that does not map to a public event: position or outbox id, user id, sequence, event
/// type, payload and why.
type Unmapped = (i64, String, i64, String, serde_json::Value, String);

/// One outbox row on its way to Kafka.
struct Pending {
    id: i64,
    key: String,
    value: Vec<u8>,
    ce_id: Uuid,
    ce_type: &'static str,
    time: DateTime<Utc>,
    /// The trace context the event was recorded in (`traceparent`, `tracestate` of its
    /// metadata), empty when it has none.
    trace: HashMap<String, String>,
}

impl Relay {
    /// A relay over `pool`'s outbox; `keys` open the sealed personal fields of what it publishes
    /// (docs/adr/0030).
    pub fn new(
        pool: PgPool,
        kafka: &KafkaSettings,
        keys: PersonalKeys,
    ) -> Result<Self, RelayError> {
        Ok(Self {
            keys,
            pool,
            kafka: kafka.clone(),
            producer: onboarding_kafka::relay_producer(kafka)?,
            topic: kafka.topic.clone(),
            source: kafka.source.clone(),
            batch_size: 500,
        })
    }

    /// Relays until `shutdown` fires. Wakes on `NOTIFY` from the outbox trigger, and polls once a
    /// second in case a notification was missed. Errors back off and retry; nothing is dropped.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        tracing::info!(topic = %self.topic, "relay started");
        let mut backoff = Duration::from_millis(200);
        let mut last_check: Option<Instant> = None;
        let mut last_measured: Option<Instant> = None;
        let mut failures: u32 = 0;
        loop {
            if last_measured.is_none_or(|t| t.elapsed() >= BACKLOG_INTERVAL) {
                last_measured = Some(Instant::now());
                backlog::measure(&self.pool).await;
            }
            if last_check.is_none_or(|t| t.elapsed() >= LOSS_CHECK_INTERVAL) {
                last_check = Some(Instant::now());
                if let Err(e) = self.recover_lost_records().await {
                    tracing::warn!(error = %e, "cannot compare the broker with the log; will retry");
                }
            }
            // New events first, then a chunk of a republish in progress, so that neither waits
            // for the other to finish.
            let step = match self.relay_batch().await {
                Ok(relayed) => self
                    .republish_chunk()
                    .await
                    .map(|republished| relayed + republished),
                Err(e) => Err(e),
            };
            match step {
                Ok(n) if n > 0 => {
                    failures = 0;
                    backoff = Duration::from_millis(200);
                    if shutdown.is_cancelled() {
                        break;
                    }
                    continue;
                }
                Ok(_) => backoff = Duration::from_millis(200),
                Err(e) => {
                    metrics::counter!("onboard_relay_errors_total").increment(1);
                    failures += 1;
                    if failures.is_multiple_of(3) {
                        // An idempotent producer can be fenced for good (e.g. a broker that lost
                        // its state); a fresh one starts a new producer id.
                        match onboarding_kafka::relay_producer(&self.kafka) {
                            Ok(p) => self.producer = p,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot recreate the Kafka producer")
                            }
                        }
                    }
                    // A publish failure may mean the broker lost the topic: check again soon.
                    last_check =
                        last_check.map(|t| t.checked_sub(LOSS_CHECK_INTERVAL).unwrap_or(t));
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

    /// Compares each partition's high watermark with what the relay knows it published. When the
    /// broker holds less (it restarted empty, or the topic was deleted), recreates the topic and
    /// records a republish of the whole log, which [`Relay::republish_chunk`] then sends:
    /// PostgreSQL is the source of truth, and consumers deduplicate on `ce_id`. Returns how many
    /// events are to be republished.
    pub async fn recover_lost_records(&mut self) -> Result<u64, RelayError> {
        let expected: Vec<(i32, i64)> =
            sqlx::query_as("SELECT partition, next_offset FROM relay_offsets WHERE topic = $1")
                .bind(&self.topic)
                .fetch_all(&self.pool)
                .await?;
        if expected.is_empty() {
            return Ok(0);
        }
        let client = self.producer.clone();
        let topic = self.topic.clone();
        let lost = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            let mut lost = Vec::new();
            for (partition, next) in expected {
                match client
                    .client()
                    .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                {
                    Ok((_, high)) if high >= next => {}
                    Ok((_, high)) => lost.push(format!(
                        "partition {partition}: broker has {high}, relay published {next}"
                    )),
                    Err(e)
                        if matches!(
                            e.rdkafka_error_code(),
                            Some(
                                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                                    | rdkafka::types::RDKafkaErrorCode::UnknownPartition
                                    | rdkafka::types::RDKafkaErrorCode::UnknownTopic
                            )
                        ) =>
                    {
                        lost.push(format!("partition {partition}: unknown to the broker"))
                    }
                    Err(e) => return Err(RelayError::from(e)),
                }
            }
            Ok(lost)
        })
        .await??;
        if lost.is_empty() {
            return Ok(0);
        }
        tracing::warn!(topic = %self.topic, details = %lost.join("; "), "the broker lost records; recreating the topic and republishing the log");
        // The broker forgot this producer's id and sequence numbers too: start a new producer.
        self.producer = onboarding_kafka::relay_producer(&self.kafka)?;
        onboarding_kafka::create_event_topics(&self.kafka).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .execute(&mut *tx)
            .await?;
        // Another relay may have recovered already while this one was looking.
        let still: i64 = sqlx::query_scalar("SELECT count(*) FROM relay_offsets WHERE topic = $1")
            .bind(&self.topic)
            .fetch_one(&mut *tx)
            .await?;
        if still == 0 {
            return Ok(0);
        }
        // Everything up to the newest committed position is republished from the log, in chunks
        // (`republish_chunk`); rows still waiting in the outbox are part of that range.
        let up_to: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM outbox WHERE global_position <= $1")
            .bind(up_to)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO relay_republish (topic, after_position, up_to_position) VALUES ($1, 0, $2) \
             ON CONFLICT (topic) DO UPDATE SET after_position = 0, \
             up_to_position = GREATEST(relay_republish.up_to_position, EXCLUDED.up_to_position), \
             republished = 0, started_at = now()",
        )
        .bind(&self.topic)
        .bind(up_to)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM relay_offsets WHERE topic = $1")
            .bind(&self.topic)
            .execute(&mut *tx)
            .await?;
        // A new generation of the topic: consumers that see it start their partitions over from
        // the beginning, since the offsets they hold belong to the lost topic (docs/adr/0037).
        let generation: i64 = sqlx::query_scalar(
            "INSERT INTO topic_generations (topic, generation) VALUES ($1, 1) \
             ON CONFLICT (topic) DO UPDATE SET generation = topic_generations.generation + 1, \
             recreated_at = now() RETURNING generation",
        )
        .bind(&self.topic)
        .fetch_one(&mut *tx)
        .await?;
        let events: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE global_position <= $1")
                .bind(up_to)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        metrics::gauge!(REPUBLISH_REMAINING).set(events as f64);
        tracing::warn!(
            events,
            up_to_position = up_to,
            generation,
            chunk = self.batch_size,
            "republishing the log in chunks; new events go out meanwhile, a user's after her history"
        );
        Ok(events as u64)
    }

    /// Publishes the next chunk of a republish in progress, if there is one, and records how far
    /// it got. Returns how many events it published.
    pub async fn republish_chunk(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !leader {
            return Ok(0);
        }
        let job: Option<(i64, i64, i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT after_position, up_to_position, republished, started_at \
             FROM relay_republish WHERE topic = $1",
        )
        .bind(&self.topic)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((after, up_to, done, started_at)) = job else {
            return Ok(0);
        };
        let rows = sqlx::query(
            "SELECT global_position AS id, aggregate_id, sequence, event_type, event_version, \
             payload, metadata, recorded_at FROM events \
             WHERE global_position > $1 AND global_position <= $2 \
             ORDER BY global_position LIMIT $3",
        )
        .bind(after)
        .bind(up_to)
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        let last = match rows.last() {
            Some(row) => row.try_get::<i64, _>("id")?,
            None => up_to,
        };
        let (pending, unreadable) = self.map_rows(&mut tx, rows).await?;
        for (position, aggregate_id, sequence, event_type, _, error) in &unreadable {
            // The outbox set this row aside when it was first published; it stays there.
            tracing::error!(global_position = position, %aggregate_id, sequence, %event_type, %error, "event cannot be republished; skipped");
        }
        let offsets = self.send_all(&pending).await?;
        self.record_offsets(&mut tx, &offsets).await?;
        let republished = done + pending.len() as i64;
        if last >= up_to {
            sqlx::query("DELETE FROM relay_republish WHERE topic = $1")
                .bind(&self.topic)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(
                "UPDATE relay_republish SET after_position = $2, republished = $3 WHERE topic = $1",
            )
            .bind(&self.topic)
            .bind(last)
            .bind(republished)
            .execute(&mut *tx)
            .await?;
        }
        let remaining: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE global_position > $1 AND global_position <= $2",
        )
        .bind(last)
        .bind(up_to)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        metrics::counter!("onboard_relay_republished_total").increment(pending.len() as u64);
        metrics::gauge!(REPUBLISH_REMAINING).set(remaining as f64);
        if last >= up_to {
            let seconds = (Utc::now() - started_at).num_milliseconds() as f64 / 1000.0;
            tracing::warn!(republished, seconds, "the log is republished");
        } else {
            tracing::debug!(republished, remaining, "republished a chunk");
        }
        Ok(pending.len())
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
        // While the log is republished, a user's new events wait until her history is out, so
        // that her events stay in order on the topic; everybody else's go out at once.
        let rows = sqlx::query(
            "SELECT o.id, o.aggregate_id, o.sequence, o.event_type, o.event_version, o.payload, \
             o.metadata, o.recorded_at FROM outbox o \
             LEFT JOIN relay_republish r ON r.topic = $2 \
             WHERE r.topic IS NULL OR NOT EXISTS ( \
               SELECT 1 FROM events e WHERE e.aggregate_type = o.aggregate_type \
               AND e.aggregate_id = o.aggregate_id \
               AND e.global_position > r.after_position AND e.global_position <= r.up_to_position) \
             ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
        )
        .bind(self.batch_size)
        .bind(&self.topic)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let (pending, dead) = self.map_rows(&mut tx, rows).await?;
        let next_offsets = self.send_all(&pending).await?;
        self.record_offsets(&mut tx, &next_offsets).await?;

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
    /// Maps rows of the outbox or the log (`id`, `aggregate_id`, `sequence`, `event_type`,
    /// `event_version`, `payload`, `recorded_at`) to records, setting aside the ones that do not
    /// map to a public event.
    ///
    /// Sealed personal fields are opened first (in clear, or stand-ins for an erased user); the
    /// public event carries them in clear. A row whose fields cannot be opened is set aside with
    /// its stored, sealed payload.
    async fn map_rows(
        &self,
        conn: &mut sqlx::PgConnection,
        rows: Vec<sqlx::postgres::PgRow>,
    ) -> Result<(Vec<Pending>, Vec<Unmapped>), RelayError> {
        let mut pending = Vec::with_capacity(rows.len());
        let mut dead = Vec::new();
        let mut read = Vec::with_capacity(rows.len());
        for row in rows {
            let stored: serde_json::Value = row.try_get("payload")?;
            read.push((
                row.try_get::<i64, _>("id")?,
                row.try_get::<String, _>("aggregate_id")?,
                row.try_get::<i64, _>("sequence")?,
                row.try_get::<String, _>("event_type")?,
                row.try_get::<String, _>("event_version")?,
                row.try_get::<DateTime<Utc>, _>("recorded_at")?,
                row.try_get::<serde_json::Value, _>("metadata")?,
                stored.clone(),
                Ok::<_, String>(stored),
            ));
        }
        let mut all: Vec<ToOpen<'_>> = read
            .iter_mut()
            .filter_map(|(_, aggregate_id, _, event_type, _, _, _, _, opened)| {
                Some(ToOpen {
                    aggregate_id,
                    event_type,
                    payload: opened.as_mut().ok()?,
                })
            })
            .collect();
        if let Err(e) = self.keys.open(conn, &mut all, Erased::StandIn).await {
            drop(all);
            if let onboarding_store::PersonalDataError::Database(e) = e {
                return Err(e.into());
            }
            // One account's key or ciphertext is damaged: open row by row, so only its rows are
            // set aside.
            for (_, aggregate_id, _, event_type, _, _, _, stored, opened) in read.iter_mut() {
                let mut one = stored.clone();
                let result = self
                    .keys
                    .open(
                        conn,
                        &mut [ToOpen {
                            aggregate_id,
                            event_type,
                            payload: &mut one,
                        }],
                        Erased::StandIn,
                    )
                    .await;
                *opened = match result {
                    Ok(()) => Ok(one),
                    Err(onboarding_store::PersonalDataError::Database(e)) => return Err(e.into()),
                    Err(e) => Err(e.to_string()),
                };
            }
        }
        for (
            id,
            aggregate_id,
            sequence,
            event_type,
            event_version,
            recorded_at,
            metadata,
            payload,
            opened,
        ) in read
        {
            let mapped = Uuid::parse_str(&aggregate_id)
                .map_err(|e| format!("aggregate id is not a UUID: {e}"))
                .and_then(|user_id| Ok((user_id, opened?)))
                .and_then(|(user_id, opened)| {
                    // Rows written in an older shape are brought to the current one first.
                    onboarding_store::upcast(&event_type, &event_version, opened)
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
                    trace: trace_of(&metadata),
                }),
                Err(error) => {
                    dead.push((id, aggregate_id, sequence, event_type, payload, error));
                }
            }
        }
        Ok((pending, dead))
    }

    /// Sends the records and waits for every acknowledgement. Returns, per partition, a lower
    /// bound of the offset the partition must hold from now on.
    async fn send_all(&self, pending: &[Pending]) -> Result<HashMap<i32, i64>, RelayError> {
        let sends = pending.iter().map(|p| {
            // A span per record, in the trace its event was recorded in; its context goes in the
            // record's headers, so the consumers' spans follow it (docs/adr/0029).
            let span = tracing::info_span!(
                "relay publish",
                user_id = %p.key,
                ce_type = p.ce_type,
            );
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&p.trace)
            });
            let _ = span.set_parent(parent);
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
            let headers = onboarding_kafka::trace_context::carry(&span, headers);
            let record = FutureRecord::to(&self.topic)
                .key(&p.key)
                .payload(&p.value)
                .headers(headers);
            self.producer
                .send(record, Duration::from_secs(10))
                .instrument(span)
        });
        let results = futures::future::join_all(sends).await;
        let mut next_offsets: HashMap<i32, i64> = HashMap::new();
        for result in results {
            match result {
                // A lower bound of what the partition must hold from now on: the first offset
                // of this batch, plus one. (Not the last: some brokers report a high watermark
                // at the start of the last stored batch.)
                Ok(delivery) => {
                    let next = next_offsets.entry(delivery.partition).or_insert(i64::MAX);
                    *next = (*next).min(delivery.offset + 1);
                }
                // Nothing is deleted: the whole batch is retried. Records that did reach the
                // broker will be published again with the same ce_id.
                Err((e, _)) => return Err(e.into()),
            }
        }
        Ok(next_offsets)
    }

    /// Raises what the relay expects each partition to hold (`relay_offsets`), every partition
    /// in one statement.
    async fn record_offsets(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        next_offsets: &HashMap<i32, i64>,
    ) -> Result<(), RelayError> {
        if next_offsets.is_empty() {
            return Ok(());
        }
        let (partitions, nexts): (Vec<i32>, Vec<i64>) =
            next_offsets.iter().map(|(p, n)| (*p, *n)).unzip();
        sqlx::query(
            "INSERT INTO relay_offsets (topic, partition, next_offset) \
             SELECT $1, p, n FROM unnest($2::int[], $3::bigint[]) AS t(p, n) \
             ON CONFLICT (topic, partition) DO UPDATE \
             SET next_offset = GREATEST(relay_offsets.next_offset, EXCLUDED.next_offset)",
        )
        .bind(&self.topic)
        .bind(&partitions)
        .bind(&nexts)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// The trace context keys of an event's metadata (`traceparent`, `tracestate`).
fn trace_of(metadata: &serde_json::Value) -> HashMap<String, String> {
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|key| Some((key.to_owned(), metadata.get(key)?.as_str()?.to_owned())))
        .collect()
}
