//! Admin tokens: who may call the admin API and SCIM, with which scopes, and the one filter
//! that admits a request (and counts it against the token's rate limit).

use std::sync::Arc;

use onboarding_config::{AdminToken, Scope};
use onboarding_store::Actor;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use warp::{Filter, Rejection};

use crate::client::client;
use crate::error::{ApiError, Refusal};
use crate::request_id::request_id;
use crate::state::with_state;
use crate::throttle::{ClientKey, RouteGroup};
use crate::{AppState, GatewayError};

/// The configured admin tokens, each by the SHA-256 of the token.
pub(crate) struct Tokens {
    known: Vec<Known>,
}

struct Known {
    grant: Grant,
    sha256: [u8; 32],
    revoked: bool,
}

impl Tokens {
    /// The tokens of `gateway.admin_tokens`; a hash that is not 64 hex characters is refused.
    pub(crate) fn new(configured: &[AdminToken]) -> Result<Self, GatewayError> {
        let known = configured
            .iter()
            .map(|t| {
                let sha256 = hex::decode(t.sha256.trim())
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| GatewayError::BadTokenHash(t.id.clone()))?;
                Ok(Known {
                    grant: Grant {
                        id: t.id.clone(),
                        scopes: t.scopes.clone(),
                        request_id: None,
                    },
                    sha256,
                    revoked: t.revoked,
                })
            })
            .collect::<Result<Vec<_>, GatewayError>>()?;
        if known.is_empty() {
            tracing::warn!("no admin tokens configured: the admin API will refuse every request");
        }
        Ok(Self { known })
    }

    /// The grant of the admin token presented, if it is one of ours and not revoked.
    pub(crate) fn authorize(&self, header: Option<&str>) -> Result<Grant, ApiError> {
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        self.presented(token)
    }

    /// The grant of a token as presented in the text itself (the console's sign-in form).
    pub(crate) fn presented(&self, token: &str) -> Result<Grant, ApiError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(ApiError::Unauthorized);
        }
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare with every token, in constant time, so timing tells nothing about which matched.
        let mut found = None;
        for known in &self.known {
            if bool::from(known.sha256.ct_eq(&presented)) {
                found = Some(known);
            }
        }
        match found {
            Some(known) if !known.revoked => Ok(known.grant.clone()),
            Some(known) => {
                tracing::warn!(token_id = %known.grant.id, "revoked admin token presented");
                Err(ApiError::Unauthorized)
            }
            None => Err(ApiError::Unauthorized),
        }
    }
}

impl Tokens {
    /// The grant of the configured, unrevoked token with this id: a console session names its
    /// token by id, and its scopes are read here on every request, so a token revoked or
    /// narrowed in the configuration takes effect at the next request.
    pub(crate) fn by_id(&self, id: &str) -> Option<Grant> {
        self.known
            .iter()
            .find(|k| k.grant.id == id && !k.revoked)
            .map(|k| k.grant.clone())
    }
}

/// What an admin token may do, and the request it came with.
#[derive(Debug, Clone)]
pub struct Grant {
    pub id: String,
    scopes: Vec<Scope>,
    /// The caller's `X-Request-Id`, kept as the correlation id of the events the request records.
    pub request_id: Option<String>,
}

impl Grant {
    /// The admin as the author of events: the token's id, and the caller's request id as the
    /// correlation id (without one, each command's events get a fresh one).
    pub fn actor(&self) -> Actor {
        Actor::admin(&self.id).with_correlation(self.request_id.clone())
    }

    /// This grant for a request with this `X-Request-Id`.
    pub(crate) fn with_request_id(self, request_id: Option<String>) -> Self {
        Self { request_id, ..self }
    }

    /// Whether the token has `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    pub fn require(&self, scope: Scope) -> Result<&str, ApiError> {
        if self.scopes.contains(&scope) {
            Ok(&self.id)
        } else {
            Err(ApiError::Forbidden(scope.as_str()))
        }
    }
}

/// The grant of the admin token presented, counted against that token's budget for the routes
/// `group` (a request without a valid token against its client's), with the request's id.
fn admit(
    state: &AppState,
    group: RouteGroup,
    client: Option<ClientKey>,
    authorization: Option<&str>,
    request_id: Result<Option<String>, ApiError>,
) -> Result<Grant, ApiError> {
    let grant = match state.tokens.authorize(authorization) {
        Ok(grant) => grant,
        Err(refusal) => {
            state.throttles.unauthenticated(client, group)?;
            return Err(refusal);
        }
    };
    state.throttles.admin(&grant.id, group)?;
    Ok(Grant {
        request_id: request_id?,
        ..grant
    })
}

/// The state and the grant of the admin token a request presents (`Authorization: Bearer`),
/// with its `X-Request-Id`, for the routes `group`. A request without a usable token, over its
/// budget, or with an `X-Request-Id` that cannot be kept, is refused with that [`ApiError`]
/// (rendered by `error::recover`).
pub(crate) fn admin(
    state: Arc<AppState>,
    group: RouteGroup,
) -> impl Filter<Extract = (Arc<AppState>, Grant), Error = Rejection> + Clone {
    admission(state, group)
        .and_then(
            |state: Arc<AppState>, grant: Result<Grant, ApiError>| async move {
                match grant {
                    Ok(grant) => Ok((state, grant)),
                    Err(refusal) => Err(warp::reject::custom(Refusal(refusal))),
                }
            },
        )
        .untuple_one()
}

/// [`admin`] that hands a refusal on instead of rejecting, for SCIM, which answers in its own
/// error format.
pub(crate) fn admission(
    state: Arc<AppState>,
    group: RouteGroup,
) -> impl Filter<Extract = (Arc<AppState>, Result<Grant, ApiError>), Error = Rejection> + Clone {
    with_state(state.clone())
        .and(client(state))
        .and(warp::header::optional::<String>("authorization"))
        .and(request_id())
        .map(
            move |state: Arc<AppState>, client, authorization: Option<String>, request_id| {
                let grant = admit(&state, group, client, authorization.as_deref(), request_id);
                (state, grant)
            },
        )
        .untuple_one()
}
