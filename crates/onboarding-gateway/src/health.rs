//! Liveness (`/healthz`), readiness (`/readyz`: PostgreSQL and Kafka answer) and the
//! Prometheus metrics (`/metrics`), for the gateway and for processes that run none.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use onboarding_config::KafkaSettings;
use onboarding_kafka::KafkaProbe;
use onboarding_store::Store;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::connections::{self, Limits};
use crate::state::with_state;
use crate::{AppState, GatewayError};

/// What readiness asks besides the store, and the metrics to show.
pub(crate) struct Health {
    kafka: KafkaProbe,
    metrics: Option<PrometheusHandle>,
}

impl Health {
    pub(crate) fn new(
        kafka: &KafkaSettings,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, GatewayError> {
        Ok(Self {
            kafka: KafkaProbe::new(kafka).map_err(|e| GatewayError::Kafka(e.into()))?,
            metrics,
        })
    }

    /// 200 when PostgreSQL and Kafka both answer, else 503; the body says which failed.
    async fn readiness(&self, store: &Store) -> Response {
        let started = Instant::now();
        let (pg, kafka) = tokio::join!(store.ping(), self.kafka.check());
        let pg_ok = pg.is_ok();
        let kafka_ok = kafka.is_ok();
        let body = json!({
            "status": if pg_ok && kafka_ok { "ready" } else { "unavailable" },
            "checks": {
                "postgres": pg.map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
                "kafka": kafka.map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
            },
            "elapsed_ms": started.elapsed().as_millis() as u64,
        });
        let status = if pg_ok && kafka_ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        warp::reply::with_status(warp::reply::json(&body), status).into_response()
    }
}

/// `/healthz`, `/readyz` and `/metrics` of the gateway.
pub(crate) fn routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(|state: Arc<AppState>| async move { state.health.readiness(&state.store).await });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: Arc<AppState>| metrics_text(state.health.metrics.as_ref()));
    healthz().or(readyz).unify().or(metrics).unify().boxed()
}

/// `/healthz`: the process answers.
fn healthz() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response())
}

/// The metrics in Prometheus' text format (empty without a recorder).
fn metrics_text(handle: Option<&PrometheusHandle>) -> Response {
    let text = handle.map(PrometheusHandle::render).unwrap_or_default();
    warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response()
}

/// Serves only `/metrics` and `/healthz` on `addr` until `shutdown`, with the gateway's
/// connection limits: for processes that run no gateway (relay, email worker, scheduler).
pub async fn serve_metrics(
    addr: SocketAddr,
    handle: PrometheusHandle,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })?;
    tracing::info!(%addr, "metrics listening");
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .map(move || metrics_text(Some(&handle)));
    let filter = metrics.or(healthz()).unify().recover(crate::error::recover);
    connections::serve(listener, filter, limits, "metrics", shutdown).await;
    Ok(())
}
