//! Reading the log as an auditor: one account's timeline, its state at an instant, the whole
//! log as JSON lines, and the tailing read every reader of the log shares.

use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::Aggregate;
use futures::{Stream, StreamExt};
use onboarding_domain::Onboarding;
use onboarding_store::personal::ToOpen;
use onboarding_store::{Erased, PersonalDataError, PersonalKeys};
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

/// Why an account's events could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    PersonalData(#[from] PersonalDataError),
}

/// Every event of one account, oldest first, its personal fields opened: in clear while her data
/// key exists, `<erased>` once she was erased (docs/adr/0030). The hashes are over the stored,
/// sealed payloads, which `export` prints.
pub async fn history(
    pool: &PgPool,
    keys: &PersonalKeys,
    user_id: Uuid,
) -> Result<Vec<LogEvent>, HistoryError> {
    let mut conn = pool.acquire().await?;
    let mut events = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM events WHERE aggregate_type = 'Onboarding' AND aggregate_id = $1 \
         ORDER BY sequence"
    ))
    .bind(user_id.to_string())
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(log_event)
    .collect::<Result<Vec<_>, _>>()?;
    let mut rows: Vec<ToOpen<'_>> = events
        .iter_mut()
        .map(|e| ToOpen {
            aggregate_id: &e.aggregate_id,
            event_type: &e.event_type,
            payload: &mut e.payload,
        })
        .collect();
    keys.open(&mut conn, &mut rows, Erased::Text).await?;
    Ok(events)
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
    #[error(transparent)]
    PersonalData(#[from] PersonalDataError),
}

/// The account as it was at `instant`: its events recorded at or before it, opened, upcast and
/// applied in order. `None` when the account did not exist yet. Also returns the last position
/// applied. After her erasure her personal fields read as erased whatever the instant: the key
/// that opened them is gone (docs/adr/0030).
pub async fn as_of(
    pool: &PgPool,
    keys: &PersonalKeys,
    user_id: Uuid,
    instant: DateTime<Utc>,
) -> Result<Option<(Onboarding, i64)>, AsOfError> {
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query(
        "SELECT global_position, event_type, event_version, payload FROM events \
         WHERE aggregate_type = 'Onboarding' AND aggregate_id = $1 AND recorded_at <= $2 ORDER BY sequence",
    )
    .bind(user_id.to_string())
    .bind(instant)
    .fetch_all(&mut *conn)
    .await?;
    let aggregate_id = user_id.to_string();
    let mut read = Vec::with_capacity(rows.len());
    for row in &rows {
        read.push((
            row.try_get::<i64, _>("global_position")?,
            row.try_get::<String, _>("event_type")?,
            row.try_get::<String, _>("event_version")?,
            row.try_get::<serde_json::Value, _>("payload")?,
        ));
    }
    // Sealed fields whose key is gone are read as stand-ins: the account shows them as erased,
    // whatever the instant.
    let sealed = read.iter().any(|(_, event_type, _, payload)| {
        onboarding_store::personal::is_sealed(event_type, payload)
    });
    let mut opened: Vec<ToOpen<'_>> = read
        .iter_mut()
        .map(|(_, event_type, _, payload)| ToOpen {
            aggregate_id: &aggregate_id,
            event_type,
            payload,
        })
        .collect();
    keys.open(&mut conn, &mut opened, Erased::StandIn).await?;
    drop(opened);
    let erased = sealed
        && !sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM personal_data_keys WHERE user_id = $1)",
        )
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await?;
    let mut account = Onboarding::default();
    let mut last = None;
    for (position, event_type, event_version, payload) in read {
        let event =
            onboarding_store::upcast(&event_type, &event_version, payload).map_err(|e| {
                AsOfError::Corrupt {
                    position,
                    reason: e.to_string(),
                }
            })?;
        account.apply(event);
        last = Some(position);
    }
    if erased {
        account.username = None;
        account.email = None;
        account.claims.clear();
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
