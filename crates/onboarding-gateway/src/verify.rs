//! `POST /api/v1/credentials/verify`: the engine as a password authority for a login service
//! (docs/adr/0026). The caller's admin token needs the `verify` scope; the answer is `200` with
//! the account's id, or one `401 invalid_credentials` for a wrong password, an unknown username
//! and an account that is not active alike.
//!
//! - An unknown username costs what a wrong password costs: its password is verified against a
//!   dummy hash made once, at start, at the configured cost ([`Verifier`]).
//! - Every hash runs in `Argon2Hasher`'s bounded blocking pool.
//! - Throttled per client and per username (`throttle.rs`), before any hash work; every
//!   attempt, failed or not, counts against the username's budget.
//! - A correct password whose hash was made at a lower cost than `[password_hashing]` now asks
//!   for is hashed again and its credential replaced (no event: docs/adr/0026).
//! - The password is in no log line and no answer; it leaves this module only into the hasher.

use std::sync::Arc;

use bytes::Bytes;
use onboarding_config::{PasswordHashingSettings, Scope};
use onboarding_domain::password::Password;
use onboarding_domain::value::{UserDomain, Username};
use onboarding_domain::PasswordHasher as _;
use onboarding_store::{ActiveCredential, Argon2Hasher, Credential};
use secrecy::SecretString;
use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use crate::admin::Grant;
use crate::api::{parse_object, Fields};
use crate::error::ApiError;
use crate::throttle::ClientKey;
use crate::{AppState, GatewayError};

/// The hasher the endpoint verifies and rehashes with (the configured cost, the process's bound
/// on hash work), and the dummy hash an unknown user's password is checked against.
pub(crate) struct Verifier {
    hasher: Argon2Hasher,
    dummy: SecretString,
}

impl Verifier {
    /// Makes the dummy hash (one hash at the configured cost) and the work areas of every hash
    /// the process may run at once, when the gateway starts.
    pub(crate) fn new(settings: &PasswordHashingSettings) -> Result<Self, GatewayError> {
        let hasher =
            Argon2Hasher::configured(settings).map_err(|e| GatewayError::Hashing(e.to_string()))?;
        let dummy = hasher
            .dummy()
            .map_err(|e| GatewayError::Hashing(e.to_string()))?;
        hasher.reserve_work_areas();
        Ok(Self { hasher, dummy })
    }
}

/// `POST /api/v1/credentials/verify` with `{"username", "password", "domain"?}`.
pub(crate) async fn verify(
    state: Arc<AppState>,
    grant: Grant,
    client: Option<ClientKey>,
    body: Bytes,
) -> Result<Response, ApiError> {
    grant.require(Scope::Verify)?;
    let mut f = Fields::new(parse_object(&body)?, &["username", "password", "domain"]);
    let username = f.string("username", true);
    let password = f.string("password", true);
    let domain = f.string("domain", false);
    let username = username.and_then(|u| {
        Username::parse(&u)
            .map_err(|e| f.problem("username", e.to_string()))
            .ok()
    });
    let domain = match domain {
        None => Some(UserDomain::primary()),
        Some(d) => UserDomain::parse(&d)
            .map_err(|e| f.problem("domain", e.to_string()))
            .ok(),
    };
    f.finish()?;
    let (Some(username), Some(password), Some(domain)) = (username, password, domain) else {
        return Err(ApiError::Internal("validated fields missing".into()));
    };
    let password = Password::new(&password);
    let key = username.key();
    state
        .throttles
        .verify(client, domain.as_str(), &key)
        .inspect_err(|_| outcome("rate_limited"))?;

    let found = state
        .store
        .credentials()
        .of_active_user(domain.as_str(), &username)
        .await
        .inspect_err(|_| outcome("error"))?;
    let verifier = &state.verifier;
    let credential = found.as_ref().map(|f| &f.credential);
    // The password once more, for a rehash, only when one will be due.
    let rehash_with = credential
        .filter(|c| c.scheme.is_weaker_than(&verifier.hasher.scheme()))
        .map(|_| Password::new(password.expose()));
    let against = match credential {
        Some(c) => c.phc.clone(),
        None => verifier.dummy.clone(),
    };
    let right = verifier
        .hasher
        .verify(password, against)
        .await
        .map_err(|e| {
            outcome("error");
            ApiError::Internal(Box::new(e))
        })?;
    let ActiveCredential {
        credential,
        username,
    } = match found {
        Some(found) if right => found,
        _ => {
            outcome("rejected");
            return Err(ApiError::InvalidCredentials);
        }
    };
    outcome("verified");
    tracing::info!(user_id = %credential.user_id, "password verified");
    if let Some(password) = rehash_with {
        rehash(&state, &credential, password).await;
    }
    Ok(warp::reply::json(&json!({
        "id": credential.user_id,
        "username": username,
        "domain": domain.as_str(),
    }))
    .into_response())
}

/// Counts one verification by its outcome.
fn outcome(outcome: &'static str) {
    metrics::counter!("onboard_credential_verifications_total", "outcome" => outcome).increment(1);
}

/// Hashes a verified password again at the configured cost and replaces its credential, if the
/// credential is still the one it was verified against. A failure leaves the old hash, which
/// still verifies; the sign-in succeeds either way.
async fn rehash(state: &AppState, old: &Credential, password: Password) {
    let new = match state.verifier.hasher.hash(password).await {
        Ok(new) => new,
        Err(e) => {
            tracing::warn!(user_id = %old.user_id, error = %e, "rehash failed; the old hash stays");
            return;
        }
    };
    match state.store.credentials().replace(old, &new).await {
        Ok(true) => {
            metrics::counter!("onboard_password_rehashes_total").increment(1);
            tracing::info!(
                user_id = %old.user_id,
                from = %old.scheme,
                to = %new.scheme(),
                "password rehashed at the configured cost"
            );
        }
        Ok(false) => tracing::info!(
            user_id = %old.user_id,
            "credential changed while it was rehashed; the newer one stays"
        ),
        Err(e) => {
            tracing::warn!(user_id = %old.user_id, error = %e, "rehash not stored; the old hash stays")
        }
    }
}
