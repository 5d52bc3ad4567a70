//! Every API failure, and the one place that maps failures to HTTP status codes.

use std::collections::BTreeMap;

use onboarding_domain::OnboardingError;
use onboarding_store::StoreError;
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}. Send a JSON object with Content-Type: application/json")]
    MalformedJson(String),
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
    #[error("the service is temporarily unavailable; retry shortly")]
    Unavailable(String),
    #[error("internal error; the incident is logged")]
    Internal(String),
    #[error("too many requests from this client; retry in {0} seconds")]
    RateLimited(u64),
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
            Self::Unavailable(_) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
            Self::Internal(_) => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
            Self::RateLimited(_) => ("rate_limited", StatusCode::TOO_MANY_REQUESTS),
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
                E::ResendLimited { .. } => ("resend_limited", StatusCode::TOO_MANY_REQUESTS),
                E::CodeNotExpired | E::WelcomeAlreadySent | E::NotActive => {
                    ("conflict", StatusCode::CONFLICT)
                }
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(e) => Self::Refused(e),
            StoreError::Conflict => Self::Conflict,
            StoreError::Unavailable(cause) => Self::Unavailable(cause.to_string()),
            StoreError::Unexpected(cause) => Self::Internal(cause.to_string()),
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
            Self::Unavailable(detail) | Self::Internal(detail) => {
                tracing::error!(error = code, %detail, "request failed")
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
            Self::RateLimited(s) => Some(*s),
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
