//! Every API failure, and the one place that maps failures to HTTP status codes: the
//! handlers' [`ApiError`]s and warp's own rejections ([`recover`]).

use std::collections::BTreeMap;
use std::convert::Infallible;

use onboarding_domain::OnboardingError;
use onboarding_store::StoreError;
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::body::{BodyTooLarge, BodyUnreadable};

/// What made an unexpected failure, kept as its source for the log.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The `Retry-After` of `503 unavailable`: PostgreSQL did not answer within
/// `database.acquire_timeout_seconds` (or a session timeout ended the statement), or a password
/// could not be hashed. Long enough for a restarting database or a fail-over to come back.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}. Send a JSON object with Content-Type: application/json")]
    MalformedJson(#[source] NotJson),
    #[error("{message}")]
    InvalidFields {
        message: String,
        fields: BTreeMap<String, String>,
    },
    #[error("missing or invalid admin token; send `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("no user with id {0}")]
    UserNotFound(String),
    #[error("the username `{username}` already exists in domain {domain}")]
    UsernameTaken { username: String, domain: String },
    #[error(transparent)]
    InvitationsDisabled(#[from] onboarding_config::InvitationsDisabled),
    #[error("{0}")]
    Refused(OnboardingError),
    #[error("the account was changed concurrently; retry the request")]
    Conflict,
    /// PostgreSQL refused a value as data although it passed the checks; the same request
    /// would be refused again.
    #[error(
        "the database refused a value of this request (SQLSTATE {sqlstate}); check the text you \
         sent for characters that cannot be stored, such as NUL (U+0000), and send it without them"
    )]
    Unstorable { sqlstate: String },
    /// PostgreSQL could not be reached or did not answer in time ([`StoreError::Unavailable`]).
    #[error("the service is temporarily unavailable; retry in {UNAVAILABLE_RETRY_AFTER_SECONDS} seconds")]
    Unavailable(#[source] Cause),
    #[error("internal error; the incident is logged")]
    Internal(#[source] Cause),
    #[error("too many requests from this client; retry in {0} seconds")]
    RateLimited(u64),
    #[error("too many requests with this admin token; retry in {0} seconds (gateway.admin_rate_limit_per_minute)")]
    TokenRateLimited(u64),
    #[error("too many sign-in attempts for this username; retry in {0} seconds")]
    UsernameRateLimited(u64),
    /// One answer for a wrong password, an unknown username and an account that is not active.
    #[error("the username or password is wrong")]
    InvalidCredentials,
    #[error("this admin token lacks the `{0}` scope; use a token that has it")]
    Forbidden(&'static str),
    #[error("this Idempotency-Key was already used for a different request; use a new key for a new request")]
    IdempotencyMismatch,
    #[error("a request with this Idempotency-Key is still being processed; retry in a moment")]
    IdempotencyInProgress,
    #[error("no bulk invitation job with id {0}")]
    JobNotFound(String),
    #[error("send the file as Content-Type: text/csv (username,email[,domain,locale,time_zone]) or application/x-ndjson (JSON lines)")]
    UnsupportedFile,
}

/// Why a request body is not the JSON object an endpoint takes.
#[derive(Debug, thiserror::Error)]
pub enum NotJson {
    #[error("{0}")]
    Syntax(#[source] serde_json::Error),
    #[error("expected a JSON object")]
    NotAnObject,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<serde_json::Value>,
}

impl ApiError {
    pub fn invalid(fields: BTreeMap<String, String>) -> Self {
        let message = fields
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ");
        Self::InvalidFields { message, fields }
    }

    pub fn field(name: &str, problem: impl Into<String>) -> Self {
        Self::invalid(BTreeMap::from([(name.to_owned(), problem.into())]))
    }

    /// The stable, machine-readable code and the HTTP status of each failure.
    pub fn code_and_status(&self) -> (&'static str, StatusCode) {
        use OnboardingError as E;
        match self {
            Self::MalformedJson(_) => ("malformed_json", StatusCode::BAD_REQUEST),
            Self::InvalidFields { .. } => ("invalid_request", StatusCode::BAD_REQUEST),
            Self::Unauthorized => ("unauthorized", StatusCode::UNAUTHORIZED),
            Self::UserNotFound(_) => ("user_not_found", StatusCode::NOT_FOUND),
            Self::UsernameTaken { .. } => ("username_taken", StatusCode::CONFLICT),
            Self::InvitationsDisabled(_) => ("invitations_disabled", StatusCode::FORBIDDEN),
            Self::Conflict => ("conflict", StatusCode::CONFLICT),
            Self::Unstorable { .. } => ("unstorable_value", StatusCode::BAD_REQUEST),
            Self::Unavailable(_) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
            Self::Internal(_) => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
            Self::RateLimited(_) | Self::TokenRateLimited(_) | Self::UsernameRateLimited(_) => {
                ("rate_limited", StatusCode::TOO_MANY_REQUESTS)
            }
            Self::InvalidCredentials => ("invalid_credentials", StatusCode::UNAUTHORIZED),
            Self::Forbidden(_) => ("insufficient_scope", StatusCode::FORBIDDEN),
            Self::IdempotencyMismatch => {
                ("idempotency_key_reused", StatusCode::UNPROCESSABLE_ENTITY)
            }
            Self::IdempotencyInProgress => ("idempotency_in_progress", StatusCode::CONFLICT),
            Self::JobNotFound(_) => ("job_not_found", StatusCode::NOT_FOUND),
            Self::UnsupportedFile => ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            Self::Refused(e) => match e {
                E::AlreadyInvited => ("already_invited", StatusCode::CONFLICT),
                E::NotInvited | E::InvalidCode => ("invalid_code", StatusCode::BAD_REQUEST),
                E::AlreadyActive => ("already_active", StatusCode::CONFLICT),
                E::CodeSuperseded => ("code_superseded", StatusCode::GONE),
                E::CodeExpired { .. } => ("code_expired", StatusCode::GONE),
                E::WeakPassword(_) => ("weak_password", StatusCode::UNPROCESSABLE_ENTITY),
                E::InvalidValidity => ("invalid_request", StatusCode::BAD_REQUEST),
                E::MailAlreadySent(_) | E::UnknownCode(_) => ("conflict", StatusCode::CONFLICT),
                E::HashingFailed => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
                E::CodeLocked => ("code_locked", StatusCode::GONE),
                E::InvitationRevoked => ("invitation_revoked", StatusCode::GONE),
                E::Erased => ("erased", StatusCode::GONE),
                E::ResendLimited { .. } => ("resend_limited", StatusCode::TOO_MANY_REQUESTS),
                E::CodeNotExpired
                | E::WelcomeAlreadySent
                | E::NotActive
                | E::AlreadyProvisioned
                | E::AccountDisabled
                | E::NotDisabled => ("conflict", StatusCode::CONFLICT),
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(e) => Self::Refused(e),
            StoreError::Conflict => Self::Conflict,
            e @ StoreError::Unavailable(_) => Self::Unavailable(e.into()),
            e @ StoreError::Unexpected(_) => Self::Internal(e.into()),
            StoreError::Unstorable { sqlstate, .. } => Self::Unstorable { sqlstate },
        }
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        self.to_response()
    }
}

impl ApiError {
    /// The answer for this failure: its status, a JSON body with the stable code and the
    /// message, and `Retry-After` where waiting helps.
    pub fn to_response(&self) -> Response {
        let (code, status) = self.code_and_status();
        match &self {
            Self::Unavailable(cause) | Self::Internal(cause) => {
                let cause: &(dyn std::error::Error + 'static) = cause.as_ref();
                tracing::error!(error = code, detail = cause, "request failed")
            }
            // The SQLSTATE only: the database's message may quote the value.
            Self::Unstorable { sqlstate } => {
                tracing::warn!(error = code, %sqlstate, "the database refused a value of a request")
            }
            _ => tracing::debug!(error = code, "request refused"),
        }
        let (fields, rule) = match &self {
            Self::InvalidFields { fields, .. } => (Some(fields), None),
            Self::Refused(OnboardingError::WeakPassword(v)) => (None, serde_json::to_value(v).ok()),
            _ => (None, None),
        };
        let body = Body {
            error: code,
            message: self.to_string(),
            fields,
            rule,
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), status).into_response();
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert("retry-after", warp::http::HeaderValue::from(seconds));
        }
        response
    }

    /// Seconds after which a refused request may succeed, for `Retry-After`.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited(s) | Self::TokenRateLimited(s) | Self::UsernameRateLimited(s) => {
                Some(*s)
            }
            Self::Unavailable(_) | Self::Refused(OnboardingError::HashingFailed) => {
                Some(UNAVAILABLE_RETRY_AFTER_SECONDS)
            }
            Self::Refused(OnboardingError::ResendLimited {
                retry_after_seconds,
            }) => Some((*retry_after_seconds).max(1) as u64),
            _ => None,
        }
    }
}

/// A JSON error for failures that happen before a handler runs (routing, body limits).
pub fn plain(status: StatusCode, code: &str, message: String) -> Response {
    let body = Body {
        error: code,
        message,
        fields: None,
        rule: None,
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// The answer of a handler: its response, or the response for its failure.
pub(crate) fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(Reply::into_response)
}

/// A request refused by a filter (no valid admin token, a token without the scope, a bad
/// `X-Request-Id`), answered by [`recover`] as that [`ApiError`].
#[derive(Debug)]
pub(crate) struct Refusal(pub(crate) ApiError);
impl warp::reject::Reject for Refusal {}

/// Turns warp's own rejections (routing, body limits, form parsing) into clear JSON answers.
pub(crate) async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    use warp::reject;
    if let Some(Refusal(refusal)) = rejection.find::<Refusal>() {
        return Ok(refusal.to_response());
    }
    let (status, code, message) = if rejection.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint; see docs/api.md".to_owned(),
        )
    } else if let Some(BodyTooLarge { setting, max }) = rejection.find::<BodyTooLarge>() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is too large; send at most {max} bytes ({setting})"),
        )
    } else if rejection.find::<reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large; send at most gateway.max_body_bytes bytes".to_owned(),
        )
    } else if rejection.find::<BodyUnreadable>().is_some() {
        (
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the request body could not be read; send it again".to_owned(),
        )
    } else if rejection.find::<reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send a Content-Length header with the body".to_owned(),
        )
    } else if rejection.find::<reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not accept that HTTP method".to_owned(),
        )
    } else if rejection.find::<reject::UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the form as application/x-www-form-urlencoded".to_owned(),
        )
    } else if let Some(e) = rejection.find::<reject::InvalidQuery>() {
        (
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("the query string is not valid: {e}"),
        )
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        (
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the request body is not valid: {e}"),
        )
    } else if let Some(e) = rejection.find::<reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, "invalid_header", e.to_string())
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the incident is logged".to_owned(),
        )
    };
    Ok(plain(status, code, message))
}
