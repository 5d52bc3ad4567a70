//! The routes under `/scim2`: each request goes by method and path to its handler, which checks
//! the token's scope and runs it against the store (the one invitation path,
//! `Store::invite_as`, for `POST /Users`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use onboarding_config::Scope;
use onboarding_domain::value::RevokeReason;
use onboarding_domain::{OnboardingCommand, OnboardingError, OnboardingState, RevokedBy};
use onboarding_store::{Actor, InviteError, StoreError};
use uuid::Uuid;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::error::ScimError;
use super::filter::Search;
use super::user::{etag, parse_user_name, NewUser, UserResource};
use super::{discovery, reply, ListResponse};
use crate::{ApiError, AppState, Grant};

/// Namespace of the user ids derived from a SCIM `externalId` (with the admin token's id).
const SCIM_NAMESPACE: Uuid = Uuid::from_u128(0x6f6e_626f_6172_642d_7363_696d_2d65_7874);

/// Routes one SCIM request (`/scim2/<tail>`) to its handler.
pub async fn handle(
    state: Arc<AppState>,
    grant: Result<Grant, ApiError>,
    method: Method,
    tail: String,
    query: HashMap<String, String>,
    body: Bytes,
) -> Response {
    route(&state, grant, method, tail, &query, &body)
        .await
        .unwrap_or_else(Reply::into_response)
}

async fn route(
    state: &AppState,
    grant: Result<Grant, ApiError>,
    method: Method,
    tail: String,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response, ScimError> {
    let grant = grant?;
    let segments: Vec<&str> = tail.split('/').filter(|s| !s.is_empty()).collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["Users"]) => {
            grant.require(Scope::Invite)?;
            create(state, &grant, body).await
        }
        ("GET", ["Users"]) => {
            grant.require(Scope::Read)?;
            search(state, query).await
        }
        // `/Users/.search` is an endpoint of its own, not a User id: it takes POST only.
        ("POST", ["Users", ".search"]) => Err(ScimError::SearchByPost),
        (_, ["Users", ".search"]) => Err(ScimError::MethodNotAllowed { method, path: tail }),
        ("GET", ["Users", id]) => {
            grant.require(Scope::Read)?;
            get(state, id).await
        }
        ("DELETE", ["Users", id]) => {
            grant.require(Scope::Revoke)?;
            delete(state, &grant, id).await
        }
        ("PUT" | "PATCH", ["Users", _]) => Err(ScimError::UsersAreNotChanged),
        ("GET", ["ServiceProviderConfig"]) => Ok(reply(
            StatusCode::OK,
            &discovery::service_provider_config(&base(state)),
        )),
        ("GET", ["Schemas"]) => Ok(reply(
            StatusCode::OK,
            &ListResponse::all(discovery::schemas(&base(state))),
        )),
        ("GET", ["Schemas", id]) => discovery::schema(&base(state), id)
            .map(|s| reply(StatusCode::OK, &s))
            .ok_or(ScimError::SchemaNotFound),
        ("GET", ["ResourceTypes"]) => Ok(reply(
            StatusCode::OK,
            &ListResponse::all(vec![discovery::resource_type(&base(state))]),
        )),
        ("GET", ["ResourceTypes", "User"]) => Ok(reply(
            StatusCode::OK,
            &discovery::resource_type(&base(state)),
        )),
        (_, [] | ["Users" | "ServiceProviderConfig" | "Schemas" | "ResourceTypes", ..]) => {
            Err(ScimError::MethodNotAllowed { method, path: tail })
        }
        _ => Err(ScimError::NoSuchEndpoint),
    }
}

/// Where the SCIM endpoints are, as callers reach them: `…/scim2`.
fn base(state: &AppState) -> String {
    state.settings.gateway.public_base_url.link("/scim2", &[])
}

/// The admin as the author of events, with one correlation id per SCIM request, so that an
/// auditor can match the history to the provisioning system's log: the caller's
/// `X-Request-Id`, or else `fallback`.
fn actor(grant: &Grant, fallback: impl FnOnce() -> String) -> Actor {
    let correlation = grant.request_id.clone().unwrap_or_else(fallback);
    Actor::admin(&grant.id).with_correlation(Some(correlation))
}

/// A User id from the path; one that is not a UUID names no User.
fn parse_id(id: &str) -> Result<Uuid, ScimError> {
    Uuid::parse_str(id).map_err(|_| ScimError::UserNotFound(id.to_owned()))
}

/// The User's resource and version; `None` for an unknown id or a revoked invitation (for SCIM a
/// revoked invitation is a deleted User).
async fn load_resource(
    state: &AppState,
    user_id: Uuid,
) -> Result<Option<(UserResource, i64)>, ScimError> {
    let Some(account) = state
        .store
        .load(user_id)
        .await?
        .filter(|a| a.state != OnboardingState::Revoked)
    else {
        return Ok(None);
    };
    let version = state.store.version_of(user_id).await?;
    Ok(Some((
        UserResource::new(&base(state), &account, version),
        version.map_or(0, |(v, _)| v),
    )))
}

/// A User as the answer, with its version as the `ETag`.
fn user_reply(status: StatusCode, resource: &UserResource, version: i64) -> Response {
    let mut r = reply(status, resource);
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        r.headers_mut().insert("etag", v);
    }
    r
}

async fn get(state: &AppState, id: &str) -> Result<Response, ScimError> {
    let (resource, version) = load_resource(state, parse_id(id)?)
        .await?
        .ok_or_else(|| ScimError::UserNotFound(id.to_owned()))?;
    Ok(user_reply(StatusCode::OK, &resource, version))
}

async fn search(state: &AppState, query: &HashMap<String, String>) -> Result<Response, ScimError> {
    let Search {
        user_name,
        start,
        count,
    } = Search::parse(query)?;
    let (total, ids) = match user_name {
        Some(name) => {
            let found = match parse_user_name(&name) {
                Ok((domain, username)) => {
                    state
                        .store
                        .user_id_by_username(domain.as_str(), &username.key())
                        .await?
                }
                // A name that cannot exist matches nobody.
                Err(_) => None,
            };
            let ids: Vec<Uuid> = found.into_iter().collect();
            let total = ids.len() as i64;
            let page = ids
                .into_iter()
                .skip((start - 1) as usize)
                .take(count as usize)
                .collect();
            (total, page)
        }
        None => state.store.account_page(start - 1, count).await?,
    };
    let mut resources = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some((r, _)) = load_resource(state, id).await? {
            resources.push(r);
        }
    }
    Ok(reply(
        StatusCode::OK,
        &ListResponse::page(resources, total, start),
    ))
}

async fn create(state: &AppState, grant: &Grant, body: &Bytes) -> Result<Response, ScimError> {
    let rules = &state.settings.identity_mgt.user_onboarding;
    rules.invitations_enabled().map_err(ApiError::from)?;
    let NewUser {
        invitation,
        external_id,
    } = NewUser::parse(body, rules)?;
    // With an externalId, a retried POST (the upstream lost our answer) finds its own user:
    // the id is derived from (token, externalId) and the retry answers 201 with that user.
    let user_id = match &external_id {
        Some(ext) => Uuid::new_v5(&SCIM_NAMESPACE, format!("{}\n{ext}", grant.id).as_bytes()),
        None => Uuid::now_v7(),
    };
    let domain = invitation.domain.as_str().to_owned();
    // Without an X-Request-Id: the channel and, when given, the upstream's own id for the user.
    let actor = actor(grant, || match &external_id {
        Some(ext) => format!("scim:{ext}"),
        None => format!("scim:{}", Uuid::now_v7()),
    });
    match state.store.invite_as(user_id, invitation, &actor).await {
        Ok(_) => {
            metrics::counter!("onboard_invitations_total").increment(1);
            tracing::info!(%user_id, domain = %domain, "user invited through SCIM");
        }
        // A retry of this very request (the holder is the id it derives) is answered as done.
        Err(InviteError::UsernameTaken { holder, .. }) if holder == Some(user_id) => {}
        Err(InviteError::UsernameTaken {
            username, domain, ..
        }) => {
            return Err(match (external_id, state.store.load(user_id).await?) {
                (Some(external_id), Some(_)) => ScimError::ExternalIdTaken {
                    external_id,
                    user_id,
                },
                _ => ScimError::UserNameTaken { username, domain },
            });
        }
        Err(InviteError::Store(e)) => return Err(e.into()),
    }
    let (resource, version) = load_resource(state, user_id)
        .await?
        .ok_or_else(|| ApiError::Internal("the invitation was not stored".into()))?;
    let mut r = user_reply(StatusCode::CREATED, &resource, version);
    if let Ok(location) = HeaderValue::from_str(resource.location()) {
        r.headers_mut().insert("location", location);
    }
    Ok(r)
}

/// `DELETE /Users/{id}`: an upstream deprovisions a user who has not set a password yet. The
/// invitation is revoked: its links stop working, its username is free again, and the User is
/// gone for SCIM (`404`). An active account is refused with `409`: its history stays for audit.
async fn delete(state: &AppState, grant: &Grant, id: &str) -> Result<Response, ScimError> {
    let user_id = parse_id(id)?;
    let actor = actor(grant, || format!("scim:delete:{user_id}"));
    let revoke = || OnboardingCommand::RevokeInvitation {
        by: RevokedBy::Admin,
        reason: RevokeReason::parse("deleted through SCIM").ok(),
        now: chrono::Utc::now(),
    };
    if state.store.load(user_id).await?.is_none() {
        return Err(ScimError::UserNotFound(id.to_owned()));
    }
    match state.store.execute_retrying(user_id, revoke, &actor).await {
        Ok(()) => {
            tracing::info!(%user_id, "invitation revoked through SCIM DELETE");
            Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
        }
        Err(StoreError::Refused(OnboardingError::InvitationRevoked)) => {
            Err(ScimError::UserNotFound(id.to_owned()))
        }
        Err(StoreError::Refused(OnboardingError::AlreadyActive)) => {
            Err(ScimError::ActiveNotDeleted)
        }
        Err(e) => Err(e.into()),
    }
}
