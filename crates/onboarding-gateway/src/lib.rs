//! The HTTP gateway (warp): the admin API, the password page behind the link, and the
//! health, readiness and metrics endpoints.
//!
//! Architecture invariants:
//! - Handlers turn wire input into parsed domain types and run commands through
//!   `onboarding_store::Store`; the gateway holds no state of its own.
//! - `GET` and `HEAD` never change state.
//! - Failures map to HTTP status codes in one place (`error.rs`); every refusal is a JSON
//!   `{"error", "message"}` (API) or a page that says what to do (browser).
//! - Admin tokens are compared by SHA-256, in constant time; no secret is ever logged.
//!
//! Where things are: `state.rs` (the [`AppState`] and its parts), `endpoints.rs` (the route
//! table: every endpoint's methods and path), `routes.rs` (every route, in groups, built on that
//! table), `openapi.rs` (the OpenAPI document, served, and the test that keeps it and the routes
//! equal), `admin.rs` (admin tokens and the one filter that admits a request), `api.rs`,
//! `bulk.rs` and `scim.rs` (the admin endpoints), `pages.rs` and `i18n.rs` (the pages behind the
//! links), `client.rs` and `throttle.rs` (who the client is, and its limits), `request_id.rs`,
//! `body.rs` (bodies up to a limit), `health.rs` (health, readiness, metrics), `readiness.rs`
//! (what each role needs), `error.rs`, and `connections.rs` (how a listener serves its
//! connections: timeouts, a cap, a shutdown deadline).
#![forbid(unsafe_code)]

mod admin;
mod api;
mod body;
mod bulk;
mod client;
mod connections;
mod console;
mod endpoints;
mod error;
mod health;
mod i18n;
mod openapi;
mod pages;
mod readiness;
mod request_id;
mod routes;
mod scim;
mod state;
mod throttle;
mod verify;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use admin::Grant;
pub use api::{user_view, TIME_TO_ACTIVATE, TIME_TO_ACTIVATE_BUCKETS};
pub use connections::Limits;
pub use error::ApiError;
pub use health::serve_metrics;
pub use readiness::{Dependency, DirectoryCheck, Readiness, Role};
pub use routes::routes;
pub use state::{check_settings, AppState, GatewayError};

/// Binds the gateway and serves until `shutdown`. Returns the bound address through `bound`.
pub async fn serve(
    state: Arc<AppState>,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), GatewayError> {
    let addr = state.settings.gateway.bind;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| GatewayError::Bind { addr, source })?;
    tracing::info!(addr = %local, "gateway listening");
    if state
        .settings
        .identity_mgt
        .user_onboarding
        .max_failed_attempts
        .is_some()
    {
        tracing::warn!(
            "identity_mgt.user_onboarding.max_failed_attempts is ignored: a wrong code no longer \
             disables the link (docs/adr/0021); remove the key"
        );
    }
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    // The per-client limiters keep one entry per address seen: forget idle ones.
    let pruned = state.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {
                    pruned.throttles.forget_idle();
                }
            }
        }
    });
    let limits = Limits::of(&state.settings.gateway);
    connections::serve(listener, routes(state), limits, "gateway", shutdown).await;
    tracing::info!("gateway stopped");
    Ok(())
}
