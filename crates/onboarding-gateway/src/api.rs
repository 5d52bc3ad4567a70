//! The JSON API: admin endpoints and password submissions.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use onboarding_config::Scope;
use onboarding_domain::code::PresentedCode;
use onboarding_domain::password::Password;
use onboarding_domain::value::{
    EmailAddress, Locale, RevokeReason, TimeZone, UserDomain, Username,
};
use onboarding_domain::{
    NewCode, Onboarding, OnboardingCommand, OnboardingError, OnboardingState, RevokedBy,
};
use onboarding_store::{
    AccountFilter, Actor, Idempotency, InvitationFields, InviteError, StoreError,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::admin::Grant;
use crate::error::{ApiError, NotJson};
use crate::throttle::ClientKey;
use crate::AppState;

/// The account as admins see it at `now`. Never a secret. A code past its expiry shows as
/// `Expired` (with no `code_expires_at`) from that instant, as it will once the scheduler
/// recorded the expiry ([`Onboarding::state_at`]).
pub fn user_view(account: &Onboarding, now: DateTime<Utc>) -> Value {
    json!({
        "id": account.user_id,
        "username": account.username.as_ref().map(Username::as_str),
        "email": account.email.as_ref().map(EmailAddress::as_str),
        "domain": account.domain.as_ref().map(UserDomain::as_str),
        "locale": account.locale.as_ref().map(Locale::as_str),
        "time_zone": account.time_zone.as_ref().map(TimeZone::as_str),
        "claims": account.claims,
        "state": account.state_at(now).as_str(),
        "created_at": account.created_at,
        "code_expires_at": account.live_code_at(now).map(|c| c.expires_at),
        "password_set_at": account.password_set_at,
        "activated_at": account.activated_at,
        "email_delivery": account.delivery,
        "provisioning": account.provisioning,
        "links_opened": account.links_opened,
        "failed_code_checks": account.failed_checks,
        "revoked_by": account.revoked.map(|(by, _)| by),
        "revoked_at": account.revoked.map(|(_, at)| at),
        "erased_at": account.erased_at,
    })
}

pub(crate) fn parse_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::MalformedJson(NotJson::NotAnObject)),
        Err(e) => Err(ApiError::MalformedJson(NotJson::Syntax(e))),
    }
}

/// A body that may be left empty (an empty object), or else a JSON object.
fn parse_optional_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(Map::new())
    } else {
        parse_object(body)
    }
}

/// Collects per-field problems so one answer names every bad field.
pub(crate) struct Fields {
    map: Map<String, Value>,
    problems: BTreeMap<String, String>,
}

impl Fields {
    pub(crate) fn new(map: Map<String, Value>, allowed: &[&str]) -> Self {
        let mut problems = BTreeMap::new();
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                problems.insert(
                    key.clone(),
                    format!("unknown field; allowed fields are {}", allowed.join(", ")),
                );
            }
        }
        Self { map, problems }
    }

    pub(crate) fn string(&mut self, name: &str, required: bool) -> Option<String> {
        match self.map.get(name) {
            None | Some(Value::Null) if required => {
                self.problems.insert(name.into(), "is required".into());
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.problems.insert(name.into(), "must be a string".into());
                None
            }
        }
    }

    fn integer(&mut self, name: &str) -> Option<i64> {
        match self.map.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) => Some(n),
                None => {
                    self.problems
                        .insert(name.into(), "must be an integer".into());
                    None
                }
            },
        }
    }

    fn object(&mut self, name: &str) -> BTreeMap<String, Value> {
        match self.map.get(name) {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => m.clone().into_iter().collect(),
            Some(_) => {
                self.problems
                    .insert(name.into(), "must be a JSON object of claims".into());
                BTreeMap::new()
            }
        }
    }

    pub(crate) fn problem(&mut self, name: &str, message: String) {
        self.problems.insert(name.into(), message);
    }

    fn problem_unless_named(&mut self, name: &str, message: String) {
        self.problems.entry(name.into()).or_insert(message);
    }

    pub(crate) fn finish(self) -> Result<(), ApiError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }

    fn into_error(self) -> ApiError {
        ApiError::invalid(self.problems)
    }
}

impl AppState {
    pub(crate) fn new_code(&self, validity_minutes: i64) -> NewCode {
        onboarding_store::new_code(self.keyring(), validity_minutes)
    }

    fn validity(&self, fields: &mut Fields) -> i64 {
        let requested = fields.integer("code_validity_minutes");
        onboarding_store::code_validity(&self.settings.identity_mgt.user_onboarding, requested)
            .unwrap_or_else(|message| {
                fields.problem("code_validity_minutes", message);
                0
            })
    }
}

pub async fn create_user(
    state: Arc<AppState>,
    grant: Grant,
    key: Option<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token_id = grant.require(Scope::Invite)?;
    let work = create_user_inner(&state, grant.actor(), &body);
    idempotent(&state, token_id, key, "POST /api/v1/users", &body, work).await
}

async fn create_user_inner(
    state: &AppState,
    actor: Actor,
    body: &Bytes,
) -> Result<Answer, ApiError> {
    state
        .settings
        .identity_mgt
        .user_onboarding
        .invitations_enabled()?;
    let mut f = Fields::new(
        parse_object(body)?,
        &[
            "username",
            "email",
            "domain",
            "locale",
            "time_zone",
            "claims",
            "code_validity_minutes",
        ],
    );
    let (username, email) = (f.string("username", false), f.string("email", false));
    let (domain, locale) = (f.string("domain", false), f.string("locale", false));
    let time_zone = f.string("time_zone", false);
    let fields = InvitationFields {
        username: username.as_deref(),
        email: email.as_deref(),
        domain: domain.as_deref(),
        locale: locale.as_deref(),
        time_zone: time_zone.as_deref(),
        code_validity_minutes: f.integer("code_validity_minutes"),
        claims: f.object("claims"),
    };
    let invitation = match fields.validate(&state.settings.identity_mgt.user_onboarding) {
        Ok(invitation) => invitation,
        Err(problems) => {
            // A field of the wrong JSON type was named already; here it would only be missing.
            for (field, message) in problems.0 {
                f.problem_unless_named(field, message);
            }
            return Err(f.into_error());
        }
    };
    f.finish()?;
    let domain = invitation.domain.clone();
    let account = match state.store.invite(invitation, &actor).await {
        Ok(account) => account,
        Err(InviteError::UsernameTaken {
            username, domain, ..
        }) => return Err(ApiError::UsernameTaken { username, domain }),
        Err(InviteError::Store(e)) => return Err(e.into()),
    };
    let Some(user_id) = account.user_id else {
        return Err(ApiError::Internal(
            "an invitation answered no user id".into(),
        ));
    };
    metrics::counter!("onboard_invitations_total").increment(1);
    tracing::info!(%user_id, domain = %domain, "user invited");
    Ok(Answer {
        status: StatusCode::CREATED,
        body: user_view(&account, Utc::now()),
        location: Some(format!("/api/v1/users/{user_id}")),
    })
}

/// A successful admin answer, as it is stored for `Idempotency-Key` replays.
pub struct Answer {
    status: StatusCode,
    body: Value,
    location: Option<String>,
}

impl Answer {
    fn into_response(self, replayed: bool) -> Response {
        let mut r =
            warp::reply::with_status(warp::reply::json(&self.body), self.status).into_response();
        if let Some(location) = self
            .location
            .and_then(|l| warp::http::HeaderValue::from_str(&l).ok())
        {
            r.headers_mut().insert("location", location);
        }
        if replayed {
            r.headers_mut().insert(
                "idempotent-replayed",
                warp::http::HeaderValue::from_static("true"),
            );
        }
        r
    }
}

/// Runs `work` once per `Idempotency-Key` (per admin token): a retried request with the same key
/// and body gets the first answer, and nothing is done twice.
async fn idempotent(
    state: &AppState,
    token_id: &str,
    key: Option<String>,
    what: &str,
    body: &[u8],
    work: impl std::future::Future<Output = Result<Answer, ApiError>>,
) -> Result<Response, ApiError> {
    let Some(key) = key else {
        return work.await.map(|a| a.into_response(false));
    };
    if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::field(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters, e.g. a UUID",
        ));
    }
    let mut hasher = Sha256::new();
    hasher.update(what.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    let hash = hasher.finalize();
    match state.store.idempotency_begin(token_id, &key, &hash).await? {
        Idempotency::New => match work.await {
            Ok(answer) => {
                state
                    .store
                    .idempotency_finish(
                        token_id,
                        &key,
                        answer.status.as_u16(),
                        &answer.body,
                        answer.location.as_deref(),
                    )
                    .await?;
                Ok(answer.into_response(false))
            }
            Err(e) => {
                state.store.idempotency_release(token_id, &key).await?;
                Err(e)
            }
        },
        Idempotency::Replay {
            status,
            response,
            location,
        } => Ok(Answer {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            body: response,
            location,
        }
        .into_response(true)),
        Idempotency::Mismatch => Err(ApiError::IdempotencyMismatch),
        Idempotency::InProgress => Err(ApiError::IdempotencyInProgress),
    }
}

async fn load(state: &AppState, user_id: Uuid) -> Result<Onboarding, ApiError> {
    state
        .store
        .load(user_id)
        .await?
        .ok_or_else(|| ApiError::UserNotFound(user_id.to_string()))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::UserNotFound(id.chars().take(64).collect()))
}

pub async fn get_user(
    state: Arc<AppState>,
    grant: Grant,
    id: String,
) -> Result<Response, ApiError> {
    grant.require(Scope::Read)?;
    let account = load(&state, parse_id(&id)?).await?;
    Ok(warp::reply::json(&user_view(&account, Utc::now())).into_response())
}

pub async fn resend(
    state: Arc<AppState>,
    grant: Grant,
    key: Option<String>,
    id: String,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token_id = grant.require(Scope::Invite)?;
    let what = format!("POST /api/v1/users/{id}/resend");
    let work = resend_inner(&state, grant.actor(), &id, &body);
    idempotent(&state, token_id, key, &what, &body, work).await
}

async fn resend_inner(
    state: &AppState,
    actor: Actor,
    id: &str,
    body: &Bytes,
) -> Result<Answer, ApiError> {
    let user_id = parse_id(id)?;
    let mut f = Fields::new(parse_optional_object(body)?, &["code_validity_minutes"]);
    let validity = state.validity(&mut f);
    f.finish()?;
    load(state, user_id).await?;
    let command = || OnboardingCommand::ResendCode {
        code: state.new_code(validity),
        limits: state.resend_limits(),
        now: Utc::now(),
    };
    state
        .store
        .execute_retrying(user_id, command, &actor)
        .await?;
    let account = load(state, user_id).await?;
    let now = Utc::now();
    Ok(Answer {
        status: StatusCode::ACCEPTED,
        body: json!({
            "id": user_id,
            "state": account.state_at(now).as_str(),
            "code_expires_at": account.live_code_at(now).map(|c| c.expires_at),
        }),
        location: None,
    })
}

/// The ids a presented code names (its tag is what failed).
pub(crate) struct PresentedCodeRef {
    pub user_id: Uuid,
    pub code_id: onboarding_domain::code::CodeId,
}

impl From<&PresentedCode> for PresentedCodeRef {
    fn from(p: &PresentedCode) -> Self {
        Self {
            user_id: p.user_id,
            code_id: p.code_id,
        }
    }
}

/// Where a wrong code was presented, as `onboard_wrong_codes_total` labels it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WrongCodeRoute {
    /// `POST /api/v1/password-submissions`.
    Api,
    /// The page's form, `POST /confirm`.
    Page,
}

/// Notes a code whose tag did not verify. It changes nothing on the account: a 128-bit tag
/// cannot be guessed online, and the ids it names are public on the topic, so counting wrong
/// tags against the code would let any reader of the topic disable it (docs/adr/0021). The
/// per-client limit bounds each sender; the counter feeds the alert in docs/operations.md.
pub(crate) fn note_wrong_code(route: WrongCodeRoute, code: impl Into<PresentedCodeRef>) {
    let code = code.into();
    let route = match route {
        WrongCodeRoute::Api => "api",
        WrongCodeRoute::Page => "page",
    };
    metrics::counter!("onboard_wrong_codes_total", "route" => route).increment(1);
    tracing::warn!(
        user_id = %code.user_id,
        code_id = %code.code_id,
        route,
        "a code with a wrong tag was presented"
    );
}

/// The histogram of the time from an invitation to its account's activation, in seconds,
/// observed by the gateway that activates the account (its buckets: [`TIME_TO_ACTIVATE_BUCKETS`]).
pub const TIME_TO_ACTIVATE: &str = "onboard_time_to_activate_seconds";

/// The buckets of [`TIME_TO_ACTIVATE`]: a minute, 5 and 15 minutes, an hour, 3, 6 and 12 hours,
/// then 1, 2, 3, 7 and 14 days.
pub const TIME_TO_ACTIVATE_BUCKETS: [f64; 12] = [
    60.0,
    300.0,
    900.0,
    3_600.0,
    10_800.0,
    21_600.0,
    43_200.0,
    86_400.0,
    172_800.0,
    259_200.0,
    604_800.0,
    1_209_600.0,
];

/// Runs a password submission through the aggregate. Shared by the API and the page.
pub async fn submit_password(
    state: &AppState,
    code: &str,
    password: Password,
) -> Result<(Uuid, DateTime<Utc>), ApiError> {
    let presented =
        PresentedCode::parse(code).map_err(|_| ApiError::Refused(OnboardingError::InvalidCode))?;
    let user_id = presented.user_id;
    let code_id = presented.code_id;
    let command = || OnboardingCommand::SubmitPassword {
        code: presented.clone(),
        password: Password::new(password.expose()),
        now: Utc::now(),
    };
    let result = state
        .store
        .execute_retrying(user_id, command, &Actor::user_via_link())
        .await;
    if let Err(StoreError::Refused(OnboardingError::InvalidCode)) = &result {
        note_wrong_code(WrongCodeRoute::Api, PresentedCodeRef { user_id, code_id });
    }
    let outcome = match &result {
        Ok(()) => "activated",
        Err(StoreError::Refused(e)) => ApiError::Refused(e.clone()).code_and_status().0,
        Err(_) => "error",
    };
    metrics::counter!("onboard_password_submissions_total", "outcome" => outcome).increment(1);
    result?;
    tracing::info!(%user_id, "password set; account active");
    let account = load(state, user_id).await?;
    if let (Some(invited), Some(activated)) = (account.created_at, account.activated_at) {
        metrics::histogram!(TIME_TO_ACTIVATE)
            .record((activated - invited).num_milliseconds().max(0) as f64 / 1000.0);
    }
    Ok((user_id, account.activated_at.unwrap_or_else(Utc::now)))
}

pub async fn password_submission(
    state: Arc<AppState>,
    client: Option<ClientKey>,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.throttles.form(client)?;
    let mut f = Fields::new(parse_object(&body)?, &["code", "password"]);
    let code = f.string("code", true);
    let password = f.string("password", true);
    f.finish()?;
    let (Some(code), Some(password)) = (code, password) else {
        return Err(ApiError::Internal("validated fields missing".into()));
    };
    let (user_id, activated_at) = submit_password(&state, &code, Password::new(&password)).await?;
    Ok(
        warp::reply::json(&json!({"id": user_id, "state": "Active", "activated_at": activated_at}))
            .into_response(),
    )
}

pub async fn revoke(
    state: Arc<AppState>,
    grant: Grant,
    id: String,
    body: Bytes,
) -> Result<Response, ApiError> {
    grant.require(Scope::Revoke)?;
    let user_id = parse_id(&id)?;
    let mut f = Fields::new(parse_optional_object(&body)?, &["reason"]);
    let reason = f
        .string("reason", false)
        .and_then(|r| match RevokeReason::parse(&r) {
            Ok(reason) => Some(reason),
            Err(e) => {
                f.problem("reason", e.0);
                None
            }
        });
    f.finish()?;
    load(&state, user_id).await?;
    let command = || OnboardingCommand::RevokeInvitation {
        by: RevokedBy::Admin,
        reason: reason.clone(),
        now: Utc::now(),
    };
    state
        .store
        .execute_retrying(user_id, command, &grant.actor())
        .await?;
    let account = load(&state, user_id).await?;
    Ok(warp::reply::json(&user_view(&account, Utc::now())).into_response())
}

/// `DELETE /api/v1/users/{id}?erase=true`: erases the user's personal data (docs/adr/0030). The
/// query must say `erase=true`, so that no client erases by a DELETE meant for something else.
pub async fn erase(
    state: Arc<AppState>,
    grant: Grant,
    id: String,
    query: std::collections::HashMap<String, String>,
) -> Result<Response, ApiError> {
    grant.require(Scope::Erase)?;
    let user_id = parse_id(&id)?;
    let mut problems = BTreeMap::new();
    if query.get("erase").map(String::as_str) != Some("true") {
        problems.insert(
            "erase".to_owned(),
            "must be true: DELETE erases the user's personal data for good; to withdraw an \
             invitation, POST to /api/v1/users/{id}/revoke"
                .to_owned(),
        );
    }
    for key in query.keys().filter(|k| k.as_str() != "erase") {
        problems.insert(key.clone(), "unknown parameter; use erase=true".to_owned());
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    load(&state, user_id).await?;
    let erasure = state.store.erase(user_id, &grant.actor()).await?;
    let account = load(&state, user_id).await?;
    let mut view = user_view(&account, Utc::now());
    view["events_in_clear"] = json!(erasure.events_in_clear);
    Ok(warp::reply::json(&view).into_response())
}

pub async fn list(
    state: Arc<AppState>,
    grant: Grant,
    query: std::collections::HashMap<String, String>,
) -> Result<Response, ApiError> {
    grant.require(Scope::Read)?;
    let mut problems = BTreeMap::new();
    let wanted = query.get("state").map(|s| {
        OnboardingState::parse(s)
            .filter(|st| *st != OnboardingState::Uninvited)
            .ok_or(())
    });
    let wanted = match wanted {
        Some(Ok(st)) => Some(st.as_str()),
        Some(Err(())) => {
            problems.insert(
                "state".to_owned(),
                "must be one of Invited, CodeIssued, Expired, Locked, Revoked, PasswordSet, Active, Disabled, Erased"
                    .to_owned(),
            );
            None
        }
        None => None,
    };
    let delivery = match query.get("delivery").map(String::as_str) {
        Some(d @ ("queued" | "sent" | "failed" | "abandoned")) => Some(d),
        Some(_) => {
            problems.insert(
                "delivery".to_owned(),
                "must be one of queued, sent, failed, abandoned".to_owned(),
            );
            None
        }
        None => None,
    };
    let provisioning = match query.get("provisioning").map(String::as_str) {
        Some(p @ ("pending" | "provisioned" | "failed")) => Some(p),
        Some(_) => {
            problems.insert(
                "provisioning".to_owned(),
                "must be one of pending, provisioned, failed".to_owned(),
            );
            None
        }
        None => None,
    };
    let after = match query.get("after").map(|a| Uuid::parse_str(a)) {
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            problems.insert(
                "after".to_owned(),
                "must be a user id from a previous page".to_owned(),
            );
            None
        }
        None => None,
    };
    let limit = match query.get("limit").map(|l| l.parse::<i64>()) {
        Some(Ok(n)) if (1..=500).contains(&n) => n,
        Some(_) => {
            problems.insert("limit".to_owned(), "must be between 1 and 500".to_owned());
            0
        }
        None => 100,
    };
    for key in query.keys() {
        if !["state", "delivery", "provisioning", "after", "limit"].contains(&key.as_str()) {
            problems.insert(
                key.clone(),
                "unknown parameter; use state, delivery, provisioning, after, limit".to_owned(),
            );
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let items = state
        .store
        .list_accounts(
            AccountFilter {
                state: wanted,
                delivery,
                provisioning,
                search: None,
            },
            after,
            limit,
        )
        .await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|i| i.user_id))
        .flatten();
    Ok(warp::reply::json(&json!({"items": items, "next_after": next})).into_response())
}
