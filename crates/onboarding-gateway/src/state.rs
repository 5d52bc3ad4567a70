//! What every handler reaches: the store, the settings, and the gateway's parts, each built
//! from its own slice of the configuration.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use onboarding_config::Settings;
use onboarding_domain::code::CodeKeyring;
use onboarding_domain::ResendLimits;
use onboarding_store::Store;
use warp::Filter;

use crate::admin::Tokens;
use crate::bulk::BulkWake;
use crate::health::Health;
use crate::i18n::TextsError;
use crate::pages::Pages;
use crate::readiness::Readiness;
use crate::throttle::Throttles;
use crate::verify::Verifier;

/// The gateway's state, shared by every request.
pub struct AppState {
    pub(crate) store: Store,
    pub(crate) settings: Arc<Settings>,
    /// The admin tokens (`gateway.admin_tokens`).
    pub(crate) tokens: Tokens,
    /// The rate limits and who the client is (`gateway.*_rate_limit_per_minute`,
    /// `gateway.trusted_proxies`).
    pub(crate) throttles: Throttles,
    /// The page templates and their texts (`organisation`).
    pub(crate) pages: Pages,
    /// Readiness of the process's roles, and the metrics.
    pub(crate) health: Health,
    /// Wakes the bulk invitation runner when a job was recorded (`bulk`).
    pub(crate) bulk: BulkWake,
    /// Verifies passwords for `POST /api/v1/credentials/verify` (`password_hashing`).
    pub(crate) verifier: Verifier,
}

/// Why the gateway could not be built or could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "gateway.admin_tokens[{0}].sha256 must be 64 hex characters (the SHA-256 of the token)"
    )]
    BadTokenHash(String),
    #[error(
        "cannot bind {addr}: {source}; is another process using the port? change gateway.bind"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("kafka client: {0}")]
    Kafka(#[source] onboarding_kafka::ClientError),
    #[error(transparent)]
    Config(#[from] onboarding_config::ConfigError),
    #[error("page texts: {0}")]
    Texts(#[from] TextsError),
    #[error("password_hashing: {0}")]
    Hashing(String),
}

impl AppState {
    /// The gateway's state; `readiness` answers `/readyz` for every role the process runs.
    pub fn new(
        settings: Arc<Settings>,
        store: Store,
        metrics: Option<PrometheusHandle>,
        readiness: Arc<Readiness>,
    ) -> Result<Self, GatewayError> {
        Ok(Self {
            tokens: Tokens::new(&settings.gateway.admin_tokens)?,
            throttles: Throttles::new(&settings.gateway),
            pages: Pages::new(&settings.organisation)?,
            health: Health::new(readiness, metrics),
            bulk: BulkWake::new(&settings.bulk),
            verifier: Verifier::new(&settings.password_hashing)?,
            store,
            settings,
        })
    }

    /// The runner that applies the rows of bulk invitation jobs, woken by each upload.
    pub fn bulk_runner(&self) -> (onboarding_store::bulk::BulkRunner, Arc<tokio::sync::Notify>) {
        self.bulk
            .runner(&self.store, &self.settings.identity_mgt.user_onboarding)
    }

    /// The keyring that signs codes and page tokens: the store's, the one the aggregate checks
    /// codes with.
    pub(crate) fn keyring(&self) -> &CodeKeyring {
        &self.store.services().keyring
    }

    /// How often a code may be sent again (`identity_mgt.user_onboarding.resend_*`).
    pub(crate) fn resend_limits(&self) -> ResendLimits {
        let rules = &self.settings.identity_mgt.user_onboarding;
        ResendLimits {
            cooldown: chrono::Duration::seconds(rules.resend_cooldown_seconds),
            daily_cap: rules.resend_daily_cap,
        }
    }
}

/// Checks what [`AppState::new`] checks in `settings` (the admin tokens, the page texts),
/// without a store: `onboard config check`.
pub fn check_settings(settings: &Settings) -> Result<(), GatewayError> {
    Tokens::new(&settings.gateway.admin_tokens)?;
    Pages::new(&settings.organisation)?;
    Ok(())
}

/// The gateway's state, for every handler.
pub(crate) fn with_state(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}
