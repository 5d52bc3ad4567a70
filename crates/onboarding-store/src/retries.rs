//! The delayed store of mails waiting for their next attempt (`mail_retries`): invitation mails
//! (keyed by code id) and welcome mails (keyed by user id, migration 0010).
//!
//! A row is the email worker's schedule only; every attempt's outcome is an event on the account.
//! A worker claims a due row by pushing its `next_attempt_at` out by a lease, so several workers
//! never try the same mail at once, and a worker that dies mid-attempt leaves the row to be
//! claimed again when the lease ends.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{db, Store, StoreError};

/// One mail waiting for its next attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MailRetry {
    /// `invitation` or `welcome` (see [`MailRetry::INVITATION`], [`MailRetry::WELCOME`]).
    pub kind: String,
    pub user_id: Uuid,
    /// The mail's key: the code's id for an invitation, the user's id for a welcome mail.
    pub code_id: Uuid,
    /// Attempts made so far.
    pub attempts: i32,
    pub first_failed_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: String,
}

impl MailRetry {
    pub const INVITATION: &'static str = "invitation";
    pub const WELCOME: &'static str = "welcome";
}

impl Store {
    /// Schedules (or reschedules) the next attempt at a code's mail.
    pub async fn schedule_mail_retry(&self, retry: &MailRetry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mail_retries (user_id, code_id, attempts, first_failed_at, next_attempt_at, last_error, kind) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (code_id) DO UPDATE SET \
             attempts = EXCLUDED.attempts, next_attempt_at = EXCLUDED.next_attempt_at, \
             last_error = EXCLUDED.last_error",
        )
        .bind(retry.user_id)
        .bind(retry.code_id)
        .bind(retry.attempts)
        .bind(retry.first_failed_at)
        .bind(retry.next_attempt_at)
        .bind(&retry.last_error)
        .bind(&retry.kind)
        .execute(self.pool())
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Claims the most overdue mail, if any is due: its `next_attempt_at` moves to `lease_until`
    /// so that no other worker takes it meanwhile. Returns the row as it was before the claim.
    pub async fn claim_due_mail_retry(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<MailRetry>, StoreError> {
        sqlx::query_as(
            "WITH due AS (SELECT code_id, next_attempt_at FROM mail_retries WHERE next_attempt_at <= $1 \
                          ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
             UPDATE mail_retries r SET next_attempt_at = $2 FROM due WHERE r.code_id = due.code_id \
             RETURNING r.kind, r.user_id, r.code_id, r.attempts, r.first_failed_at, due.next_attempt_at, r.last_error",
        )
        .bind(now)
        .bind(lease_until)
        .fetch_optional(self.pool())
        .await
        .map_err(db)
    }

    /// Forgets a code's scheduled attempt (sent, given up, or no longer needed).
    pub async fn remove_mail_retry(&self, code_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM mail_retries WHERE code_id = $1")
            .bind(code_id)
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Whether a mail (by its key, see [`MailRetry::code_id`]) waits in the delayed store.
    pub async fn mail_retry_waits(&self, code_id: Uuid) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM mail_retries WHERE code_id = $1)")
            .bind(code_id)
            .fetch_one(self.pool())
            .await
            .map_err(db)
    }

    /// How many mails wait for a next attempt.
    pub async fn mail_retries_waiting(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT count(*) FROM mail_retries")
            .fetch_one(self.pool())
            .await
            .map_err(db)
    }
}
