//! Bulk invitations over HTTP: `POST /api/v1/bulk-invites` records a job from a CSV or JSON-lines
//! file and answers 202 at once; the runner (`onboarding_store::bulk::BulkRunner`, in the gateway
//! process) applies its rows; `GET /api/v1/bulk-invites/{job_id}` shows the totals and each row.

use std::sync::Arc;

use bytes::Bytes;
use onboarding_config::Scope;
use onboarding_store::bulk::{self, BulkError, Format};
use serde_json::json;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use onboarding_config::{BulkSettings, UserOnboarding};
use onboarding_store::Store;
use tokio::sync::Notify;

use crate::admin::Grant;
use crate::{ApiError, AppState};

/// The bulk invitation runner's wake-up: each recorded job rings it, so rows are applied at
/// once rather than at the runner's next look.
pub(crate) struct BulkWake {
    wake: Arc<Notify>,
    /// Rows applied at the same time (`bulk.concurrency`).
    concurrency: std::num::NonZeroUsize,
}

impl BulkWake {
    pub(crate) fn new(bulk: &BulkSettings) -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            concurrency: bulk.concurrency,
        }
    }

    /// The runner that applies the rows of bulk jobs, and the wake-up it waits on.
    pub(crate) fn runner(
        &self,
        store: &Store,
        rules: &UserOnboarding,
    ) -> (bulk::BulkRunner, Arc<Notify>) {
        (
            bulk::BulkRunner {
                store: store.clone(),
                rules: rules.clone(),
                concurrency: self.concurrency,
            },
            self.wake.clone(),
        )
    }

    /// Wakes the runner: a job was recorded.
    pub(crate) fn ring(&self) {
        self.wake.notify_one();
    }
}

pub async fn upload(
    state: Arc<AppState>,
    grant: Grant,
    content_type: Option<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token_id = grant.require(Scope::Invite)?;
    state
        .settings
        .identity_mgt
        .user_onboarding
        .invitations_enabled()?;
    let format = content_type
        .as_deref()
        .and_then(Format::from_media_type)
        .ok_or(ApiError::UnsupportedFile)?;
    let rows =
        bulk::parse(format, &body, &state.settings.identity_mgt.user_onboarding).map_err(|e| {
            match e {
                BulkError::File(m) => ApiError::field("file", m),
                BulkError::Store(e) => e.into(),
            }
        })?;
    let job_id = state
        .store
        .create_bulk_job(token_id, format, &bulk::digest(&body), &rows)
        .await?;
    state.bulk.ring();
    tracing::info!(%job_id, rows = rows.len(), format = format.as_str(), "bulk invitation job recorded");
    let location = format!("/api/v1/bulk-invites/{job_id}");
    let mut r = warp::reply::with_status(
        warp::reply::json(&json!({
            "job_id": job_id,
            "rows": rows.len(),
            "location": location,
        })),
        StatusCode::ACCEPTED,
    )
    .into_response();
    if let Ok(v) = warp::http::HeaderValue::from_str(&location) {
        r.headers_mut().insert("location", v);
    }
    Ok(r)
}

pub async fn show(state: Arc<AppState>, grant: Grant, id: String) -> Result<Response, ApiError> {
    grant.require(Scope::Read)?;
    let not_found = || ApiError::JobNotFound(id.chars().take(64).collect());
    let job_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let job = state.store.bulk_job(job_id).await?.ok_or_else(not_found)?;
    Ok(warp::reply::json(&job).into_response())
}
