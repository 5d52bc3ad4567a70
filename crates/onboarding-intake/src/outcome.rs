//! What the intake answers: the outcome of one request, published on `intake.outcomes_topic`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `ce_type` of the outcome of a request that invited its user (or found its invitation).
pub const ACCEPTED_TYPE: &str = "onboard.user.invitation.accepted.v1";
/// `ce_type` of the outcome of a request that was refused (`reason` says why).
pub const REJECTED_TYPE: &str = "onboard.user.invitation.rejected.v1";

/// The outcome of one request (the value of an `onboard.user.invitation.accepted.v1` or
/// `….rejected.v1` record; the CloudEvents attributes are headers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvitationOutcome {
    /// The request's `id` (also the `ce_correlationid` header).
    pub request_id: String,
    /// The request's `source` (also the `ce_correlationsource` header).
    pub request_source: String,
    /// `accepted` or `rejected`.
    pub status: String,
    /// The invited user's id (accepted only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// Why the request was rejected (rejected only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RejectReason {
    /// `invalid_fields`, `username_taken`, `request_id_reused`, `invitations_disabled` or
    /// `refused`.
    pub code: String,
    pub message: String,
    /// Field → problem, for `invalid_fields`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}
