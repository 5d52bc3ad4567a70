//! The delayed store of mails waiting for their next attempt (`mail_retries`): invitation mails
//! (keyed by code id) and welcome mails (keyed by user id, migration 0010).
//!
//! A row is the email worker's schedule only; every attempt's outcome is an event on the account.
//! A worker claims a due row from a PostgreSQL session of its own ([`MailClaimer`]) by pushing its
//! `next_attempt_at` out by a lease and recording the session (`claimed_by`, migration 0019), so
//! several workers never try the same mail at once. A worker that dies mid-attempt ends its
//! session: another worker takes the mail over once the claim is older than a grace, without
//! waiting for the lease; a live worker's session holds the claim however long its attempt takes
//! (docs/adr/0034).

use chrono::{DateTime, Utc};
use onboarding_domain::code::CodeId;
use uuid::Uuid;

use sqlx::{Connection, PgConnection};

use crate::text::text_enum;
use crate::{db, Store, StoreError};

/// Which mail a row schedules; its key (the `code_id` column) follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetriedMail {
    /// The invitation mail of one code, keyed by the code's id.
    Invitation(CodeId),
    /// A user's welcome mail, keyed by the user's id (a user has one welcome mail at most).
    Welcome(Uuid),
}

text_enum! {
    /// `mail_retries.kind`.
    enum Kind {
        Invitation => "invitation",
        Welcome => "welcome",
    }
}

impl RetriedMail {
    /// The row's key: the code's id for an invitation, the user's id for a welcome mail.
    pub fn key(self) -> Uuid {
        match self {
            Self::Invitation(code_id) => code_id.as_uuid(),
            Self::Welcome(user_id) => user_id,
        }
    }

    /// `invitation` or `welcome`: the row's `kind`, and the `kind` label of the mail metrics.
    pub fn kind(self) -> &'static str {
        self.kind_column().as_str()
    }

    fn kind_column(self) -> Kind {
        match self {
            Self::Invitation(_) => Kind::Invitation,
            Self::Welcome(_) => Kind::Welcome,
        }
    }
}

/// One mail waiting for its next attempt.
#[derive(Debug, Clone)]
pub struct MailRetry {
    pub mail: RetriedMail,
    pub user_id: Uuid,
    /// Attempts made so far.
    pub attempts: i32,
    pub first_failed_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: String,
}

/// A `mail_retries` row as stored.
#[derive(sqlx::FromRow)]
struct Row {
    kind: Kind,
    user_id: Uuid,
    code_id: Uuid,
    attempts: i32,
    first_failed_at: DateTime<Utc>,
    next_attempt_at: DateTime<Utc>,
    last_error: String,
}

impl From<Row> for MailRetry {
    fn from(row: Row) -> Self {
        Self {
            mail: match row.kind {
                Kind::Invitation => {
                    RetriedMail::Invitation(CodeId::from_random_bytes(*row.code_id.as_bytes()))
                }
                Kind::Welcome => RetriedMail::Welcome(row.code_id),
            },
            user_id: row.user_id,
            attempts: row.attempts,
            first_failed_at: row.first_failed_at,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
        }
    }
}

impl Store {
    /// Schedules (or reschedules) the next attempt at a mail.
    pub async fn schedule_mail_retry(&self, retry: &MailRetry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mail_retries (user_id, code_id, attempts, first_failed_at, next_attempt_at, last_error, kind) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (code_id) DO UPDATE SET \
             attempts = EXCLUDED.attempts, next_attempt_at = EXCLUDED.next_attempt_at, \
             last_error = EXCLUDED.last_error, claimed_by = NULL, claimed_at = NULL",
        )
        .bind(retry.user_id)
        .bind(retry.mail.key())
        .bind(retry.attempts)
        .bind(retry.first_failed_at)
        .bind(retry.next_attempt_at)
        .bind(&retry.last_error)
        .bind(retry.mail.kind_column())
        .execute(self.pool())
        .await
        .map_err(db)?;
        Ok(())
    }

    /// A session of its own to claim mails from: the claims it makes last while it does.
    pub async fn mail_claimer(&self) -> Result<MailClaimer, StoreError> {
        let options = self.pool().connect_options();
        let conn = PgConnection::connect_with(&options).await.map_err(db)?;
        Ok(MailClaimer { conn })
    }

    /// Forgets a mail's scheduled attempt (sent, given up, or no longer needed).
    pub async fn remove_mail_retry(&self, mail: RetriedMail) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM mail_retries WHERE code_id = $1")
            .bind(mail.key())
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Whether a mail waits in the delayed store.
    pub async fn mail_retry_waits(&self, mail: RetriedMail) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM mail_retries WHERE code_id = $1)")
            .bind(mail.key())
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

/// A row as claimed, and whether it was taken over from a worker that ended.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    row: Row,
    taken_over: bool,
}

/// A PostgreSQL session of the worker's own, from which it claims mails (see the module's
/// documentation). Dropped, or broken, it frees its claims for takeover.
pub struct MailClaimer {
    conn: PgConnection,
}

impl MailClaimer {
    /// Claims the most overdue mail, if any is due, or a mail whose claim is older than
    /// `taken_over_before` while the session that claimed it has ended (a worker that died):
    /// its `next_attempt_at` moves to `lease_until` and the claim records this session. Returns
    /// the row as it was before the claim.
    pub async fn claim(
        &mut self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        taken_over_before: DateTime<Utc>,
    ) -> Result<Option<MailRetry>, StoreError> {
        let row: Option<ClaimedRow> = sqlx::query_as(
            "WITH due AS (SELECT m.code_id, m.next_attempt_at, m.claimed_by FROM mail_retries m \
                          WHERE m.next_attempt_at <= $1 \
                             OR (m.claimed_by IS NOT NULL AND m.claimed_at <= $3 \
                                 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.claimed_by)) \
                          ORDER BY m.next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
             UPDATE mail_retries r SET next_attempt_at = $2, claimed_by = pg_backend_pid(), claimed_at = $1 \
             FROM due WHERE r.code_id = due.code_id \
             RETURNING r.kind, r.user_id, r.code_id, r.attempts, r.first_failed_at, due.next_attempt_at, r.last_error, \
                       (due.next_attempt_at > $1 AND due.claimed_by IS NOT NULL) AS taken_over",
        )
        .bind(now)
        .bind(lease_until)
        .bind(taken_over_before)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(db)?;
        Ok(row.map(|ClaimedRow { row, taken_over }| {
            if taken_over {
                tracing::warn!(user_id = %row.user_id, "took over a mail whose worker ended during its attempt (its PostgreSQL session is gone)");
            }
            MailRetry::from(row)
        }))
    }
}
