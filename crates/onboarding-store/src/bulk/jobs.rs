//! Jobs and their rows in PostgreSQL (`bulk_jobs`, `bulk_job_rows`): recording a job, showing
//! it, and the runner's reads and writes.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Format, JobStatus, NewRow, RowOutcome, RowStatus};
use crate::{db, Store, StoreError};

/// A job as admins see it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub format: Format,
    pub file_sha256: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub totals: Totals,
    pub rows: Vec<RowView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub rows: i64,
    pub pending: i64,
    pub created: i64,
    pub duplicate: i64,
    pub invalid: i64,
    pub failed: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RowView {
    pub line: i32,
    pub status: RowStatus,
    pub username: Option<String>,
    pub user_id: Option<Uuid>,
    pub reason: Option<String>,
}

impl Store {
    /// Records a job and its rows (one transaction) and returns its id. Rows must be non-empty.
    pub async fn create_bulk_job(
        &self,
        actor_id: &str,
        format: Format,
        file_sha256: &[u8],
        rows: &[NewRow],
    ) -> Result<Uuid, StoreError> {
        let job_id = Uuid::now_v7();
        let pending = rows.iter().any(|r| r.status == RowStatus::Pending);
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(
            "INSERT INTO bulk_jobs (job_id, actor_id, format, file_sha256, total_rows, status, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6 = 'done' THEN now() END)",
        )
        .bind(job_id)
        .bind(actor_id)
        .bind(format)
        .bind(file_sha256)
        .bind(rows.len() as i32)
        .bind(if pending {
            JobStatus::Running
        } else {
            JobStatus::Done
        })
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        for chunk in rows.chunks(5000) {
            let lines: Vec<i32> = chunk.iter().map(|r| r.line).collect();
            let inputs: Vec<Option<Value>> = chunk
                .iter()
                .map(|r| r.input.as_ref().and_then(|i| serde_json::to_value(i).ok()))
                .collect();
            let statuses: Vec<RowStatus> = chunk.iter().map(|r| r.status).collect();
            let reasons: Vec<Option<String>> = chunk.iter().map(|r| r.reason.clone()).collect();
            sqlx::query(
                "INSERT INTO bulk_job_rows (job_id, line, input, status, reason) \
                 SELECT $1, * FROM UNNEST($2::int[], $3::jsonb[], $4::text[], $5::text[])",
            )
            .bind(job_id)
            .bind(&lines)
            .bind(&inputs)
            .bind(&statuses)
            .bind(&reasons)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(job_id)
    }

    /// A job with its totals and every row, or `None` for an unknown id.
    pub async fn bulk_job(&self, job_id: Uuid) -> Result<Option<JobView>, StoreError> {
        type JobRow = (
            JobStatus,
            Format,
            Vec<u8>,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
        );
        let job: Option<JobRow> =
            sqlx::query_as(
                "SELECT status, format, file_sha256, created_at, finished_at FROM bulk_jobs WHERE job_id = $1",
            )
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        let Some((status, format, sha, created_at, finished_at)) = job else {
            return Ok(None);
        };
        let rows: Vec<RowView> = sqlx::query_as(
            "SELECT line, status, input ->> 'username' AS username, user_id, reason \
             FROM bulk_job_rows WHERE job_id = $1 ORDER BY line",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut totals = Totals {
            rows: rows.len() as i64,
            ..Totals::default()
        };
        for r in &rows {
            match r.status {
                RowStatus::Pending => totals.pending += 1,
                RowStatus::Created => totals.created += 1,
                RowStatus::Duplicate => totals.duplicate += 1,
                RowStatus::Invalid => totals.invalid += 1,
                RowStatus::Failed => totals.failed += 1,
            }
        }
        Ok(Some(JobView {
            job_id,
            status,
            format,
            file_sha256: hex::encode(&sha),
            created_at,
            finished_at,
            totals,
            rows,
        }))
    }

    /// Jobs with rows still to apply, oldest first.
    pub async fn running_bulk_jobs(&self) -> Result<Vec<(Uuid, String)>, StoreError> {
        sqlx::query_as(
            "SELECT job_id, actor_id FROM bulk_jobs WHERE status = 'running' ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    pub(super) async fn pending_rows(
        &self,
        job_id: Uuid,
        limit: i64,
    ) -> Result<Vec<(i32, Value)>, StoreError> {
        sqlx::query_as(
            "SELECT line, input FROM bulk_job_rows WHERE job_id = $1 AND status = 'pending' \
             ORDER BY line LIMIT $2",
        )
        .bind(job_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    pub(super) async fn record_row(
        &self,
        job_id: Uuid,
        line: i32,
        outcome: &RowOutcome,
    ) -> Result<(), StoreError> {
        let (user_id, reason) = match outcome {
            RowOutcome::Created(id) => (Some(*id), None),
            RowOutcome::Duplicate(id, why) => (*id, Some(why.as_str())),
            RowOutcome::Invalid(why) | RowOutcome::Failed(why) => (None, Some(why.as_str())),
        };
        sqlx::query(
            "UPDATE bulk_job_rows SET status = $3, user_id = $4, reason = $5 \
             WHERE job_id = $1 AND line = $2 AND status = 'pending'",
        )
        .bind(job_id)
        .bind(line)
        .bind(outcome.status())
        .bind(user_id)
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Marks the job `done` when no row is pending; returns whether it is done.
    pub(super) async fn finish_if_done(&self, job_id: Uuid) -> Result<bool, StoreError> {
        sqlx::query(
            "UPDATE bulk_jobs SET status = 'done', finished_at = now() WHERE job_id = $1 \
             AND status = 'running' AND NOT EXISTS \
             (SELECT 1 FROM bulk_job_rows WHERE job_id = $1 AND status = 'pending')",
        )
        .bind(job_id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let status: Option<JobStatus> =
            sqlx::query_scalar("SELECT status FROM bulk_jobs WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        Ok(status != Some(JobStatus::Running))
    }
}
