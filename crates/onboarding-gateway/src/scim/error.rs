//! Every failure of a SCIM request, and the one place that gives each its status, its `scimType`
//! and its SCIM Error message (RFC 7644 §3.12).

use onboarding_store::{ExecuteError, StoreError};
use serde::Serialize;
use uuid::Uuid;
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::{reply, ENTERPRISE, ERROR, USER};
use crate::ApiError;

/// Why a SCIM request failed. The `Display` text is the message's `detail`: it says what to send
/// instead, and it never repeats a password.
#[derive(Debug, thiserror::Error)]
pub enum ScimError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(#[source] serde_json::Error),
    #[error("the body must be a SCIM User: a JSON object")]
    NotAnObject,
    /// Two keys of one object name the same attribute (SCIM names ignore case).
    #[error(
        "the attribute `{}` is given more than once (attribute names ignore case): send it once",
        clip(.0, 64)
    )]
    DuplicateAttribute(String),
    #[error("`schemas` must list {USER}")]
    NotAUser,
    #[error(
        "this service never accepts a password from a provisioning client: the user chooses one \
         from the link mailed with the invitation. Remove `password` from the request (in Okta, \
         turn off \"Sync Password\" for this application) and send the User without it"
    )]
    PasswordGiven,
    #[error(
        "this service is set to create only users sent with WSO2's askPassword: send \
         \"{ENTERPRISE}\": {{\"askPassword\": true}} (and list that schema in `schemas`), or \
         set identity_mgt.user_onboarding.scim_require_ask_password = false"
    )]
    NoAskPassword,
    #[error("userName is required")]
    NoUserName,
    /// An attribute that must be a string is not (named as the body spelled it, case-folded).
    #[error("{0} must be a string")]
    NotAString(&'static str),
    #[error("{0} must be an object")]
    NotAnObjectAttribute(&'static str),
    #[error("emails must be an array of {{\"value\", \"type\", \"primary\"}}")]
    EmailsNotAnArray,
    #[error(
        "emails: at least one address is required (the invitation is mailed to the primary one)"
    )]
    NoEmailAddress,
    #[error(
        "emails cannot be removed: every account keeps one address, where its mails go; replace \
         it with another address instead"
    )]
    EmailsNotRemoved,
    #[error("active must be true or false")]
    ActiveNotABoolean,
    #[error(
        "active cannot be removed: replace it with false to deprovision the user, or true to \
         enable a disabled account"
    )]
    ActiveNotRemoved,
    #[error(
        "userName cannot change: this service keeps the name an account was invited with. \
         Send the User's current userName, or deprovision it (active: false) and create a new one"
    )]
    UserNameImmutable,
    #[error("{0} must be at most 255 characters")]
    TooLong(&'static str),
    /// The invitation's fields were refused: `attribute: problem; …` with SCIM's names.
    #[error("{0}")]
    InvalidFields(String),
    #[error("{name} must be an integer, got `{}`", clip(.value, 20))]
    NotAnInteger { name: &'static str, value: String },
    #[error("sortOrder must be ascending or descending, got `{}`", clip(.0, 20))]
    BadSortOrder(String),
    #[error(
        "cannot sort by `{}`; sortBy may be userName, emails, externalId or meta.created",
        clip(.0, 64)
    )]
    UnsupportedSortBy(String),
    #[error("attributes and excludedAttributes cannot be used together (RFC 7644 §3.9)")]
    BothSelections,
    #[error(
        "unknown query parameter `{}`; use filter, startIndex, count, sortBy, sortOrder, \
         attributes or excludedAttributes",
        clip(.0, 40)
    )]
    UnknownParameter(String),
    #[error("the filter is not valid SCIM filter syntax (RFC 7644 §3.4.2.2): {}", clip(.0, 200))]
    InvalidFilter(String),
    #[error(
        "cannot filter on `{}`; filters may name userName, emails (value, type, primary), \
         externalId, id and active",
        clip(.0, 64)
    )]
    UnsupportedFilterAttribute(String),
    #[error("the operator `{0}` is not supported here; use eq, ne, sw, ew, co or pr")]
    UnsupportedFilterOperator(String),
    #[error("the filter compares with {}, which must be a string in double quotes", clip(.0, 40))]
    FilterValueNotAString(String),
    #[error("the filter compares with {}, which must be true or false", clip(.0, 40))]
    FilterValueNotABoolean(String),
    #[error(
        "the filter is too complex: at most {} comparisons nested at most {} deep (and, or, \
         not, parentheses, […]); split the search",
        super::filter::MAX_TERMS,
        super::filter::MAX_DEPTH
    )]
    FilterTooComplex,
    #[error("the body is not a SCIM SearchRequest: {}", clip(.0, 200))]
    NotASearchRequest(String),
    #[error("the body is not a SCIM PatchOp (RFC 7644 §3.5.2): {}", clip(.0, 200))]
    NotAPatch(String),
    #[error("no User with id `{}`", clip(.0, 64))]
    UserNotFound(String),
    #[error("no such schema")]
    SchemaNotFound,
    #[error(
        "no such SCIM endpoint; this service has /Users (with /Users/{{id}} and \
         /Users/.search), /ServiceProviderConfig, /Schemas and /ResourceTypes"
    )]
    NoSuchEndpoint,
    #[error("{method} is not supported on /scim2/{path}; it takes {allow}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: &'static str,
    },
    /// `If-Match` named another version (RFC 7644 §3.14).
    #[error(
        "the User changed since the version you sent in If-Match: it is now at W/\"{current}\"; \
         read it again and repeat the change if it still applies"
    )]
    PreconditionFailed { current: i64 },
    #[error("the userName `{username}` already exists in domain {domain}")]
    UserNameTaken { username: String, domain: String },
    /// The externalId already created another user (with another userName).
    #[error(
        "the externalId `{}` already names the user {user_id}; use a new externalId for a new user",
        clip(.external_id, 64)
    )]
    ExternalIdTaken { external_id: String, user_id: Uuid },
    #[error(
        "this User has set a password and is active; this service does not delete active \
         accounts, whose history it keeps for audit: deprovision it with PATCH active: false"
    )]
    ActiveNotDeleted,
    /// A failure the JSON API shares: the token, its scopes, the configuration, the store.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<StoreError> for ScimError {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

/// At most `max` characters of what a caller sent, to repeat it in a message.
fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

impl From<ExecuteError> for ScimError {
    fn from(e: ExecuteError) -> Self {
        match e {
            ExecuteError::Stale { current, .. } => Self::PreconditionFailed { current },
            ExecuteError::Store(e) => e.into(),
        }
    }
}

impl ScimError {
    fn status(&self) -> StatusCode {
        match self {
            Self::UserNotFound(_) | Self::SchemaNotFound | Self::NoSuchEndpoint => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Self::UserNameTaken { .. } | Self::ExternalIdTaken { .. } | Self::ActiveNotDeleted => {
                StatusCode::CONFLICT
            }
            Self::Api(e) => e.code_and_status().1,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// RFC 7644's `scimType` for a `400` or a `409`, where one fits.
    pub(super) fn scim_type(&self) -> Option<&'static str> {
        match self {
            Self::MalformedJson(_)
            | Self::NotAnObject
            | Self::DuplicateAttribute(_)
            | Self::NotAUser
            | Self::NotASearchRequest(_)
            | Self::NotAPatch(_) => Some("invalidSyntax"),
            Self::PasswordGiven
            | Self::NoAskPassword
            | Self::NoUserName
            | Self::NotAString(_)
            | Self::NotAnObjectAttribute(_)
            | Self::EmailsNotAnArray
            | Self::NoEmailAddress
            | Self::ActiveNotABoolean
            | Self::TooLong(_)
            | Self::InvalidFields(_)
            | Self::NotAnInteger { .. }
            | Self::BadSortOrder(_)
            | Self::UnsupportedSortBy(_)
            | Self::BothSelections
            | Self::UnknownParameter(_) => Some("invalidValue"),
            Self::EmailsNotRemoved | Self::ActiveNotRemoved | Self::UserNameImmutable => {
                Some("mutability")
            }
            Self::InvalidFilter(_)
            | Self::UnsupportedFilterAttribute(_)
            | Self::UnsupportedFilterOperator(_)
            | Self::FilterValueNotAString(_)
            | Self::FilterValueNotABoolean(_) => Some("invalidFilter"),
            Self::FilterTooComplex => Some("tooMany"),
            Self::UserNameTaken { .. } | Self::ExternalIdTaken { .. } => Some("uniqueness"),
            Self::Api(ApiError::UsernameTaken { .. }) => Some("uniqueness"),
            Self::Api(ApiError::InvalidFields { .. } | ApiError::Unstorable { .. }) => {
                Some("invalidValue")
            }
            Self::Api(ApiError::MalformedJson(_)) => Some("invalidSyntax"),
            Self::UserNotFound(_)
            | Self::SchemaNotFound
            | Self::NoSuchEndpoint
            | Self::MethodNotAllowed { .. }
            | Self::PreconditionFailed { .. }
            | Self::ActiveNotDeleted
            | Self::Api(_) => None,
        }
    }
}

/// The SCIM Error message.
#[derive(Serialize)]
struct Message {
    schemas: [&'static str; 1],
    status: String,
    #[serde(rename = "scimType", skip_serializing_if = "Option::is_none")]
    scim_type: Option<&'static str>,
    detail: String,
}

impl Reply for ScimError {
    fn into_response(self) -> Response {
        if let Self::Api(e @ (ApiError::Unavailable(_) | ApiError::Internal(_))) = &self {
            tracing::error!(error = ?e, "SCIM request failed");
        }
        if let Self::Api(ApiError::Unstorable { sqlstate }) = &self {
            tracing::warn!(%sqlstate, "the database refused a value of a SCIM request");
        }
        let status = self.status();
        let mut response = reply(
            status,
            &Message {
                schemas: [ERROR],
                status: status.as_u16().to_string(),
                scim_type: self.scim_type(),
                detail: self.to_string(),
            },
        );
        if let Self::MethodNotAllowed { allow, .. } = &self {
            response
                .headers_mut()
                .insert("allow", warp::http::HeaderValue::from_static(allow));
        }
        // A database outage or a rate limit: when to try again, as the JSON API says it.
        if let Some(seconds) = match &self {
            Self::Api(e) => e.retry_after(),
            _ => None,
        } {
            response
                .headers_mut()
                .insert("retry-after", warp::http::HeaderValue::from(seconds));
        }
        response
    }
}
