//! The generations of a topic the broker lost (`topic_generations`, `consumer_generations`,
//! migration 0021, docs/adr/0037): the relay counts each recreation of the event topic, and the
//! consumers record which partitions their group started over from the beginning since.

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

    /// For each partition of `topic` that `group` started over, the generation it last did so in.
    pub async fn partitions_started_over(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<(i32, i64)>, StoreError> {
        sqlx::query_as(
            "SELECT partition, generation FROM consumer_generations \
             WHERE consumer_group = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(self.pool())
        .await
        .map_err(db)
    }

    /// Records that `group` started partitions of `topic` over, each in the generation given
    /// with it (never lowers a partition's generation).
    pub async fn record_partitions_started_over(
        &self,
        group: &str,
        topic: &str,
        started: &[(i32, i64)],
    ) -> Result<(), StoreError> {
        let (partitions, generations): (Vec<i32>, Vec<i64>) = started.iter().copied().unzip();
        sqlx::query(
            "INSERT INTO consumer_generations (consumer_group, topic, partition, generation) \
             SELECT $1, $2, p, g FROM unnest($3::integer[], $4::bigint[]) AS s (p, g) \
             ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET \
             generation = GREATEST(consumer_generations.generation, EXCLUDED.generation), \
             started_at = now()",
        )
        .bind(group)
        .bind(topic)
        .bind(&partitions)
        .bind(&generations)
        .execute(self.pool())
        .await
        .map_err(db)?;
        Ok(())
    }

    /// What a consumer of `topic` in `group` does every few seconds: records the partitions it
    /// started over since it last asked (`started`), then reads the generation of
    /// `generation_topic` (the event topic, which the relay recreates). When that is newer than
    /// `known`, returns it with what the group started over of `topic` so far.
    pub async fn follow_topic_generation(
        &self,
        group: &str,
        topic: &str,
        generation_topic: &str,
        known: i64,
        started: &[(i32, i64)],
    ) -> Result<Option<TopicGeneration>, StoreError> {
        if !started.is_empty() {
            self.record_partitions_started_over(group, topic, started)
                .await?;
        }
        let generation = self.topic_generation(generation_topic).await?;
        if generation <= known {
            return Ok(None);
        }
        Ok(Some(TopicGeneration {
            generation,
            started_over: self.partitions_started_over(group, topic).await?,
        }))
    }
}

/// A topic's generation as a consumer group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicGeneration {
    /// How many times the relay recreated the topic.
    pub generation: i64,
    /// Per partition, the generation the group last started it over in.
    pub started_over: Vec<(i32, i64)>,
}
