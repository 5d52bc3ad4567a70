//! Reading the log as an auditor: one account's timeline, its state at an instant, the whole
//! log as JSON lines, and the tailing read every reader of the log shares.

use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::Aggregate;
use futures::{Stream, StreamExt};
use onboarding_domain::Onboarding;
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

const COLUMNS: &str = "global_position, aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata, recorded_at, prev_hash, hash";

/// One event as an auditor reads it: everything stored, hashes in hex, and the password hash of a
/// `PasswordSet` 1.0 row redacted (later rows hold none: it is in `credentials`, docs/adr/0018).
#[derive(Debug, Clone, Serialize)]
pub struct LogEvent {
    pub global_position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    pub actor_kind: Option<String>,
    pub actor_id: Option<String>,
    pub correlation_id: Option<String>,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

fn log_event(row: sqlx::postgres::PgRow) -> Result<LogEvent, sqlx::Error> {
    let mut payload: serde_json::Value = row.try_get("payload")?;
    if let Some(hash) = payload.pointer_mut("/PasswordSet/password_hash") {
        *hash = serde_json::Value::String("<redacted>".into());
    }
    let metadata: serde_json::Value = row.try_get("metadata")?;
    let meta = |k: &str| metadata.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(LogEvent {
        global_position: row.try_get("global_position")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        recorded_at: row.try_get("recorded_at")?,
        actor_kind: meta("actor_kind"),
        actor_id: meta("actor_id"),
        correlation_id: meta("correlation_id"),
        prev_hash: row
            .try_get::<Option<Vec<u8>>, _>("prev_hash")?
            .map(hex::encode),
        hash: row.try_get::<Option<Vec<u8>>, _>("hash")?.map(hex::encode),
        payload,
        metadata,
    })
}

/// Every event of one account, oldest first.
pub async fn history(pool: &PgPool, user_id: Uuid) -> Result<Vec<LogEvent>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM events WHERE aggregate_type = 'Onboarding' AND aggregate_id = $1 \
         ORDER BY sequence"
    ))
    .bind(user_id.to_string())
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(log_event)
    .collect()
}

/// One line of `onboard audit history`.
pub fn history_line(e: &LogEvent) -> String {
    let actor = match (&e.actor_kind, &e.actor_id) {
        (Some(kind), Some(id)) => format!("{kind}:{id}"),
        (Some(kind), None) => kind.clone(),
        _ => "-".into(),
    };
    format!(
        "{}  #{:<6} seq {:<3} {:<22} v{:<4} actor={:<28} correlation={}",
        e.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        e.global_position,
        e.sequence,
        e.event_type,
        e.event_version,
        actor,
        e.correlation_id.as_deref().unwrap_or("-")
    )
}

#[derive(Debug, thiserror::Error)]
pub enum AsOfError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("event {position} does not deserialise: {reason}")]
    Corrupt { position: i64, reason: String },
}

/// The account as it was at `instant`: its events recorded at or before it, upcast and applied
/// in order. `None` when the account did not exist yet. Also returns the last position applied.
pub async fn as_of(
    pool: &PgPool,
    user_id: Uuid,
    instant: DateTime<Utc>,
) -> Result<Option<(Onboarding, i64)>, AsOfError> {
    let rows = sqlx::query(
        "SELECT global_position, event_type, event_version, payload FROM events \
         WHERE aggregate_type = 'Onboarding' AND aggregate_id = $1 AND recorded_at <= $2 ORDER BY sequence",
    )
    .bind(user_id.to_string())
    .bind(instant)
    .fetch_all(pool)
    .await?;
    let mut account = Onboarding::default();
    let mut last = None;
    for row in rows {
        let position: i64 = row.try_get("global_position")?;
        let event = onboarding_store::upcast(
            row.try_get::<&str, _>("event_type")?,
            row.try_get::<&str, _>("event_version")?,
            row.try_get("payload")?,
        )
        .map_err(|e| AsOfError::Corrupt {
            position,
            reason: e.to_string(),
        })?;
        account.apply(event);
        last = Some(position);
    }
    Ok(last.map(|p| (account, p)))
}

/// The window of `onboard audit export`: events recorded in `[since, until)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// How many events the window holds (for the progress bar).
pub async fn count(pool: &PgPool, window: Window) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE ($1::timestamptz IS NULL OR recorded_at >= $1) \
         AND ($2::timestamptz IS NULL OR recorded_at < $2)",
    )
    .bind(window.since)
    .bind(window.until)
    .fetch_one(pool)
    .await
}

/// The window's events in position order, streamed from one query: memory stays flat whatever
/// the size of the log.
pub fn export(
    pool: &PgPool,
    window: Window,
) -> impl Stream<Item = Result<LogEvent, sqlx::Error>> + Unpin + '_ {
    sqlx::query(&EXPORT_QUERY)
        .bind(window.since)
        .bind(window.until)
        .fetch(pool)
        .map(|row| row.and_then(log_event))
}

static EXPORT_QUERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM events WHERE ($1::timestamptz IS NULL OR recorded_at >= $1) \
         AND ($2::timestamptz IS NULL OR recorded_at < $2) ORDER BY global_position"
    )
});
