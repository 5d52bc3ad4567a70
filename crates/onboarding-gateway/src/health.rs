//! Liveness (`/healthz`), readiness (`/readyz`: can each role of the process do its job, see
//! `readiness.rs`) and the Prometheus metrics (`/metrics`), for the gateway and for processes
//! that run none; the gateway also serves its OpenAPI document (`openapi.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::connections::{self, Limits};
use crate::endpoints::{self, at};
use crate::readiness::Readiness;
use crate::state::with_state;
use crate::{AppState, GatewayError};

/// What readiness checks for the process's roles, and the metrics to show.
pub(crate) struct Health {
    readiness: Arc<Readiness>,
    metrics: Option<PrometheusHandle>,
}

impl Health {
    pub(crate) fn new(readiness: Arc<Readiness>, metrics: Option<PrometheusHandle>) -> Self {
        Self { readiness, metrics }
    }

    /// The process's metrics in Prometheus' text format (`None` without a recorder).
    pub(crate) fn metrics_text(&self) -> Option<String> {
        self.metrics.as_ref().map(PrometheusHandle::render)
    }
}

/// `/healthz`, `/readyz`, `/metrics` and `/api/v1/openapi.json` of the gateway.
pub(crate) fn routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let readyz = at(&endpoints::READYZ).and(with_state(state.clone())).then(
        |state: Arc<AppState>| async move { state.health.readiness.check().await.into_response() },
    );
    let metrics = at(&endpoints::METRICS)
        .and(with_state(state))
        .map(|state: Arc<AppState>| metrics_text(state.health.metrics.as_ref()));
    healthz()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(crate::openapi::route())
        .unify()
        .boxed()
}

/// `/healthz`: the process answers.
fn healthz() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    at(&endpoints::HEALTHZ).map(|| warp::reply::json(&json!({"status": "ok"})).into_response())
}

/// The metrics in Prometheus' text format (empty without a recorder).
fn metrics_text(handle: Option<&PrometheusHandle>) -> Response {
    let text = handle.map(PrometheusHandle::render).unwrap_or_default();
    warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response()
}

/// Serves only `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`, with the
/// gateway's connection limits: for processes that run no gateway (relay, email worker,
/// scheduler, intake).
pub async fn serve_metrics(
    addr: SocketAddr,
    handle: PrometheusHandle,
    limits: Limits,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })?;
    tracing::info!(%addr, "metrics listening");
    let metrics = at(&endpoints::METRICS).map(move || metrics_text(Some(&handle)));
    let readyz = at(&endpoints::READYZ).then(move || {
        let readiness = readiness.clone();
        async move { readiness.check().await.into_response() }
    });
    let filter = metrics
        .or(healthz())
        .unify()
        .or(readyz)
        .unify()
        .recover(crate::error::recover);
    connections::serve(listener, filter, limits, "metrics", shutdown).await;
    Ok(())
}
