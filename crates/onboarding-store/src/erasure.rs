//! Erasure (GDPR Art. 17) and export (Art. 15) of one user's personal data (docs/adr/0030).
//!
//! Erasing records `UserErased` through the aggregate; in the same transaction the
//! `erase_personal_data` trigger (migration 0018) deletes her data key (so the personal fields
//! sealed in her events can never be opened again), her credential, her name in the registry,
//! the projection's personal columns and the copies outside the log (bulk rows, mail retries,
//! stored idempotent answers). The provisioner removes her user store entry when it reads the
//! public `erased` record.

use chrono::{DateTime, Utc};
use onboarding_domain::{OnboardingCommand, OnboardingEvent};
use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

use crate::{db, Actor, Store, StoreError, StoredEvent};

/// What an erasure left behind in the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Erasure {
    /// The erased account.
    pub user_id: Uuid,
    /// Her events written before personal fields were sealed (migration 0018): they hold those
    /// fields in clear, and the append-only, hash-chained log keeps them (docs/adr/0030).
    pub events_in_clear: i64,
}

impl Store {
    /// Erases the user's personal data: records `UserErased`, which destroys her data key, her
    /// credential and the projections' personal columns in the same transaction. Refused for an
    /// id nobody invited (`NotInvited`) and for an account already erased (`Erased`).
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn erase(&self, user_id: Uuid, actor: &Actor) -> Result<Erasure, StoreError> {
        self.execute_retrying(
            user_id,
            || OnboardingCommand::EraseUser { now: Utc::now() },
            actor,
        )
        .await?;
        Ok(Erasure {
            user_id,
            events_in_clear: self.events_in_clear(user_id).await?,
        })
    }

    /// How many of the account's events hold personal fields in clear (written before sealing).
    pub async fn events_in_clear(&self, user_id: Uuid) -> Result<i64, StoreError> {
        let personal = PERSONAL_EVENT_TYPES;
        sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'Onboarding' \
             AND aggregate_id = $1 AND event_type = ANY($2) \
             AND NOT (payload -> event_type) ? 'sealed' \
             AND EXISTS (SELECT 1 FROM jsonb_object_keys(payload -> event_type) AS k(key) \
                         WHERE k.key = ANY($3))",
        )
        .bind(user_id.to_string())
        .bind(personal)
        .bind(
            personal
                .iter()
                .flat_map(|t| OnboardingEvent::personal_fields(t).iter().copied())
                .collect::<Vec<_>>(),
        )
        .fetch_one(self.pool())
        .await
        .map_err(db)
    }

    /// Everything the database holds about one user, besides her aggregate: her events (their
    /// personal fields opened, `<erased>` once she was erased), her projection row, her name's
    /// row in the registry (as stored: keyed, or in clear, and which), her credential's scheme and dates (never the hash), whether a data key
    /// exists (never the key), her bulk rows and her waiting mail retries. `None` for an id
    /// nobody invited.
    pub async fn export_of(&self, user_id: Uuid) -> Result<Option<Value>, StoreError> {
        let events: Vec<StoredEvent> = self.events_of(user_id).await?;
        if events.is_empty() {
            return Ok(None);
        }
        let pool = self.pool();
        let projection = sqlx::query(
            "SELECT state, state_since, code_expires_at, username, domain, email, created_at, \
             delivery, provisioning, external_id FROM account_states WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(pool)
        .await
        .map_err(db)?
        .map(|r| -> Result<Value, sqlx::Error> {
            Ok(json!({
                "state": r.try_get::<String, _>("state")?,
                "state_since": r.try_get::<DateTime<Utc>, _>("state_since")?,
                "code_expires_at": r.try_get::<Option<DateTime<Utc>>, _>("code_expires_at")?,
                "username": r.try_get::<Option<String>, _>("username")?,
                "domain": r.try_get::<Option<String>, _>("domain")?,
                "email": r.try_get::<Option<String>, _>("email")?,
                "created_at": r.try_get::<DateTime<Utc>, _>("created_at")?,
                "delivery": r.try_get::<Option<String>, _>("delivery")?,
                "provisioning": r.try_get::<Option<String>, _>("provisioning")?,
                "external_id": r.try_get::<Option<String>, _>("external_id")?,
            }))
        })
        .transpose()
        .map_err(db)?;
        let registry = sqlx::query(
            "SELECT domain, username_key, reserved_at FROM usernames WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(pool)
        .await
        .map_err(db)?
        .map(|r| -> Result<Value, sqlx::Error> {
            let username_key = r.try_get::<String, _>("username_key")?;
            let form = if crate::UsernameRegistry::is_keyed(&username_key) {
                "keyed: an HMAC-SHA-256 of the domain and the lower-case name, under a key \
                 derived from the key-encryption key (docs/adr/0035)"
            } else {
                "the lower-case name, in clear"
            };
            Ok(json!({
                "domain": r.try_get::<String, _>("domain")?,
                "username_key": username_key,
                "form": form,
                "reserved_at": r.try_get::<DateTime<Utc>, _>("reserved_at")?,
            }))
        })
        .transpose()
        .map_err(db)?;
        let credential = self.credentials().current(user_id).await?.map(|c| {
            json!({
                "scheme": c.scheme,
                "created_at": c.created_at,
                "updated_at": c.updated_at,
                "hash": "<withheld: a secret, kept only to verify the password>",
            })
        });
        let data_key =
            sqlx::query("SELECT wrapped_by, created_at FROM personal_data_keys WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(pool)
                .await
                .map_err(db)?
                .map(|r| -> Result<Value, sqlx::Error> {
                    Ok(json!({
                        "wrapped_by": r.try_get::<String, _>("wrapped_by")?,
                        "created_at": r.try_get::<DateTime<Utc>, _>("created_at")?,
                        "key": "<withheld: it seals the personal fields of these events>",
                    }))
                })
                .transpose()
                .map_err(db)?;
        let bulk_rows: Vec<Value> = sqlx::query(
            "SELECT job_id, line, input, status, reason FROM bulk_job_rows WHERE user_id = $1 \
             ORDER BY job_id, line",
        )
        .bind(user_id)
        .fetch_all(pool)
        .await
        .map_err(db)?
        .into_iter()
        .map(|r| -> Result<Value, sqlx::Error> {
            Ok(json!({
                "job_id": r.try_get::<Uuid, _>("job_id")?,
                "line": r.try_get::<i32, _>("line")?,
                "input": r.try_get::<Option<Value>, _>("input")?,
                "status": r.try_get::<String, _>("status")?,
                "reason": r.try_get::<Option<String>, _>("reason")?,
            }))
        })
        .collect::<Result<_, _>>()
        .map_err(db)?;
        let mail_retries: Vec<Value> = sqlx::query(
            "SELECT kind, attempts, first_failed_at, next_attempt_at, last_error \
             FROM mail_retries WHERE user_id = $1 ORDER BY first_failed_at",
        )
        .bind(user_id)
        .fetch_all(pool)
        .await
        .map_err(db)?
        .into_iter()
        .map(|r| -> Result<Value, sqlx::Error> {
            Ok(json!({
                "kind": r.try_get::<String, _>("kind")?,
                "attempts": r.try_get::<i32, _>("attempts")?,
                "first_failed_at": r.try_get::<DateTime<Utc>, _>("first_failed_at")?,
                "next_attempt_at": r.try_get::<DateTime<Utc>, _>("next_attempt_at")?,
                "last_error": r.try_get::<String, _>("last_error")?,
            }))
        })
        .collect::<Result<_, _>>()
        .map_err(db)?;
        Ok(Some(json!({
            "events": events,
            "account_states": projection,
            "usernames": registry,
            "credential": credential,
            "personal_data_key": data_key,
            "bulk_rows": bulk_rows,
            "mail_retries": mail_retries,
        })))
    }
}

/// The event types that have personal fields (`OnboardingEvent::personal_fields`; a unit test
/// keeps the two in step).
const PERSONAL_EVENT_TYPES: &[&str] = &[
    "UserInvited",
    "EmailChanged",
    "ClaimsUpdated",
    "InvitationRevoked",
    "InvitationMailSent",
    "InvitationMailFailed",
    "InvitationMailAbandoned",
    "ProvisioningFailed",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_types_with_personal_fields_are_the_ones_counted() {
        for t in PERSONAL_EVENT_TYPES {
            assert!(!OnboardingEvent::personal_fields(t).is_empty(), "{t}");
        }
        let all = [
            "UserInvited",
            "CodeIssued",
            "PasswordSet",
            "UserActivated",
            "InvitationMailSent",
            "WelcomeMailSent",
            "InvitationMailFailed",
            "InvitationMailAbandoned",
            "LinkOpened",
            "CodeCheckFailed",
            "CodeLocked",
            "CodeExpired",
            "InvitationRevoked",
            "UserProvisioned",
            "ProvisioningFailed",
            "UserErased",
            "EmailChanged",
            "ClaimsUpdated",
        ];
        for t in all {
            assert_eq!(
                PERSONAL_EVENT_TYPES.contains(&t),
                !OnboardingEvent::personal_fields(t).is_empty(),
                "{t}"
            );
        }
    }
}
