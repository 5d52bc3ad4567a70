//! Bulk invitations: a file (CSV `username,email[,domain,locale,time_zone]` or JSON lines) becomes a job
//! with one row per line; a runner applies the rows through [`Store::invite_as`], the one
//! invitation path, and records each row's outcome.
//!
//! Invariants:
//! - A row is applied whole or not at all: it is one invitation (one append transaction), and
//!   its outcome is recorded after that append.
//! - Nobody is invited twice. A row's user id is a UUIDv5 of (job, line): a runner that resumes
//!   a job after a crash finds the rows it already applied (the username is held by that very
//!   id) and records them `created`; a file uploaded again meets the username registry and its
//!   rows are recorded `duplicate`, with the existing user's id.
//! - Jobs survive restarts: the rows are in PostgreSQL before the upload is answered, and every
//!   runner picks up `pending` rows of `running` jobs. Two runners on one job are harmless (both
//!   rules above hold), only wasted work.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use onboarding_config::UserOnboarding;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::text::text_enum;
use crate::{db, Actor, Invitation, InvitationFields, InviteError, Store, StoreError};

/// Namespace of the user ids derived from (job, line).
const BULK_NAMESPACE: Uuid = Uuid::from_u128(0x6f6e_626f_6172_642d_6275_6c6b_2d72_6f77);

text_enum! {
    /// The format of an uploaded file (`bulk_jobs.format`).
    pub enum Format {
        /// `username,email[,domain,locale,time_zone]`, with or without that header line.
        Csv => "csv",
        /// One JSON object per line: `{"username", "email", "domain"?, "locale"?}`.
        Jsonl => "jsonl",
    }
}

text_enum! {
    /// Where a job stands (`bulk_jobs.status`).
    pub enum JobStatus {
        /// Some row is still `pending`.
        Running => "running",
        /// Every row has its outcome.
        Done => "done",
    }
}

text_enum! {
    /// Where a row stands (`bulk_job_rows.status`): `pending` until it is applied, then its
    /// outcome; `invalid` and `duplicate` may be known from the file alone.
    pub enum RowStatus {
        Pending => "pending",
        Created => "created",
        Duplicate => "duplicate",
        Invalid => "invalid",
        Failed => "failed",
    }
}

impl Format {
    /// From a media type (`text/csv`, `application/x-ndjson`, `application/jsonl`, …).
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        let essence = media_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "text/csv" | "application/csv" => Some(Self::Csv),
            "application/x-ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines" => Some(Self::Jsonl),
            _ => None,
        }
    }

    /// From a file name's extension (`.csv`, `.jsonl`, `.ndjson`).
    pub fn from_file_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Some(Self::Csv)
        } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            Some(Self::Jsonl)
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The file as a whole cannot be used (e.g. an unknown CSV column); nothing was recorded.
    #[error("{0}")]
    File(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One row's fields as read from the file (the strings, before validation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowInput {
    pub username: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// IANA time zone (`Europe/Berlin`), for the expiry in the user's mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// A line of the file, ready to be stored: `pending` when valid, else `invalid`/`duplicate`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRow {
    pub line: i32,
    pub input: Option<RowInput>,
    pub status: RowStatus,
    pub reason: Option<String>,
}

impl RowInput {
    /// The parsed, validated invitation of a row, or the reason it is invalid.
    fn validate(&self, rules: &UserOnboarding) -> Result<Invitation, String> {
        InvitationFields {
            username: Some(&self.username),
            email: Some(&self.email),
            domain: self.domain.as_deref(),
            locale: self.locale.as_deref(),
            time_zone: self.time_zone.as_deref(),
            ..Default::default()
        }
        .validate(rules)
        .map_err(|problems| problems.to_string())
    }
}

const CSV_COLUMNS: [&str; 5] = ["username", "email", "domain", "locale", "time_zone"];

/// Reads a whole file into rows: each line is `pending` (valid), `invalid` (with the reason) or
/// `duplicate` (the same username as an earlier line of the file). Fails only for a file that
/// cannot be read as a whole (an unknown CSV column, no rows at all).
pub fn parse(
    format: Format,
    data: &[u8],
    rules: &UserOnboarding,
) -> Result<Vec<NewRow>, BulkError> {
    let rows = match format {
        Format::Csv => parse_csv(data)?,
        Format::Jsonl => parse_jsonl(data),
    };
    if rows.is_empty() {
        return Err(BulkError::File(
            "the file has no rows; send one invitation per line: username,email[,domain,locale,time_zone]"
                .into(),
        ));
    }
    // Validate, and mark later lines with an earlier line's username as duplicates.
    let mut seen: HashMap<(String, String), i32> = HashMap::new();
    Ok(rows
        .into_iter()
        .map(|(line, input)| match input {
            Err(reason) => NewRow {
                line,
                input: None,
                status: RowStatus::Invalid,
                reason: Some(reason),
            },
            Ok(input) => match input.validate(rules) {
                Err(reason) => NewRow {
                    line,
                    input: Some(input),
                    status: RowStatus::Invalid,
                    reason: Some(reason),
                },
                Ok(inv) => {
                    let key = (inv.domain.as_str().to_owned(), inv.username.key());
                    match seen.get(&key) {
                        Some(first) => NewRow {
                            line,
                            reason: Some(format!("the same username as line {first} of this file")),
                            input: Some(input),
                            status: RowStatus::Duplicate,
                        },
                        None => {
                            seen.insert(key, line);
                            NewRow {
                                line,
                                input: Some(input),
                                status: RowStatus::Pending,
                                reason: None,
                            }
                        }
                    }
                }
            },
        })
        .collect())
}

type ReadRow = (i32, Result<RowInput, String>);

fn parse_csv(data: &[u8]) -> Result<Vec<ReadRow>, BulkError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(data);
    let mut columns: Vec<usize> = vec![0, 1, 2, 3, 4];
    let mut out = Vec::new();
    let mut first = true;
    let mut record = csv::StringRecord::new();
    let mut lines = Lines {
        data,
        pos: 0,
        line: 1,
    };
    loop {
        let line = reader.position().line() as i32;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line() as i32).unwrap_or(line.max(1));
                out.push((line, Err(format!("not readable as CSV: {e}"))));
                first = false;
                continue;
            }
        }
        let line = record
            .position()
            .map(|p| lines.at(p.byte()))
            .unwrap_or(line.max(1));
        if record.iter().all(str::is_empty) {
            continue;
        }
        if first {
            first = false;
            if record.get(0).is_some_and(|f| {
                f.trim_start_matches('\u{feff}')
                    .eq_ignore_ascii_case("username")
            }) {
                let mut map = Vec::new();
                for field in record.iter() {
                    let name = field.trim_start_matches('\u{feff}').to_ascii_lowercase();
                    match CSV_COLUMNS.iter().position(|c| *c == name) {
                        Some(i) if !map.contains(&i) => map.push(i),
                        _ => {
                            return Err(BulkError::File(format!(
                                "unknown or repeated CSV column `{}`; the columns are username,email[,domain,locale,time_zone]",
                                field.chars().take(40).collect::<String>()
                            )))
                        }
                    }
                }
                if !(map.contains(&0) && map.contains(&1)) {
                    return Err(BulkError::File(
                        "the CSV header must name the columns username and email".into(),
                    ));
                }
                columns = map;
                continue;
            }
        }
        if record.len() > columns.len() || record.len() < 2 {
            out.push((
                line,
                Err(format!(
                    "expected {} fields (username,email[,domain,locale,time_zone]), found {}",
                    if columns.len() == CSV_COLUMNS.len() {
                        format!("2 to {}", CSV_COLUMNS.len())
                    } else {
                        columns.len().to_string()
                    },
                    record.len()
                )),
            ));
            continue;
        }
        let mut input = RowInput::default();
        for (value, column) in record.iter().zip(&columns) {
            let value = value.to_owned();
            match column {
                0 => input.username = value,
                1 => input.email = value,
                2 => input.domain = Some(value),
                3 => input.locale = Some(value),
                _ => input.time_zone = Some(value),
            }
        }
        out.push((line, Ok(input)));
    }
    Ok(out)
}

/// Line numbers of byte offsets, for offsets that only grow (one pass over the file).
struct Lines<'a> {
    data: &'a [u8],
    pos: usize,
    line: i32,
}

impl Lines<'_> {
    /// The 1-based line number of the first non-blank byte at or after `offset` (the csv crate
    /// reports the position of a record after blank lines at the first of them).
    fn at(&mut self, offset: u64) -> i32 {
        let mut start = (offset as usize).clamp(self.pos, self.data.len());
        while start < self.data.len() && (self.data[start] == b'\n' || self.data[start] == b'\r') {
            start += 1;
        }
        self.line += self.data[self.pos..start]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as i32;
        self.pos = start;
        self.line
    }
}

fn parse_jsonl(data: &[u8]) -> Vec<ReadRow> {
    data.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .map(|(i, l)| {
            let line = i as i32 + 1;
            let parsed = serde_json::from_slice::<RowInput>(l).map_err(|e| {
                format!("not a JSON object with username, email and optionally domain, locale: {e}")
            });
            (line, parsed)
        })
        .collect()
}

/// The SHA-256 of an uploaded file (recorded with the job).
pub fn digest(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

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

    async fn pending_rows(
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

    async fn record_row(
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
    async fn finish_if_done(&self, job_id: Uuid) -> Result<bool, StoreError> {
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

/// What became of one row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    Created(Uuid),
    /// The username exists (the holder's id, when known).
    Duplicate(Option<Uuid>, String),
    Invalid(String),
    Failed(String),
}

impl RowOutcome {
    /// The row's status once this outcome is recorded.
    pub fn status(&self) -> RowStatus {
        match self {
            Self::Created(_) => RowStatus::Created,
            Self::Duplicate(..) => RowStatus::Duplicate,
            Self::Invalid(_) => RowStatus::Invalid,
            Self::Failed(_) => RowStatus::Failed,
        }
    }
}

/// The user id a row of a job invites (stable across restarts of the job).
pub fn row_user_id(job_id: Uuid, line: i32) -> Uuid {
    Uuid::new_v5(&BULK_NAMESPACE, format!("{job_id}/{line}").as_bytes())
}

/// Applies the rows of bulk jobs through [`Store::invite_as`].
#[derive(Clone)]
pub struct BulkRunner {
    pub store: Store,
    /// The configured invitation rules (the code's validity and its bounds).
    pub rules: UserOnboarding,
    /// Rows applied at the same time.
    pub concurrency: usize,
}

impl BulkRunner {
    /// Applies one row. `Err` only for a failure worth retrying later (the store is unavailable);
    /// the row stays `pending` then.
    pub async fn apply(
        &self,
        job_id: Uuid,
        line: i32,
        input: &Value,
        actor: &Actor,
    ) -> Result<RowOutcome, StoreError> {
        let input: RowInput = match serde_json::from_value(input.clone()) {
            Ok(i) => i,
            Err(e) => return Ok(RowOutcome::Invalid(format!("unreadable row: {e}"))),
        };
        let invitation = match input.validate(&self.rules) {
            Ok(i) => i,
            Err(reason) => return Ok(RowOutcome::Invalid(reason)),
        };
        let user_id = row_user_id(job_id, line);
        match self.store.invite_as(user_id, invitation, actor).await {
            Ok(id) => {
                metrics::counter!("onboard_invitations_total").increment(1);
                Ok(RowOutcome::Created(id))
            }
            Err(InviteError::UsernameTaken {
                username,
                domain: d,
                holder,
            }) => {
                if holder == Some(user_id) {
                    // Applied before a restart, but not recorded: it is this row's invitation.
                    Ok(RowOutcome::Created(user_id))
                } else {
                    Ok(RowOutcome::Duplicate(
                        holder,
                        format!("the username `{username}` already exists in domain {d}"),
                    ))
                }
            }
            Err(InviteError::Store(StoreError::Refused(e))) => {
                Ok(RowOutcome::Failed(e.to_string()))
            }
            Err(InviteError::Store(e)) => Err(e),
        }
    }

    /// Applies every pending row of one job, `progress(applied_so_far)` after each row, until
    /// the job is done or `shutdown`. Returns whether the job is done.
    pub async fn run_job(
        &self,
        job_id: Uuid,
        actor: &Actor,
        shutdown: &CancellationToken,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<bool, StoreError> {
        let mut applied = 0u64;
        loop {
            if shutdown.is_cancelled() {
                return Ok(false);
            }
            let rows = self.pending_batch(job_id).await?;
            if rows.is_empty() {
                return self.store.finish_if_done(job_id).await;
            }
            let results: Vec<Result<(), StoreError>> = futures::stream::iter(rows)
                .map(|(line, input)| async move {
                    let outcome = self.apply(job_id, line, &input, actor).await?;
                    metrics::counter!("onboard_bulk_rows_total", "outcome" => outcome.status().as_str())
                        .increment(1);
                    self.store.record_row(job_id, line, &outcome).await
                })
                .buffer_unordered(self.concurrency.max(1))
                .inspect(|r| {
                    if r.is_ok() {
                        applied += 1;
                        progress(applied);
                    }
                })
                .collect()
                .await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                return Err(e);
            }
        }
    }

    async fn pending_batch(&self, job_id: Uuid) -> Result<Vec<(i32, Value)>, StoreError> {
        self.store
            .pending_rows(job_id, (self.concurrency.max(1) * 32) as i64)
            .await
    }

    /// Applies the rows of every running job, oldest first; then waits for `wake` (a new upload)
    /// or 5 s. Resumes the jobs a previous process left unfinished. Runs until `shutdown`.
    pub async fn run(self, wake: std::sync::Arc<tokio::sync::Notify>, shutdown: CancellationToken) {
        tracing::info!(
            concurrency = self.concurrency,
            "bulk invitation runner started"
        );
        loop {
            match self.store.running_bulk_jobs().await {
                Ok(jobs) => {
                    for (job_id, actor_id) in jobs {
                        let actor = Actor::admin(&actor_id)
                            .with_correlation(Some(format!("bulk-job:{job_id}")));
                        match self.run_job(job_id, &actor, &shutdown, &|_| {}).await {
                            Ok(true) => tracing::info!(%job_id, "bulk job done"),
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(%job_id, error = %e, "bulk job paused; will retry")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read bulk jobs; will retry"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        tracing::info!("bulk invitation runner stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::parse`] under the default rules.
    fn parse(format: Format, data: &[u8]) -> Result<Vec<NewRow>, BulkError> {
        super::parse(format, data, &UserOnboarding::default())
    }

    fn statuses(rows: &[NewRow]) -> Vec<(i32, &str)> {
        rows.iter().map(|r| (r.line, r.status.as_str())).collect()
    }

    #[test]
    fn csv_with_header_names_columns_and_reports_each_bad_line() {
        let file = b"username,email,locale\nJane,jane@pickup.example,de\n\nBob,not-an-address\nJANE,jane2@pickup.example\nToo,many@x.example,de,extra\n";
        let rows = parse(Format::Csv, file).unwrap();
        assert_eq!(
            statuses(&rows),
            vec![
                (2, "pending"),
                (4, "invalid"),
                (5, "duplicate"),
                (6, "invalid")
            ]
        );
        assert_eq!(
            rows[0].input.as_ref().unwrap().locale.as_deref(),
            Some("de")
        );
        assert!(rows[1].reason.as_ref().unwrap().starts_with("email: "));
        assert!(rows[2].reason.as_ref().unwrap().contains("line 2"));
    }

    #[test]
    fn csv_without_header_is_positional() {
        let rows = parse(Format::Csv, b"jane,jane@pickup.example,EMPLOYEES,en\n").unwrap();
        assert_eq!(statuses(&rows), vec![(1, "pending")]);
        let input = rows[0].input.as_ref().unwrap();
        assert_eq!(input.domain.as_deref(), Some("EMPLOYEES"));
        // The same name in another domain is no duplicate.
        let rows = parse(
            Format::Csv,
            b"jane,a@pickup.example,EMPLOYEES\njane,b@pickup.example\n",
        )
        .unwrap();
        assert_eq!(statuses(&rows), vec![(1, "pending"), (2, "pending")]);
    }

    #[test]
    fn unknown_csv_column_refuses_the_file() {
        let e = parse(
            Format::Csv,
            b"username,email,password\njane,j@x.example,pw\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`password`"), "{e}");
        assert!(parse(Format::Csv, b"\n\n").is_err());
    }

    #[test]
    fn json_lines_with_unknown_keys_are_invalid_rows() {
        let file = b"{\"username\":\"jane\",\"email\":\"jane@pickup.example\"}\n\n{\"username\":\"bob\",\"email\":\"b@x.example\",\"password\":\"x\"}\nnot json\n";
        let rows = parse(Format::Jsonl, file).unwrap();
        assert_eq!(
            statuses(&rows),
            vec![(1, "pending"), (3, "invalid"), (4, "invalid")]
        );
    }

    #[test]
    fn line_numbers_stay_right_over_a_large_file() {
        let mut csv = String::from("username,email\n");
        for i in 0..20_000 {
            csv.push_str(&format!("u{i},u{i}@pickup.example\n"));
            if i % 1000 == 0 {
                csv.push('\n');
            }
        }
        let rows = parse(Format::Csv, csv.as_bytes()).unwrap();
        assert_eq!(rows.len(), 20_000);
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[1].line, 4);
        assert_eq!(rows[19_999].line, 20_001 + 20);
        assert_eq!(rows[19_999].input.as_ref().unwrap().username, "u19999");
    }

    #[test]
    fn row_ids_are_stable_per_job_and_line() {
        let job = Uuid::now_v7();
        assert_eq!(row_user_id(job, 2), row_user_id(job, 2));
        assert_ne!(row_user_id(job, 2), row_user_id(job, 3));
    }

    #[test]
    fn media_types_and_file_names_choose_the_format() {
        assert_eq!(
            Format::from_media_type("text/csv; charset=utf-8"),
            Some(Format::Csv)
        );
        assert_eq!(
            Format::from_media_type("application/x-ndjson"),
            Some(Format::Jsonl)
        );
        assert_eq!(Format::from_media_type("application/json"), None);
        assert_eq!(Format::from_file_name("Users.CSV"), Some(Format::Csv));
        assert_eq!(Format::from_file_name("users.jsonl"), Some(Format::Jsonl));
    }
}
