//! SCIM 2.0 (RFC 7643/7644) for upstream identity systems, as WSO2 Identity Server provisions a
//! user with `askPassword`: `POST /scim2/Users` with the enterprise extension's
//! `"askPassword": true` invites the user (the one invitation path, `Store::invite_as`), and the
//! user resource shows `active: false` until the user set a password from the mailed link.
//!
//! Supported: `POST /Users`, `GET /Users/{id}`, `GET /Users` with `filter=userName eq "…"`
//! (case-insensitive, as userName is `caseExact: false`), `startIndex`/`count`, and the discovery
//! endpoints. Not supported (answered with a SCIM error): PUT, PATCH, DELETE, other filters,
//! sorting, bulk, and any administrator-chosen `password` (this engine never accepts one).
//! Every answer is `application/scim+json`; every error is a SCIM Error message.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use onboarding_config::UserOnboarding;
use onboarding_domain::value::{UserDomain, Username};
use onboarding_domain::{
    Onboarding, OnboardingCommand, OnboardingError, OnboardingState, RevokedBy,
};
use onboarding_store::{Actor, Invitation, InvitationFields, InviteError, StoreError};
use serde_json::{json, Map, Value};
use uuid::Uuid;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::{ApiError, AppState, Grant};

pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const ONBOARDING: &str = "urn:onboard:params:scim:schemas:extension:onboarding:2.0:User";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const MEDIA_TYPE: &str = "application/scim+json";
/// Namespace of the user ids derived from a SCIM `externalId` (with the admin token's id).
const SCIM_NAMESPACE: Uuid = Uuid::from_u128(0x6f6e_626f_6172_642d_7363_696d_2d65_7874);
const MAX_RESULTS: i64 = 200;

/// A SCIM error message (RFC 7644 §3.12).
#[derive(Debug)]
pub struct ScimError {
    status: StatusCode,
    scim_type: Option<&'static str>,
    detail: String,
}

impl ScimError {
    fn new(status: StatusCode, scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        Self {
            status,
            scim_type,
            detail: detail.into(),
        }
    }

    fn invalid_value(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some("invalidValue"), detail)
    }

    fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            None,
            format!(
                "no User with id `{}`",
                id.chars().take(64).collect::<String>()
            ),
        )
    }
}

impl From<ApiError> for ScimError {
    fn from(e: ApiError) -> Self {
        let (_, status) = e.code_and_status();
        let scim_type = match &e {
            ApiError::UsernameTaken { .. } => Some("uniqueness"),
            ApiError::InvalidFields { .. } => Some("invalidValue"),
            ApiError::MalformedJson(_) => Some("invalidSyntax"),
            _ => None,
        };
        if matches!(e, ApiError::Unavailable(_) | ApiError::Internal(_)) {
            tracing::error!(error = ?e, "SCIM request failed");
        }
        Self::new(status, scim_type, e.to_string())
    }
}

impl From<StoreError> for ScimError {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl Reply for ScimError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "schemas": [ERROR],
            "status": self.status.as_u16().to_string(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            body["scimType"] = json!(t);
        }
        scim_json(self.status, &body)
    }
}

fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut r = warp::reply::with_status(warp::reply::json(body), status).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(MEDIA_TYPE));
    r
}

/// Routes one SCIM request (`/scim2/<tail>`) to its handler.
pub async fn handle(
    state: std::sync::Arc<AppState>,
    grant: Result<Grant, ApiError>,
    method: Method,
    tail: String,
    query: HashMap<String, String>,
    body: Bytes,
) -> Response {
    let result = async {
        let grant = grant?;
        let segments: Vec<&str> = tail.split('/').filter(|s| !s.is_empty()).collect();
        match (method.as_str(), segments.as_slice()) {
            ("POST", ["Users"]) => {
                grant.require("invite")?;
                create(&state, &grant, &body).await
            }
            ("GET", ["Users"]) => {
                grant.require("read")?;
                search(&state, &query).await
            }
            ("GET", ["Users", id]) => {
                grant.require("read")?;
                get(&state, id).await
            }
            ("DELETE", ["Users", id]) => {
                grant.require("revoke")?;
                delete(&state, &grant, id).await
            }
            ("PUT" | "PATCH", ["Users", ..]) => Err(ScimError::new(
                StatusCode::NOT_IMPLEMENTED,
                None,
                "this service creates, reads and deletes Users but does not change them (see \
                 /scim2/ServiceProviderConfig); to send an invitation to another address, DELETE \
                 the User and create it again",
            )),
            ("POST", ["Users", ".search"]) => Err(ScimError::new(
                StatusCode::NOT_IMPLEMENTED,
                None,
                "searching with POST is not supported; use GET /scim2/Users?filter=userName eq \"…\"",
            )),
            ("GET", ["ServiceProviderConfig"]) => Ok(scim_json(
                StatusCode::OK,
                &service_provider_config(&base(&state)),
            )),
            ("GET", ["Schemas"]) => Ok(scim_json(StatusCode::OK, &list(schemas(&base(&state))))),
            ("GET", ["Schemas", id]) => schemas(&base(&state))
                .into_iter()
                .find(|s| s["id"] == *id)
                .map(|s| scim_json(StatusCode::OK, &s))
                .ok_or_else(|| ScimError::new(StatusCode::NOT_FOUND, None, "no such schema")),
            ("GET", ["ResourceTypes"]) => Ok(scim_json(
                StatusCode::OK,
                &list(vec![resource_type(&base(&state))]),
            )),
            ("GET", ["ResourceTypes", "User"]) => {
                Ok(scim_json(StatusCode::OK, &resource_type(&base(&state))))
            }
            (_, [] | ["Users" | "ServiceProviderConfig" | "Schemas" | "ResourceTypes", ..]) => {
                Err(ScimError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    None,
                    format!("{method} is not supported on /scim2/{tail}"),
                ))
            }
            _ => Err(ScimError::new(
                StatusCode::NOT_FOUND,
                None,
                "no such SCIM endpoint; this service has /Users, /ServiceProviderConfig, /Schemas and /ResourceTypes",
            )),
        }
    }
    .await;
    result.unwrap_or_else(Reply::into_response)
}

fn base(state: &AppState) -> String {
    format!(
        "{}/scim2",
        state.settings.gateway.public_base_url.trim_end_matches('/')
    )
}

fn list(resources: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST],
        "totalResults": resources.len(),
        "startIndex": 1,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

/// The SCIM representation of an account.
fn user_resource(
    base: &str,
    account: &Onboarding,
    version: Option<(i64, chrono::DateTime<chrono::Utc>)>,
) -> Value {
    let id = account.user_id.map(|i| i.to_string()).unwrap_or_default();
    let claim = |k: &str| account.claims.get(k).and_then(Value::as_str);
    let mut user = json!({
        "schemas": [USER, ONBOARDING],
        "id": id,
        "userName": account
            .username
            .as_ref()
            .map(|u| scim_user_name(u, account.domain.as_ref())),
        "active": account.state == onboarding_domain::OnboardingState::Active,
        "emails": account.email.as_ref().map(|e| vec![json!({"value": e.as_str(), "type": "work", "primary": true})]),
        "meta": {
            "resourceType": "User",
            "created": account.created_at,
            "lastModified": version.map(|(_, at)| at).or(account.created_at),
            "location": format!("{base}/Users/{id}"),
            "version": version.map(|(v, _)| etag(v)),
        },
        ONBOARDING: {
            "state": account.state.as_str(),
            "codeExpiresAt": account.live_code().map(|c| c.expires_at),
            "emailDelivery": account.delivery.as_ref().and_then(|d| serde_json::to_value(d).ok()).and_then(|d| d.get("status").cloned()),
        },
    });
    if let Some(ext) = claim("external_id") {
        user["externalId"] = json!(ext);
    }
    let mut name = Map::new();
    for (claim_key, scim_key) in [
        ("given_name", "givenName"),
        ("family_name", "familyName"),
        ("name", "formatted"),
    ] {
        if let Some(v) = claim(claim_key) {
            name.insert(scim_key.into(), json!(v));
        }
    }
    if !name.is_empty() {
        user["name"] = Value::Object(name);
    }
    if let Some(d) = claim("display_name") {
        user["displayName"] = json!(d);
    }
    if let Some(l) = &account.locale {
        user["locale"] = json!(l.as_str());
    }
    if let Some(t) = &account.time_zone {
        user["timezone"] = json!(t.as_str());
    }
    strip_nulls(&mut user);
    user
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, x| !x.is_null());
        for x in m.values_mut() {
            strip_nulls(x);
        }
    }
}

fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// WSO2 writes a secondary user store's users as `DOMAIN/name`; PRIMARY users by name alone.
fn scim_user_name(username: &Username, domain: Option<&UserDomain>) -> String {
    match domain {
        Some(d) if d.as_str() != UserDomain::PRIMARY => {
            format!("{}/{}", d.as_str(), username.as_str())
        }
        _ => username.as_str().to_owned(),
    }
}

/// `DOMAIN/name` or `name` (in PRIMARY).
fn parse_user_name(raw: &str) -> Result<(UserDomain, Username), String> {
    let (domain, name) = match raw.split_once('/') {
        Some((d, n)) => (UserDomain::parse(d).map_err(|e| e.0)?, n),
        None => (UserDomain::primary(), raw),
    };
    Ok((domain, Username::parse(name).map_err(|e| e.0)?))
}

/// The User's resource and version; `None` for an unknown id or a revoked invitation (for SCIM a
/// revoked invitation is a deleted User).
async fn load_resource(state: &AppState, user_id: Uuid) -> Result<Option<(Value, i64)>, ScimError> {
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
        user_resource(&base(state), &account, version),
        version.map_or(0, |(v, _)| v),
    )))
}

/// `DELETE /Users/{id}`: an upstream deprovisions a user who has not set a password yet. The
/// invitation is revoked: its links stop working, its username is free again, and the User is
/// gone for SCIM (`404`). An active account is refused with `409`: its history stays for audit.
async fn delete(state: &AppState, grant: &Grant, id: &str) -> Result<Response, ScimError> {
    let user_id = Uuid::parse_str(id).map_err(|_| ScimError::not_found(id))?;
    let correlation = grant
        .request_id
        .clone()
        .unwrap_or_else(|| format!("scim:delete:{user_id}"));
    let actor = Actor::admin(&grant.id).with_correlation(Some(correlation));
    let revoke = || OnboardingCommand::RevokeInvitation {
        by: RevokedBy::Admin,
        reason: Some("deleted through SCIM".into()),
        now: chrono::Utc::now(),
    };
    if state.store.load(user_id).await?.is_none() {
        return Err(ScimError::not_found(id));
    }
    match state.store.execute_retrying(user_id, revoke, &actor).await {
        Ok(()) => {
            tracing::info!(%user_id, "invitation revoked through SCIM DELETE");
            Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
        }
        Err(StoreError::Refused(OnboardingError::InvitationRevoked)) => {
            Err(ScimError::not_found(id))
        }
        Err(StoreError::Refused(OnboardingError::AlreadyActive)) => Err(ScimError::new(
            StatusCode::CONFLICT,
            None,
            "this User has set a password and is active; this service does not delete active \
             accounts, whose history it keeps for audit",
        )),
        Err(e) => Err(e.into()),
    }
}

async fn get(state: &AppState, id: &str) -> Result<Response, ScimError> {
    let user_id = Uuid::parse_str(id).map_err(|_| ScimError::not_found(id))?;
    let (resource, version) = load_resource(state, user_id)
        .await?
        .ok_or_else(|| ScimError::not_found(id))?;
    let mut r = scim_json(StatusCode::OK, &resource);
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        r.headers_mut().insert("etag", v);
    }
    Ok(r)
}

/// `userName eq "…"` → the value; any other filter is `invalidFilter`.
fn parse_filter(filter: &str) -> Result<String, ScimError> {
    let unsupported = || {
        ScimError::new(
            StatusCode::BAD_REQUEST,
            Some("invalidFilter"),
            format!(
                "unsupported filter `{}`; this service supports only: userName eq \"<name>\"",
                filter.chars().take(200).collect::<String>()
            ),
        )
    };
    let f = filter.trim();
    let (attr, rest) = f.split_once(char::is_whitespace).ok_or_else(unsupported)?;
    let (op, value) = rest
        .trim_start()
        .split_once(char::is_whitespace)
        .ok_or_else(unsupported)?;
    let attr = attr
        .strip_prefix(USER)
        .map(|a| a.trim_start_matches(':'))
        .unwrap_or(attr);
    if !attr.eq_ignore_ascii_case("userName") || !op.eq_ignore_ascii_case("eq") {
        return Err(unsupported());
    }
    serde_json::from_str::<String>(value.trim()).map_err(|_| unsupported())
}

fn index_param(
    query: &HashMap<String, String>,
    name: &str,
    default: i64,
) -> Result<i64, ScimError> {
    match query.get(name) {
        None => Ok(default),
        Some(v) => v.trim().parse::<i64>().map_err(|_| {
            ScimError::invalid_value(format!(
                "{name} must be an integer, got `{}`",
                v.chars().take(20).collect::<String>()
            ))
        }),
    }
}

async fn search(state: &AppState, query: &HashMap<String, String>) -> Result<Response, ScimError> {
    for key in query.keys() {
        if !["filter", "startIndex", "count"].contains(&key.as_str()) {
            let detail = match key.as_str() {
                "sortBy" | "sortOrder" => "sorting is not supported".to_owned(),
                "attributes" | "excludedAttributes" => {
                    "attribute selection is not supported; every User is returned whole".to_owned()
                }
                other => format!(
                    "unknown query parameter `{}`; use filter, startIndex, count",
                    other.chars().take(40).collect::<String>()
                ),
            };
            return Err(ScimError::invalid_value(detail));
        }
    }
    // RFC 7644 §3.4.2.4: startIndex below 1 means 1; a negative count means 0.
    let start = index_param(query, "startIndex", 1)?.max(1);
    let count = index_param(query, "count", 100)?.clamp(0, MAX_RESULTS);
    let (total, ids) = match query.get("filter") {
        Some(filter) => {
            let name = parse_filter(filter)?;
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
    Ok(scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }),
    ))
}

/// `true` or WSO2's `"true"`.
fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn optional_string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, ScimError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
        Some(_) => Err(ScimError::invalid_value(format!("{key} must be a string"))),
    }
}

/// Looks a key up case-insensitively (SCIM attribute names are case-insensitive).
fn get_ci<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn lowercase_keys(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

/// The parsed `POST /Users` body.
#[derive(Debug)]
struct NewUser {
    invitation: Invitation,
    external_id: Option<String>,
}

/// SCIM's names for the fields of an invitation, for error details.
fn scim_field(field: &str) -> &str {
    match field {
        "username" | "domain" => "userName",
        "email" => "emails",
        "time_zone" => "timezone",
        other => other,
    }
}

fn parse_new_user(body: &Bytes, rules: &UserOnboarding) -> Result<NewUser, ScimError> {
    let map = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err(ScimError::new(
                StatusCode::BAD_REQUEST,
                Some("invalidSyntax"),
                "the body must be a SCIM User: a JSON object",
            ))
        }
        Err(e) => {
            return Err(ScimError::new(
                StatusCode::BAD_REQUEST,
                Some("invalidSyntax"),
                format!("the body is not valid JSON: {e}"),
            ))
        }
    };
    let schemas: Vec<&str> = get_ci(&map, "schemas")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !schemas.iter().any(|s| s.eq_ignore_ascii_case(USER)) {
        return Err(ScimError::new(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            format!("`schemas` must list {USER}"),
        ));
    }
    if get_ci(&map, "password").is_some_and(|p| !p.is_null()) {
        return Err(ScimError::invalid_value(format!(
            "this service never accepts a password chosen by an administrator: remove `password` and send \
             \"{ENTERPRISE}\": {{\"askPassword\": true}}; the user chooses a password from the mailed link"
        )));
    }
    let enterprise = map
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(ENTERPRISE))
        .and_then(|(_, v)| v.as_object())
        .map(lowercase_keys)
        .unwrap_or_default();
    if !truthy(enterprise.get("askpassword")) {
        return Err(ScimError::invalid_value(format!(
            "this service only creates users who set their own password: send \
             \"{ENTERPRISE}\": {{\"askPassword\": true}} (and list that schema in `schemas`)"
        )));
    }
    let lower = lowercase_keys(&map);
    let user_name = optional_string(&lower, "username")?
        .ok_or_else(|| ScimError::invalid_value("userName is required"))?;
    let (domain, name) = match user_name.split_once('/') {
        Some((domain, name)) => (Some(domain), name),
        None => (None, user_name.as_str()),
    };

    let emails = match lower.get("emails") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_object)
            .map(lowercase_keys)
            .collect(),
        Some(_) => {
            return Err(ScimError::invalid_value(
                "emails must be an array of {\"value\", \"type\", \"primary\"}",
            ))
        }
    };
    let chosen = emails
        .iter()
        .find(|e| truthy(e.get("primary")))
        .or_else(|| {
            emails
                .iter()
                .find(|e| e.get("type").and_then(Value::as_str) == Some("work"))
        })
        .or_else(|| emails.first());
    let address = chosen
        .and_then(|e| e.get("value"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ScimError::invalid_value(
                "emails: at least one address is required (the invitation is mailed to the primary one)",
            )
        })?;
    let locale =
        optional_string(&lower, "locale")?.or(optional_string(&lower, "preferredlanguage")?);
    let time_zone = optional_string(&lower, "timezone")?;
    let external_id = optional_string(&lower, "externalid")?;
    if external_id
        .as_ref()
        .is_some_and(|e| e.chars().count() > 255)
    {
        return Err(ScimError::invalid_value(
            "externalId must be at most 255 characters",
        ));
    }
    let mut claims = BTreeMap::new();
    if let Some(name) = lower
        .get("name")
        .and_then(Value::as_object)
        .map(lowercase_keys)
    {
        let given = optional_string(&name, "givenname")?;
        let family = optional_string(&name, "familyname")?;
        let formatted = optional_string(&name, "formatted")?.or_else(|| {
            let parts: Vec<&str> = [given.as_deref(), family.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        });
        for (k, v) in [
            ("given_name", given),
            ("family_name", family),
            ("name", formatted),
        ] {
            if let Some(v) = v {
                claims.insert(k.to_owned(), json!(v));
            }
        }
    }
    if let Some(d) = optional_string(&lower, "displayname")? {
        claims.insert("display_name".into(), json!(d));
    }
    if let Some(e) = &external_id {
        claims.insert("external_id".into(), json!(e));
    }
    for (k, v) in &claims {
        if v.as_str().is_some_and(|s| s.chars().count() > 255) {
            return Err(ScimError::invalid_value(format!(
                "{k} must be at most 255 characters"
            )));
        }
    }
    let invitation = InvitationFields {
        username: Some(name),
        email: Some(address),
        domain,
        locale: locale.as_deref(),
        time_zone: time_zone.as_deref(),
        code_validity_minutes: None,
        claims,
    }
    .validate(rules)
    .map_err(|problems| {
        let detail: Vec<String> = problems
            .0
            .iter()
            .map(|(field, message)| format!("{}: {message}", scim_field(field)))
            .collect();
        ScimError::invalid_value(detail.join("; "))
    })?;
    Ok(NewUser {
        invitation,
        external_id,
    })
}

async fn create(state: &AppState, grant: &Grant, body: &Bytes) -> Result<Response, ScimError> {
    let token_id = grant.id.as_str();
    state
        .settings
        .identity_mgt
        .user_onboarding
        .invitations_enabled()
        .map_err(ApiError::from)?;
    let user = parse_new_user(body, &state.settings.identity_mgt.user_onboarding)?;
    let external_id = user.external_id.clone();
    // With an externalId, a retried POST (the upstream lost our answer) finds its own user:
    // the id is derived from (token, externalId) and the retry answers 201 with that user.
    let user_id = match &external_id {
        Some(ext) => Uuid::new_v5(&SCIM_NAMESPACE, format!("{token_id}\n{ext}").as_bytes()),
        None => Uuid::now_v7(),
    };
    let invitation = user.invitation;
    let domain = invitation.domain.as_str().to_owned();
    // One correlation id per SCIM request, so an auditor can match the history to the
    // provisioning system's log: the caller's X-Request-Id, or else the channel and, when given,
    // the upstream's own id for the user.
    let correlation = match (&grant.request_id, &external_id) {
        (Some(request_id), _) => request_id.clone(),
        (None, Some(ext)) => format!("scim:{ext}"),
        (None, None) => format!("scim:{}", Uuid::now_v7()),
    };
    let actor = Actor::admin(token_id).with_correlation(Some(correlation));
    match state.store.invite_as(user_id, invitation, &actor).await {
        Ok(_) => {
            metrics::counter!("onboard_invitations_total").increment(1);
            tracing::info!(%user_id, domain = %domain, "user invited through SCIM");
        }
        Err(InviteError::UsernameTaken {
            username,
            domain: d,
            holder,
        }) => {
            // A retry of this very request (the holder is the id it derives) is answered as done.
            if holder != Some(user_id) {
                let detail = match (&external_id, state.store.load(user_id).await?) {
                    // The externalId already created another user (another userName).
                    (Some(ext), Some(_)) => format!(
                        "the externalId `{}` already names the user {user_id}; use a new externalId for a new user",
                        ext.chars().take(64).collect::<String>()
                    ),
                    _ => format!("the userName `{username}` already exists in domain {d}"),
                };
                return Err(ScimError::new(
                    StatusCode::CONFLICT,
                    Some("uniqueness"),
                    detail,
                ));
            }
        }
        Err(InviteError::Store(e)) => return Err(e.into()),
    }
    let (resource, version) = load_resource(state, user_id).await?.ok_or_else(|| {
        ScimError::from(ApiError::Internal("the invitation was not stored".into()))
    })?;
    let mut r = scim_json(StatusCode::CREATED, &resource);
    if let Some(loc) = resource["meta"]["location"]
        .as_str()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        r.headers_mut().insert("location", loc);
    }
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        r.headers_mut().insert("etag", v);
    }
    Ok(r)
}

fn service_provider_config(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://github.com/onboard/onboard/blob/main/docs/api.md#scim-20",
        "patch": {"supported": false},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Admin token",
            "description": "Authorization: Bearer <admin token>, the same tokens and scopes as /api/v1 (invite to create, read to read)",
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base}/ServiceProviderConfig"),
        },
    })
}

fn resource_type(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "description": "A user invited to set a password",
        "schema": USER,
        "schemaExtensions": [
            {"schema": ENTERPRISE, "required": false},
            {"schema": ONBOARDING, "required": false},
        ],
        "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")},
    })
}

fn attr(name: &str, kind: &str, description: &str, mutability: &str, returned: &str) -> Value {
    json!({
        "name": name,
        "type": kind,
        "multiValued": false,
        "description": description,
        "required": false,
        "caseExact": false,
        "mutability": mutability,
        "returned": returned,
        "uniqueness": "none",
    })
}

fn schemas(base: &str) -> Vec<Value> {
    let mut user_name = attr(
        "userName",
        "string",
        "Unique name of the user in its domain; `DOMAIN/name` for a domain other than PRIMARY",
        "readWrite",
        "always",
    );
    user_name["required"] = json!(true);
    user_name["uniqueness"] = json!("server");
    let mut name = attr("name", "complex", "The user's name", "readWrite", "default");
    name["subAttributes"] = json!([
        attr(
            "formatted",
            "string",
            "The full name",
            "readWrite",
            "default"
        ),
        attr(
            "familyName",
            "string",
            "Family name",
            "readWrite",
            "default"
        ),
        attr("givenName", "string", "Given name", "readWrite", "default"),
    ]);
    let mut emails = attr(
        "emails",
        "complex",
        "Email addresses; the invitation goes to the primary one",
        "readWrite",
        "default",
    );
    emails["multiValued"] = json!(true);
    emails["subAttributes"] = json!([
        attr("value", "string", "The address", "readWrite", "default"),
        attr(
            "type",
            "string",
            "work, home or other",
            "readWrite",
            "default"
        ),
        attr(
            "primary",
            "boolean",
            "The address the invitation is mailed to",
            "readWrite",
            "default"
        ),
    ]);
    let user = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER,
        "name": "User",
        "description": "User account",
        "attributes": [
            user_name,
            name,
            attr("displayName", "string", "Name shown to others", "readWrite", "default"),
            emails,
            attr("locale", "string", "Language of the user's mails, e.g. en or de-AT", "readWrite", "default"),
            attr("timezone", "string", "IANA time zone, e.g. Europe/Berlin; the mail states the link's expiry in it", "readWrite", "default"),
            attr("active", "boolean", "false until the user set a password from the mailed link", "readOnly", "default"),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{USER}")},
    });
    let mut ask = attr(
        "askPassword",
        "boolean",
        "Must be true: the user is mailed a link to choose a password",
        "writeOnly",
        "never",
    );
    ask["required"] = json!(false);
    let enterprise = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": ENTERPRISE,
        "name": "EnterpriseUser",
        "description": "Enterprise User (with WSO2's askPassword)",
        "attributes": [ask],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{ENTERPRISE}")},
    });
    let onboarding = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": ONBOARDING,
        "name": "Onboarding",
        "description": "Where the user's invitation stands",
        "attributes": [
            attr("state", "string", "Invited, CodeIssued, Expired, Locked, Revoked, PasswordSet or Active", "readOnly", "default"),
            attr("codeExpiresAt", "dateTime", "When the mailed link expires", "readOnly", "default"),
            attr("emailDelivery", "string", "The invitation mail: queued, sent or failed", "readOnly", "default"),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{ONBOARDING}")},
    });
    vec![user, enterprise, onboarding]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_user_name_eq_filters_are_understood() {
        assert_eq!(parse_filter(r#"userName eq "Jane""#).unwrap(), "Jane");
        assert_eq!(parse_filter(r#"USERNAME EQ "a \"b\"""#).unwrap(), "a \"b\"");
        assert_eq!(
            parse_filter(&format!(r#"{USER}:userName eq "x""#)).unwrap(),
            "x"
        );
        for bad in [
            r#"userName co "J""#,
            r#"emails eq "x""#,
            "userName eq Jane",
            "",
            "userName",
        ] {
            let e = parse_filter(bad).unwrap_err();
            assert_eq!(e.scim_type, Some("invalidFilter"), "{bad}");
        }
    }

    fn body(v: Value) -> Bytes {
        Bytes::from(v.to_string())
    }

    #[test]
    fn wso2s_ask_password_request_is_understood() {
        let user = parse_new_user(&body(json!({
            "schemas": [USER, ENTERPRISE],
            "name": {"familyName": "Doe", "givenName": "Jane"},
            "userName": "EMPLOYEES/Jane",
            "emails": [{"type": "home", "value": "jane@home.example"}, {"primary": true, "value": "jane@pickup.example", "type": "work"}],
            ENTERPRISE: {"askPassword": "true"},
        })), &UserOnboarding::default())
        .unwrap();
        let invitation = user.invitation;
        assert_eq!(invitation.domain.as_str(), "EMPLOYEES");
        assert_eq!(invitation.username.as_str(), "Jane");
        assert_eq!(invitation.email.as_str(), "jane@pickup.example");
        assert_eq!(invitation.claims["name"], "Jane Doe");
    }

    #[test]
    fn a_password_or_no_ask_password_is_refused_clearly() {
        let e = parse_new_user(
            &body(json!({
                "schemas": [USER], "userName": "jane", "password": "Secret123!",
                "emails": [{"value": "jane@pickup.example"}],
            })),
            &UserOnboarding::default(),
        )
        .unwrap_err();
        assert_eq!(e.scim_type, Some("invalidValue"));
        assert!(
            e.detail.contains("never accepts a password"),
            "{}",
            e.detail
        );
        assert!(!e.detail.contains("Secret123"));
        let e = parse_new_user(
            &body(json!({
                "schemas": [USER], "userName": "jane", "emails": [{"value": "jane@pickup.example"}],
            })),
            &UserOnboarding::default(),
        )
        .unwrap_err();
        assert!(e.detail.contains("askPassword"), "{}", e.detail);
        let e = parse_new_user(&body(json!({
            "schemas": [USER, ENTERPRISE], "userName": "jane", ENTERPRISE: {"askPassword": true},
        })), &UserOnboarding::default())
        .unwrap_err();
        assert!(e.detail.starts_with("emails"), "{}", e.detail);
    }
}
