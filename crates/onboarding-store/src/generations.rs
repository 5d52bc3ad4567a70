//! The generations of a topic the broker lost (`topic_generations`, migration 0021,
//! docs/adr/0037 and 0038): the relay counts each recreation of the event topic, and each consumer
//! reads the topic in a consumer group of the generation.

use crate::{db, Store, StoreError};

impl Store {
    /// How many times the relay recreated `topic` after the broker lost it (0: never).
    pub async fn topic_generation(&self, topic: &str) -> Result<i64, StoreError> {
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM topic_generations WHERE topic = $1")
                .bind(topic)
                .fetch_optional(self.pool())
                .await
                .map_err(db)?;
        Ok(generation.unwrap_or(0))
    }
}
