//! Every failure of a SCIM request, and the one place that gives each its status, its `scimType`
//! and its SCIM Error message (RFC 7644 §3.12).

use onboarding_store::StoreError;
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
        "this service never accepts a password chosen by an administrator: remove `password` and \
         send \"{ENTERPRISE}\": {{\"askPassword\": true}}; the user chooses a password from the \
         mailed link"
    )]
    PasswordGiven,
    #[error(
        "this service only creates users who set their own password: send \"{ENTERPRISE}\": \
         {{\"askPassword\": true}} (and list that schema in `schemas`)"
    )]
    NoAskPassword,
    #[error("userName is required")]
    NoUserName,
    /// An attribute that must be a string is not (named as the body spelled it, case-folded).
    #[error("{0} must be a string")]
    NotAString(&'static str),
    #[error("emails must be an array of {{\"value\", \"type\", \"primary\"}}")]
    EmailsNotAnArray,
    #[error(
        "emails: at least one address is required (the invitation is mailed to the primary one)"
    )]
    NoEmailAddress,
    #[error("{0} must be at most 255 characters")]
    TooLong(&'static str),
    /// The invitation's fields were refused: `attribute: problem; …` with SCIM's names.
    #[error("{0}")]
    InvalidFields(String),
    #[error("{name} must be an integer, got `{}`", clip(.value, 20))]
    NotAnInteger { name: &'static str, value: String },
    #[error("sorting is not supported")]
    SortingUnsupported,
    #[error("attribute selection is not supported; every User is returned whole")]
    AttributeSelectionUnsupported,
    #[error("unknown query parameter `{}`; use filter, startIndex, count", clip(.0, 40))]
    UnknownParameter(String),
    #[error(
        "unsupported filter `{}`; this service supports only: userName eq \"<name>\"",
        clip(.0, 200)
    )]
    UnsupportedFilter(String),
    #[error("no User with id `{}`", clip(.0, 64))]
    UserNotFound(String),
    #[error("no such schema")]
    SchemaNotFound,
    #[error(
        "no such SCIM endpoint; this service has /Users, /ServiceProviderConfig, /Schemas and \
         /ResourceTypes"
    )]
    NoSuchEndpoint,
    #[error("{method} is not supported on /scim2/{path}")]
    MethodNotAllowed { method: Method, path: String },
    #[error(
        "this service creates, reads and deletes Users but does not change them (see \
         /scim2/ServiceProviderConfig); to send an invitation to another address, DELETE the \
         User and create it again"
    )]
    UsersAreNotChanged,
    #[error("searching with POST is not supported; use GET /scim2/Users?filter=userName eq \"…\"")]
    SearchByPost,
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
         accounts, whose history it keeps for audit"
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

impl ScimError {
    fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_)
            | Self::NotAnObject
            | Self::DuplicateAttribute(_)
            | Self::NotAUser
            | Self::PasswordGiven
            | Self::NoAskPassword
            | Self::NoUserName
            | Self::NotAString(_)
            | Self::EmailsNotAnArray
            | Self::NoEmailAddress
            | Self::TooLong(_)
            | Self::InvalidFields(_)
            | Self::NotAnInteger { .. }
            | Self::SortingUnsupported
            | Self::AttributeSelectionUnsupported
            | Self::UnknownParameter(_)
            | Self::UnsupportedFilter(_) => StatusCode::BAD_REQUEST,
            Self::UserNotFound(_) | Self::SchemaNotFound | Self::NoSuchEndpoint => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::UsersAreNotChanged | Self::SearchByPost => StatusCode::NOT_IMPLEMENTED,
            Self::UserNameTaken { .. } | Self::ExternalIdTaken { .. } | Self::ActiveNotDeleted => {
                StatusCode::CONFLICT
            }
            Self::Api(e) => e.code_and_status().1,
        }
    }

    /// RFC 7644's `scimType` for a `400` or a `409`, where one fits.
    pub(super) fn scim_type(&self) -> Option<&'static str> {
        match self {
            Self::MalformedJson(_)
            | Self::NotAnObject
            | Self::DuplicateAttribute(_)
            | Self::NotAUser => Some("invalidSyntax"),
            Self::PasswordGiven
            | Self::NoAskPassword
            | Self::NoUserName
            | Self::NotAString(_)
            | Self::EmailsNotAnArray
            | Self::NoEmailAddress
            | Self::TooLong(_)
            | Self::InvalidFields(_)
            | Self::NotAnInteger { .. }
            | Self::SortingUnsupported
            | Self::AttributeSelectionUnsupported
            | Self::UnknownParameter(_) => Some("invalidValue"),
            Self::UnsupportedFilter(_) => Some("invalidFilter"),
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
            | Self::UsersAreNotChanged
            | Self::SearchByPost
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
