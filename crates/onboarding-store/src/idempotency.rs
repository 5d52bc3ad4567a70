//! `Idempotency-Key`s (`idempotency_keys`): a request sent again with the same key gets the
//! first answer instead of doing the work twice.

use crate::{db, Store, StoreError};

/// What an `Idempotency-Key` says about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Idempotency {
    /// First time: do the work, then `idempotency_finish`.
    New,
    /// Done before: answer with this.
    Replay {
        status: u16,
        response: serde_json::Value,
        location: Option<String>,
    },
    /// The key was used for a different request.
    Mismatch,
    /// The first request with this key is still running.
    InProgress,
}

/// A key's row: the request's hash, and the answer once there is one (status, body, location).
type StoredKey = (
    Vec<u8>,
    Option<i32>,
    Option<serde_json::Value>,
    Option<String>,
);

impl Store {
    /// Claims `key` for this request, or tells what became of its earlier use. A claim left by
    /// a request that died is taken over after a minute.
    pub async fn idempotency_begin(
        &self,
        token_id: &str,
        key: &str,
        request_hash: &[u8],
    ) -> Result<Idempotency, StoreError> {
        // A claim released (its request failed) between our insert and our read is claimed
        // again; a key that keeps changing hands that fast is answered as in progress.
        for _ in 0..3 {
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (token_id, key, request_hash) VALUES ($1, $2, $3) \
                 ON CONFLICT (token_id, key) DO UPDATE SET created_at = now() \
                 WHERE idempotency_keys.status IS NULL AND idempotency_keys.created_at < now() - interval '1 minute' \
                 AND idempotency_keys.request_hash = EXCLUDED.request_hash",
            )
            .bind(token_id)
            .bind(key)
            .bind(request_hash)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
            if claimed == 1 {
                return Ok(Idempotency::New);
            }
            let row: Option<StoredKey> =
                sqlx::query_as(
                    "SELECT request_hash, status, response, location FROM idempotency_keys WHERE token_id = $1 AND key = $2",
                )
                .bind(token_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
            let Some(row) = row else {
                continue;
            };
            return Ok(match row {
                (hash, _, _, _) if hash != request_hash => Idempotency::Mismatch,
                (_, Some(status), Some(response), location) => Idempotency::Replay {
                    status: status as u16,
                    response,
                    location,
                },
                _ => Idempotency::InProgress,
            });
        }
        Ok(Idempotency::InProgress)
    }

    pub async fn idempotency_finish(
        &self,
        token_id: &str,
        key: &str,
        status: u16,
        response: &serde_json::Value,
        location: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE idempotency_keys SET status = $3, response = $4, location = $5 WHERE token_id = $1 AND key = $2")
            .bind(token_id)
            .bind(key)
            .bind(i32::from(status))
            .bind(response)
            .bind(location)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Releases a claim whose request failed, so that a retry can do the work.
    pub async fn idempotency_release(&self, token_id: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE token_id = $1 AND key = $2 AND status IS NULL",
        )
        .bind(token_id)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }
}
