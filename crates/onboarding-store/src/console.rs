//! What the admin console keeps and reads beyond the accounts: its sessions (`admin_sessions`),
//! the overview's figures, the results of `onboard audit verify` (`audit_verifications`) and
//! the latest bulk jobs (migration 0017, docs/adr/0028).

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::bulk::JobStatus;
use crate::{db, Store, StoreError};

/// A console session that is still valid: the admin token that signed in (by id) and when the
/// session ends at the latest.
#[derive(Debug, Clone)]
pub struct AdminSession {
    pub token_id: String,
    pub expires_at: DateTime<Utc>,
}

/// The overview's figures, read at one instant.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Overview {
    /// Invitations per state, a lapsed code counted as `Expired` (as the list shows it).
    pub by_state: Vec<(String, i64)>,
    pub invitations: i64,
    pub active: i64,
    /// The median of activation minus invitation, over active accounts.
    pub median_seconds_to_activate: Option<f64>,
    /// Live codes whose invitation mail has not been attempted yet.
    pub mails_queued: i64,
    /// Invitation and welcome mails waiting for their next attempt (`mail_retries`).
    pub mails_waiting_for_retry: i64,
    /// Latest codes whose invitation mail was given up on.
    pub mails_abandoned: i64,
    /// Events not yet published to Kafka, and the age of the oldest.
    pub outbox_backlog: i64,
    pub outbox_oldest: Option<DateTime<Utc>>,
    /// Events the relay could not map and set aside (`outbox_dead_letter`).
    pub outbox_dead_letters: i64,
}

/// One run of `onboard audit verify`.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct AuditVerification {
    pub ran_at: DateTime<Utc>,
    pub events: i64,
    pub head: Option<String>,
    pub findings: i32,
    pub expected_head_missing: bool,
}

impl AuditVerification {
    /// Whether the run found the log intact.
    pub fn intact(&self) -> bool {
        self.findings == 0 && !self.expected_head_missing
    }
}

/// What `onboard audit verify` found, to be recorded.
#[derive(Debug, Clone)]
pub struct NewAuditVerification {
    pub events: i64,
    pub head: Option<String>,
    pub findings: usize,
    pub expected_head_missing: bool,
}

/// Records one run of `onboard audit verify` (its caller has a maintenance pool, not a store).
pub async fn record_audit_verification(
    pool: &PgPool,
    run: &NewAuditVerification,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_verifications (events, head, findings, expected_head_missing) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(run.events)
    .bind(run.head.as_deref())
    .bind(i32::try_from(run.findings).unwrap_or(i32::MAX))
    .bind(run.expected_head_missing)
    .execute(pool)
    .await
    .map_err(db)?;
    Ok(())
}

/// A bulk job in the console's list of recent jobs.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct RecentJob {
    pub job_id: Uuid,
    pub actor_id: String,
    pub status: JobStatus,
    pub total_rows: i32,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Opens a session for `token_id` under the SHA-256 of the cookie's secret, valid for
    /// `lifetime` and for `idle` after each request; sessions already over are deleted first.
    pub async fn open_admin_session(
        &self,
        id_sha256: &[u8; 32],
        token_id: &str,
        idle: Duration,
        lifetime: Duration,
    ) -> Result<DateTime<Utc>, StoreError> {
        sqlx::query("DELETE FROM admin_sessions WHERE expires_at <= now() OR idle_until <= now()")
            .execute(self.pool())
            .await
            .map_err(db)?;
        let now = Utc::now();
        let expires_at = now + lifetime;
        sqlx::query(
            "INSERT INTO admin_sessions (id_sha256, token_id, created_at, idle_until, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id_sha256[..])
        .bind(token_id)
        .bind(now)
        .bind((now + idle).min(expires_at))
        .bind(expires_at)
        .execute(self.pool())
        .await
        .map_err(db)?;
        Ok(expires_at)
    }

    /// The session under this SHA-256 if it is still valid, its idle deadline moved `idle` on.
    pub async fn admin_session(
        &self,
        id_sha256: &[u8; 32],
        idle: Duration,
    ) -> Result<Option<AdminSession>, StoreError> {
        let row: Option<(String, DateTime<Utc>)> = sqlx::query_as(
            "UPDATE admin_sessions SET idle_until = least(now() + $2, expires_at) \
             WHERE id_sha256 = $1 AND idle_until > now() AND expires_at > now() \
             RETURNING token_id, expires_at",
        )
        .bind(&id_sha256[..])
        .bind(idle)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        Ok(row.map(|(token_id, expires_at)| AdminSession {
            token_id,
            expires_at,
        }))
    }

    /// Ends the session under this SHA-256 (sign-out). Ending one that is gone is no error.
    pub async fn close_admin_session(&self, id_sha256: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM admin_sessions WHERE id_sha256 = $1")
            .bind(&id_sha256[..])
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The overview's figures.
    pub async fn overview(&self) -> Result<Overview, StoreError> {
        let now = Utc::now();
        let by_state: Vec<(String, i64)> = sqlx::query_as(
            "SELECT CASE WHEN state = 'CodeIssued' AND code_expires_at <= $1 THEN 'Expired' \
                         ELSE state END AS shown, count(*) \
             FROM account_states GROUP BY shown ORDER BY shown",
        )
        .bind(now)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        let invitations = by_state.iter().map(|(_, n)| n).sum();
        let active = by_state
            .iter()
            .find(|(s, _)| s == "Active")
            .map_or(0, |(_, n)| *n);
        let (median, queued, abandoned): (Option<f64>, i64, i64) = sqlx::query_as(
            "SELECT percentile_cont(0.5) WITHIN GROUP \
                        (ORDER BY extract(epoch FROM state_since - created_at)) \
                        FILTER (WHERE state = 'Active'), \
                    count(*) FILTER (WHERE state = 'CodeIssued' AND code_expires_at > $1 \
                                     AND delivery = 'queued'), \
                    count(*) FILTER (WHERE delivery = 'abandoned' \
                                     AND state IN ('Invited', 'CodeIssued', 'Expired', 'Locked')) \
             FROM account_states",
        )
        .bind(now)
        .fetch_one(self.pool())
        .await
        .map_err(db)?;
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM mail_retries")
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
        let (backlog, oldest): (i64, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT count(*), min(recorded_at) FROM outbox")
                .fetch_one(self.pool())
                .await
                .map_err(db)?;
        let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_dead_letter")
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
        Ok(Overview {
            by_state,
            invitations,
            active,
            median_seconds_to_activate: median,
            mails_queued: queued,
            mails_waiting_for_retry: waiting,
            mails_abandoned: abandoned,
            outbox_backlog: backlog,
            outbox_oldest: oldest,
            outbox_dead_letters: dead,
        })
    }

    /// The latest run of `onboard audit verify`, or `None` when it never ran on this database.
    pub async fn last_audit_verification(&self) -> Result<Option<AuditVerification>, StoreError> {
        sqlx::query_as(
            "SELECT ran_at, events, head, findings, expected_head_missing \
             FROM audit_verifications ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await
        .map_err(db)
    }

    /// The newest bulk jobs, newest first.
    pub async fn recent_bulk_jobs(&self, limit: i64) -> Result<Vec<RecentJob>, StoreError> {
        sqlx::query_as(
            "SELECT job_id, actor_id, status, total_rows, created_at, finished_at \
             FROM bulk_jobs ORDER BY created_at DESC, job_id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(db)
    }
}
