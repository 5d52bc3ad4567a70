//! `[observability]`: where processes without the gateway serve `/metrics` and `/healthz`.

use std::net::SocketAddr;

use serde::Deserialize;

/// Where processes without the gateway (`relay`, `email-worker`, `scheduler`) serve `/metrics`
/// and `/healthz`. The gateway always serves them on its own address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilitySettings {
    pub metrics_bind: Option<SocketAddr>,
}
