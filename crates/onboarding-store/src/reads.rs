//! cqrs-es' reads of the log, with the personal fields opened (docs/adr/0030): what the
//! aggregate folds holds the values that were sealed, or stand-ins once the user was erased.

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;

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

impl PersistedEventRepository for OpenedReads {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = self.inner.get_events::<A>(aggregate_id).await?;
        self.opened(events).await
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
        // Only the group-committing repository writes; this one is never asked to.
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
