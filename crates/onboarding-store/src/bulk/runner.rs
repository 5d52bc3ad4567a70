//! Applying a job's pending rows, each through [`Store::invite_as`].

use std::num::NonZeroUsize;
use std::time::Duration;

use futures::StreamExt;
use onboarding_config::UserOnboarding;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{row_user_id, RowInput, RowOutcome};
use crate::{Actor, InviteError, Store, StoreError};

/// Applies the rows of bulk jobs through [`Store::invite_as`].
#[derive(Clone)]
pub struct BulkRunner {
    pub store: Store,
    /// The configured invitation rules (the code's validity and its bounds).
    pub rules: UserOnboarding,
    /// Rows applied at the same time.
    pub concurrency: NonZeroUsize,
}

impl BulkRunner {
    /// Applies one row. `Err` only for a failure worth retrying later (the store is unavailable);
    /// the row stays `pending` then. A value PostgreSQL refuses as data (SQLSTATE class 22) fails
    /// the row, since the same row would be refused again.
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
            // The same row would be refused again: it fails, and the job goes on.
            Err(InviteError::Store(StoreError::Unstorable { sqlstate, .. })) => {
                tracing::warn!(%job_id, line, %sqlstate, "the database refused a bulk row's values");
                Ok(RowOutcome::Failed(format!(
                    "the database refused a value of this row (SQLSTATE {sqlstate}); correct the \
                     row's fields and upload it again"
                )))
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
                .buffer_unordered(self.concurrency.get())
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
            .pending_rows(job_id, (self.concurrency.get() * 32) as i64)
            .await
    }

    /// Applies the rows of every running job, oldest first; then waits for `wake` (a new upload)
    /// or 5 s. Resumes the jobs a previous process left unfinished. Runs until `shutdown`.
    pub async fn run(self, wake: std::sync::Arc<tokio::sync::Notify>, shutdown: CancellationToken) {
        tracing::info!(
            concurrency = self.concurrency.get(),
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
