//! Turning one invitation request into its outcome: invited through `Store::invite_as` (the one
//! invitation path), or refused with a reason the upstream service can act on.

use std::collections::BTreeMap;

use onboarding_config::Settings;
use onboarding_store::{Actor, InvitationFields, InviteError, Store, StoreError};
use uuid::Uuid;

use crate::outcome::{InvitationOutcome, RejectReason};
use crate::request::InvitationRequested;

/// Invites the request's user as `user_id` (actor `upstream`, the request's source and id), or
/// says why not. A redelivered request finds its own invitation and is accepted again. Only a
/// database failure is an error: the caller retries the record.
pub(crate) async fn invite(
    store: &Store,
    settings: &Settings,
    request: &InvitationRequested,
    user_id: Uuid,
) -> Result<InvitationOutcome, StoreError> {
    let reject =
        |code: &str, message: String, fields: BTreeMap<String, String>| InvitationOutcome {
            request_id: request.id.clone(),
            request_source: request.source.clone(),
            status: "rejected".into(),
            user_id: None,
            reason: Some(RejectReason {
                code: code.into(),
                message,
                fields,
            }),
        };
    let cfg = &settings.identity_mgt.user_onboarding;
    if let Err(disabled) = cfg.invitations_enabled() {
        return Ok(reject(
            "invitations_disabled",
            disabled.to_string(),
            BTreeMap::new(),
        ));
    }
    let d = &request.data;
    let fields = InvitationFields {
        username: Some(&d.username),
        email: Some(&d.email),
        domain: d.domain.as_deref(),
        locale: d.locale.as_deref(),
        time_zone: d.time_zone.as_deref(),
        code_validity_minutes: d.code_validity_minutes,
        claims: d.claims.clone().unwrap_or_default(),
    };
    let invitation = match fields.validate(cfg) {
        Ok(invitation) => invitation,
        Err(problems) => {
            let message = problems.to_string();
            let by_field = problems
                .0
                .into_iter()
                .map(|(field, problem)| (field.to_owned(), problem))
                .collect();
            return Ok(reject("invalid_fields", message, by_field));
        }
    };
    let actor = Actor {
        kind: "upstream",
        id: request.source.clone(),
        correlation_id: Some(request.id.clone()),
    };
    let accepted = InvitationOutcome {
        request_id: request.id.clone(),
        request_source: request.source.clone(),
        status: "accepted".into(),
        user_id: Some(user_id),
        reason: None,
    };
    match store.invite_as(user_id, invitation, &actor).await {
        Ok(_) => {
            metrics::counter!("onboard_invitations_total").increment(1);
            Ok(accepted)
        }
        Err(InviteError::UsernameTaken {
            username,
            domain,
            holder,
        }) => {
            if holder == Some(user_id) {
                // Redelivery or an upstream retry: this request's invitation exists.
                Ok(accepted)
            } else if store.load(user_id).await?.is_some() {
                Ok(reject(
                    "request_id_reused",
                    format!(
                        "the request id was already used by {} for another username; use a new id for a new request",
                        request.source
                    ),
                    BTreeMap::new(),
                ))
            } else {
                Ok(reject(
                    "username_taken",
                    format!("the username `{username}` already exists in domain {domain}"),
                    BTreeMap::new(),
                ))
            }
        }
        Err(InviteError::Store(StoreError::Refused(e))) => {
            Ok(reject("refused", e.to_string(), BTreeMap::new()))
        }
        Err(InviteError::Store(e)) => Err(e),
    }
}
