//! cqrs-es' reads of the log, with the personal fields opened (docs/adr/0030): what the
//! aggregate folds holds the values that were sealed, or stand-ins once the user was erased.

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use futures::TryStreamExt;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::personal::{is_sealed, Erased, PersonalKeys, ToOpen};

/// postgres-es' repository, whose events come back opened.
pub(crate) struct OpenedReads {
    inner: PostgresEventRepository,
    pool: PgPool,
    keys: PersonalKeys,
}

impl OpenedReads {
    pub(crate) fn new(pool: PgPool, keys: PersonalKeys) -> Self {
        Self {
            inner: PostgresEventRepository::new(pool.clone()),
            pool,
            keys,
        }
    }

    async fn opened(
        &self,
        mut events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        if !events.iter().any(|e| is_sealed(&e.event_type, &e.payload)) {
            return Ok(events);
        }
        let mut rows: Vec<ToOpen<'_>> = events
            .iter_mut()
            .map(|e| ToOpen {
                aggregate_id: &e.aggregate_id,
                event_type: &e.event_type,
                payload: &mut e.payload,
            })
            .collect();
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        self.keys
            .open(&mut conn, &mut rows, Erased::StandIn)
            .await
            .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        Ok(events)
    }
}

/// One account's events with its data key beside each (`LEFT JOIN`: none when the account has
/// no key, erased or never sealed), in one statement: a load is one round trip, not one for the
/// events and another for the key. The columns are postgres-es' own.
const EVENTS_WITH_KEY: &str = "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
     e.event_version, e.payload, e.metadata, k.data_key, k.wrapped_by \
     FROM events e LEFT JOIN personal_data_keys k ON k.user_id = $3 \
     WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 ORDER BY e.sequence";

fn unknown(e: impl std::error::Error + Send + Sync + 'static) -> PersistenceError {
    PersistenceError::UnknownError(Box::new(e))
}

/// A failed read as postgres-es reports one: I/O and TLS failures as connection errors.
fn read_failed(e: sqlx::Error) -> PersistenceError {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => PersistenceError::ConnectionError(Box::new(e)),
        e => unknown(e),
    }
}

impl PersistedEventRepository for OpenedReads {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        // An id that is no UUID has no key (the store seals only accounts' events).
        let Ok(user_id) = Uuid::parse_str(aggregate_id) else {
            let events = self.inner.get_events::<A>(aggregate_id).await?;
            return self.opened(events).await;
        };
        let mut rows = sqlx::query(EVENTS_WITH_KEY)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(user_id)
            .fetch(&self.pool);
        let mut events = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(read_failed)? {
            let mut event = SerializedEvent::new(
                row.try_get("aggregate_id").map_err(unknown)?,
                usize::try_from(row.try_get::<i64, _>("sequence").map_err(unknown)?)
                    .unwrap_or_default(),
                row.try_get("aggregate_type").map_err(unknown)?,
                row.try_get("event_type").map_err(unknown)?,
                row.try_get("event_version").map_err(unknown)?,
                row.try_get("payload").map_err(unknown)?,
                row.try_get("metadata").map_err(unknown)?,
            );
            if is_sealed(&event.event_type, &event.payload) {
                let key: Option<Vec<u8>> = row.try_get("data_key").map_err(unknown)?;
                let wrapped_by: Option<String> = row.try_get("wrapped_by").map_err(unknown)?;
                self.keys
                    .open_with_key(
                        &mut ToOpen {
                            aggregate_id: &event.aggregate_id,
                            event_type: &event.event_type,
                            payload: &mut event.payload,
                        },
                        key.as_deref().zip(wrapped_by.as_deref()),
                        Erased::StandIn,
                    )
                    .map_err(unknown)?;
            }
            events.push(event);
        }
        Ok(events)
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = self
            .inner
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await?;
        self.opened(events).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.inner.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        // Only the group-committing repository writes (sealing what it appends); nothing in
        // the store commits through this one.
        self.inner.persist::<A>(events, snapshot_update).await
    }

    /// Streams are not opened: nothing in the engine streams the log through cqrs-es (the relay
    /// and the audit read it themselves and open what they read).
    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.inner.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.inner.stream_all_events::<A>().await
    }
}
