//! The routes under `/scim2`: each request goes by method and path to its handler, which checks
//! the token's scope and runs it against the store (the one invitation path,
//! `Store::invite_as`, for `POST /Users`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use onboarding_config::Scope;
use onboarding_domain::value::RevokeReason;
use onboarding_domain::{
    Onboarding, OnboardingCommand, OnboardingError, OnboardingState, RevokedBy,
};
use onboarding_store::{Actor, ExecuteError, InviteError, StoreError};
use uuid::Uuid;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::attributes::Selection;
use super::error::ScimError;
use super::filter::Search;
use super::update::Update;
use super::user::{etag, NewUser, UserResource};
use super::{discovery, reply, ListResponse};
use crate::{ApiError, AppState, Grant};

/// Namespace of the user ids derived from a SCIM `externalId` (with the admin token's id).
const SCIM_NAMESPACE: Uuid = Uuid::from_u128(0x6f6e_626f_6172_642d_7363_696d_2d65_7874);

/// One SCIM request, as the route hands it over.
pub struct ScimRequest {
    pub method: Method,
    /// The path after `/scim2/`.
    pub tail: String,
    pub query: HashMap<String, String>,
    /// The `If-Match` header, if sent.
    pub if_match: Option<String>,
    pub body: Bytes,
}

/// Routes one SCIM request (`/scim2/<tail>`) to its handler.
pub async fn handle(
    state: Arc<AppState>,
    grant: Result<Grant, ApiError>,
    request: ScimRequest,
) -> Response {
    route(&state, grant, &request)
        .await
        .unwrap_or_else(Reply::into_response)
}

/// The endpoints under `/scim2` (RFC 7644 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint<'a> {
    Users,
    User(&'a str),
    Search,
    ServiceProviderConfig,
    Schemas,
    Schema(&'a str),
    ResourceTypes,
    ResourceType,
}

impl<'a> Endpoint<'a> {
    /// The endpoint a path names; `None` for a path that names none (answered `404`).
    fn of(segments: &[&'a str]) -> Option<Self> {
        Some(match segments {
            ["Users"] => Self::Users,
            ["Users", ".search"] => Self::Search,
            ["Users", id] => Self::User(id),
            ["ServiceProviderConfig"] => Self::ServiceProviderConfig,
            ["Schemas"] => Self::Schemas,
            ["Schemas", id] => Self::Schema(id),
            ["ResourceTypes"] => Self::ResourceTypes,
            ["ResourceTypes", "User"] => Self::ResourceType,
            _ => return None,
        })
    }

    /// The methods the endpoint takes, as an `Allow` header lists them.
    fn allow(self) -> &'static str {
        match self {
            Self::Users => "GET, POST",
            Self::User(_) => "GET, PUT, PATCH, DELETE",
            Self::Search => "POST",
            _ => "GET",
        }
    }
}

async fn route(
    state: &AppState,
    grant: Result<Grant, ApiError>,
    request: &ScimRequest,
) -> Result<Response, ScimError> {
    let grant = grant?;
    let segments: Vec<&str> = request.tail.split('/').filter(|s| !s.is_empty()).collect();
    // RFC 7644 §3.12: an unknown resource type or path is 404, whatever the method.
    let endpoint = Endpoint::of(&segments).ok_or(ScimError::NoSuchEndpoint)?;
    let (query, body, if_match) = (&request.query, &request.body, request.if_match.as_deref());
    match (request.method.as_str(), endpoint) {
        ("POST", Endpoint::Users) => {
            grant.require(Scope::Invite)?;
            create(state, &grant, body).await
        }
        ("GET", Endpoint::Users) => {
            grant.require(Scope::Read)?;
            search(state, Search::from_query(query)?).await
        }
        ("POST", Endpoint::Search) => {
            grant.require(Scope::Read)?;
            search(state, Search::from_body(body)?).await
        }
        ("GET", Endpoint::User(id)) => {
            grant.require(Scope::Read)?;
            let selection = Selection::parse(
                query.get("attributes").map(String::as_str),
                query.get("excludedAttributes").map(String::as_str),
            )?;
            get(state, id, &selection).await
        }
        ("PUT", Endpoint::User(id)) => {
            grant.require(Scope::Invite)?;
            // Read once before the account, so that a bad body is refused as such.
            Update::from_put(body)?;
            change(state, &grant, id, if_match, |_| Update::from_put(body)).await
        }
        ("PATCH", Endpoint::User(id)) => {
            grant.require(Scope::Invite)?;
            // Read once before the account, so that a bad body is refused as such, also when
            // If-Match no longer holds.
            Update::parse_patch(body)?;
            change(state, &grant, id, if_match, |account| {
                Update::from_patch(body, account)
            })
            .await
        }
        ("DELETE", Endpoint::User(id)) => {
            grant.require(Scope::Revoke)?;
            delete(state, &grant, id, if_match).await
        }
        ("GET", Endpoint::ServiceProviderConfig) => Ok(reply(
            StatusCode::OK,
            &discovery::service_provider_config(&base(state)),
        )),
        ("GET", Endpoint::Schemas) => Ok(reply(
            StatusCode::OK,
            &ListResponse::all(discovery::schemas(&base(state))),
        )),
        ("GET", Endpoint::Schema(id)) => discovery::schema(&base(state), id)
            .map(|s| reply(StatusCode::OK, &s))
            .ok_or(ScimError::SchemaNotFound),
        ("GET", Endpoint::ResourceTypes) => Ok(reply(
            StatusCode::OK,
            &ListResponse::all(vec![discovery::resource_type(&base(state))]),
        )),
        ("GET", Endpoint::ResourceType) => Ok(reply(
            StatusCode::OK,
            &discovery::resource_type(&base(state)),
        )),
        (_, endpoint) => Err(ScimError::MethodNotAllowed {
            method: request.method.clone(),
            path: request.tail.clone(),
            allow: endpoint.allow(),
        }),
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
        .filter(|a| !matches!(a.state, OnboardingState::Revoked | OnboardingState::Erased))
    else {
        return Ok(None);
    };
    Ok(Some(resource_of(state, &account).await?))
}

/// `account` as a User, with its version.
async fn resource_of(
    state: &AppState,
    account: &Onboarding,
) -> Result<(UserResource, i64), ScimError> {
    let user_id = account.user_id.unwrap_or_default();
    let version = state.store.version_of(user_id).await?;
    Ok((
        UserResource::new(&base(state), account, version),
        version.map_or(0, |(v, _)| v),
    ))
}

/// A User as the answer, with its version as the `ETag`, and only the attributes `selection`
/// keeps.
fn user_reply(
    status: StatusCode,
    resource: &UserResource,
    version: i64,
    selection: &Selection,
) -> Response {
    let value = serde_json::to_value(resource).unwrap_or_default();
    let mut r = reply(status, &selection.apply(value));
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        r.headers_mut().insert("etag", v);
    }
    r
}

async fn get(state: &AppState, id: &str, selection: &Selection) -> Result<Response, ScimError> {
    let (resource, version) = load_resource(state, parse_id(id)?)
        .await?
        .ok_or_else(|| ScimError::UserNotFound(id.to_owned()))?;
    Ok(user_reply(StatusCode::OK, &resource, version, selection))
}

async fn search(state: &AppState, search: Search) -> Result<Response, ScimError> {
    let Search {
        filter,
        order,
        start,
        count,
        selection,
    } = search;
    let (total, ids) = state
        .store
        .search_accounts(filter.as_ref(), order, start - 1, count)
        .await?;
    let mut resources = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some((r, _)) = load_resource(state, id).await? {
            resources.push(selection.apply(serde_json::to_value(r).unwrap_or_default()));
        }
    }
    Ok(reply(
        StatusCode::OK,
        &ListResponse::page(resources, total, start),
    ))
}

/// Whether `If-Match` (RFC 7644 §3.14, RFC 9110 §13.1.1) admits the User at `version`: absent
/// or `*` admits any; otherwise one of its entity tags must name that version (weak or strong
/// alike, as SCIM's versions are weak).
fn admits(if_match: Option<&str>, version: i64) -> bool {
    let Some(header) = if_match else {
        return true;
    };
    header.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || tag
                .trim_start_matches("W/")
                .trim_matches('"')
                .parse::<i64>()
                .is_ok_and(|v| v == version)
    })
}

/// `PUT` or `PATCH /Users/{id}`: `read` reads the request against the account as it is, and its
/// commands are appended at once, only if the account has not changed in between (and, with
/// `If-Match`, only at the version the caller read). A change that deprovisions (revokes or
/// disables) needs the token's `revoke` scope too.
async fn change(
    state: &AppState,
    grant: &Grant,
    id: &str,
    if_match: Option<&str>,
    read: impl Fn(&Onboarding) -> Result<Update, ScimError>,
) -> Result<Response, ScimError> {
    let user_id = parse_id(id)?;
    let actor = actor(grant, || format!("scim:update:{user_id}"));
    let validity = state
        .settings
        .identity_mgt
        .user_onboarding
        .ask_password_email_validity;
    // A concurrent change between the read and the append is decided again on the account as
    // it then is; with If-Match it is the caller's to decide.
    let mut attempt = 1;
    loop {
        let (account, version) = state.store.load_at(user_id).await?;
        if account.user_id.is_none()
            || matches!(
                account.state,
                OnboardingState::Revoked | OnboardingState::Erased
            )
        {
            return Err(ScimError::UserNotFound(id.to_owned()));
        }
        if !admits(if_match, version) {
            return Err(ScimError::PreconditionFailed { current: version });
        }
        let update = read(&account)?;
        let commands = update.commands(&account, || state.new_code(validity))?;
        let kinds: Vec<&'static str> = commands.iter().map(command_name).collect();
        if kinds.iter().any(|k| matches!(*k, "revoke" | "disable")) {
            grant.require(Scope::Revoke)?;
        }
        match state
            .store
            .execute_all(user_id, Some(version), commands, &actor)
            .await
        {
            Ok(appended) => {
                if appended > 0 {
                    tracing::info!(%user_id, changes = ?kinds, "user changed through SCIM");
                }
                break;
            }
            Err(ExecuteError::Stale { .. } | ExecuteError::Store(StoreError::Conflict))
                if if_match.is_none() && attempt < 4 =>
            {
                attempt += 1;
            }
            Err(ExecuteError::Stale { current, .. }) => {
                return Err(ScimError::PreconditionFailed { current })
            }
            Err(ExecuteError::Store(e)) => return Err(e.into()),
        }
    }
    // The User as it now is; a deprovisioned invitation is shown once more, revoked.
    let account = state
        .store
        .load(user_id)
        .await?
        .ok_or_else(|| ScimError::UserNotFound(id.to_owned()))?;
    let (resource, version) = resource_of(state, &account).await?;
    Ok(user_reply(
        StatusCode::OK,
        &resource,
        version,
        &Selection::default(),
    ))
}

/// The command's name, for the log.
fn command_name(command: &OnboardingCommand) -> &'static str {
    match command {
        OnboardingCommand::EnableAccount { .. } => "enable",
        OnboardingCommand::ChangeEmail { .. } => "email",
        OnboardingCommand::UpdateClaims { .. } => "claims",
        OnboardingCommand::RevokeInvitation { .. } => "revoke",
        OnboardingCommand::DisableAccount { .. } => "disable",
        _ => "other",
    }
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
    let mut r = user_reply(
        StatusCode::CREATED,
        &resource,
        version,
        &Selection::default(),
    );
    if let Ok(location) = HeaderValue::from_str(resource.location()) {
        r.headers_mut().insert("location", location);
    }
    Ok(r)
}

/// `DELETE /Users/{id}`: an upstream deprovisions a user who has not set a password yet. The
/// invitation is revoked: its links stop working, its username is free again, and the User is
/// gone for SCIM (`404`, as an erased one is). An active or disabled account is refused with `409`: its history stays
/// for audit (`PATCH` with `active: false` disables it). With `If-Match`, only at that version.
async fn delete(
    state: &AppState,
    grant: &Grant,
    id: &str,
    if_match: Option<&str>,
) -> Result<Response, ScimError> {
    let user_id = parse_id(id)?;
    let actor = actor(grant, || format!("scim:delete:{user_id}"));
    let revoke = || OnboardingCommand::RevokeInvitation {
        by: RevokedBy::Admin,
        reason: RevokeReason::parse("deleted through SCIM").ok(),
        now: chrono::Utc::now(),
    };
    let (account, version) = state.store.load_at(user_id).await?;
    if account.user_id.is_none()
        || matches!(
            account.state,
            OnboardingState::Revoked | OnboardingState::Erased
        )
    {
        return Err(ScimError::UserNotFound(id.to_owned()));
    }
    if !admits(if_match, version) {
        return Err(ScimError::PreconditionFailed { current: version });
    }
    let result = match if_match {
        Some(_) => state
            .store
            .execute_all(user_id, Some(version), vec![revoke()], &actor)
            .await
            .map(|_| ()),
        None => state
            .store
            .execute_retrying(user_id, revoke, &actor)
            .await
            .map_err(ExecuteError::from),
    };
    match result {
        Ok(()) => {
            tracing::info!(%user_id, "invitation revoked through SCIM DELETE");
            Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
        }
        Err(ExecuteError::Store(StoreError::Refused(
            OnboardingError::InvitationRevoked | OnboardingError::Erased,
        ))) => Err(ScimError::UserNotFound(id.to_owned())),
        Err(ExecuteError::Store(StoreError::Refused(OnboardingError::AlreadyActive))) => {
            Err(ScimError::ActiveNotDeleted)
        }
        Err(e) => Err(e.into()),
    }
}
