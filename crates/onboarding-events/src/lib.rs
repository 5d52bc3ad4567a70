//! The public event contract: what the engine publishes on Kafka. Each domain event maps to one
//! public event with its own, separately versioned schema (`schemas/events/*.json`, generated
//! from these types). The mapping is where internal fields are dropped: the password hash and
//! the code's key id never leave the event store.
//!
//! Consumers must ignore fields they do not know: adding an optional field keeps the version;
//! anything else is a new type with a new version suffix.
//!
//! Record layout (CloudEvents Kafka protocol binding, binary mode): key = user id, value = the JSON
//! of one of these structs, headers `ce_id`, `ce_type`, `ce_source`, `ce_specversion`, `ce_time`,
//! `ce_subject`, `content-type`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use onboarding_domain::{CodeIssueReason, OnboardingEvent, RevokedBy, TemplateRef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of the deterministic CloudEvents ids (UUIDv5 of `user_id/sequence`): a record
/// published twice carries the same `ce_id`, so consumers can deduplicate.
const CE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f6e_626f_6172_6400_8000_0000_0000_0001);

/// The `ce_id` of the record for an account's event at `sequence`: the same every time that
/// event is published, so that consumers can deduplicate.
pub fn ce_id(user_id: Uuid, sequence: i64) -> Uuid {
    Uuid::new_v5(&CE_ID_NAMESPACE, format!("{user_id}/{sequence}").as_bytes())
}

/// An account was invited; its first code is issued by the next event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserInvitedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The username as given (normalised, case kept); unique within `domain` ignoring case.
    pub username: String,
    /// The user store domain, upper case (`PRIMARY` unless the invitation named one).
    pub domain: String,
    /// The address the invitation was sent to.
    pub email: String,
    /// Language tag of the user's mails and pages (`en-GB`), or `null` when none was chosen.
    pub locale: Option<String>,
    /// IANA time zone name chosen at invitation (added in place: optional, absent or `null`
    /// when none was chosen and in records published before it existed).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// The attributes given with the invitation (`name`, `given_name`, …), as given.
    pub claims: BTreeMap<String, serde_json::Value>,
    /// When the account was invited.
    pub invited_at: DateTime<Utc>,
}

/// A confirmation code was issued and is to be mailed; earlier codes are dead. The code itself is
/// not here: only the engine's keys can turn `code_id` into a usable link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CodeIssuedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The code's id; the later events about this code (mail, opening, lock, expiry) name it.
    pub code_id: Uuid,
    /// Why the code was issued.
    pub reason: CodeReason,
    /// When the code was issued.
    pub issued_at: DateTime<Utc>,
    /// When the code's link stops working.
    pub expires_at: DateTime<Utc>,
}

/// The active account's entry was written to the user store (an LDAP directory): the user can
/// bind there with her password. Published once per account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserProvisionedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The kind of user store (`read_write_ldap_unique_id`).
    pub user_store: String,
    /// How many attempts it took (1 when the first one succeeded).
    pub attempts: u32,
    /// When the user store accepted the entry.
    pub provisioned_at: DateTime<Utc>,
}

/// An attempt to write the active account's entry to the user store failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProvisioningFailedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The kind of user store (`read_write_ldap_unique_id`).
    pub user_store: String,
    /// What went wrong, as the directory or the connection reported it.
    pub reason: String,
    /// Whether retrying cannot help (the directory refused the entry); otherwise the provisioner
    /// keeps trying.
    pub permanent: bool,
    /// Which attempt failed (1 for the first).
    pub attempt: u32,
    /// When the attempt failed.
    pub failed_at: DateTime<Utc>,
}

/// Why a code was issued: with the invitation, or again on someone's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodeReason {
    /// The first code, issued with the invitation.
    Invitation,
    /// An administrator had a new link sent.
    Resend,
    /// The user asked for a new link from the page of an expired, replaced or locked one.
    UserRequest,
}

/// The user chose a password (its hash stays in the event store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PasswordSetV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The code whose link was used.
    pub code_id: Uuid,
    /// When the password was set.
    pub set_at: DateTime<Utc>,
}

/// The account is active: downstream services may let the user in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserActivatedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// When the account became active.
    pub activated_at: DateTime<Utc>,
}

/// The user's personal data was erased (docs/adr/0030). Consumers that keep personal data from
/// her earlier records (`onboard.user.invited.v1`'s username, email and claims, the reasons and
/// SMTP answers of the mail and provisioning records) must delete it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserErasedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// When the erasure was recorded.
    pub erased_at: DateTime<Utc>,
}

/// The SMTP server accepted the invitation mail for a code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvitationMailSentV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The code whose link the mail carried.
    pub code_id: Uuid,
    /// The mail's Message-ID header, to find the mail in mail server logs.
    pub message_id: String,
    /// The SMTP server's reply accepting the mail.
    pub smtp_response: String,
    /// The template the mail was rendered from (absent for mails sent before templates were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateV1>,
    /// When the SMTP server accepted the mail.
    pub sent_at: DateTime<Utc>,
}

/// A mail template: id, version (a digest of its files) and the locale chosen after fallback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TemplateV1 {
    /// The template's name: `invitation` or `welcome`.
    pub id: String,
    /// A digest of the template's files: tells which wording a user received.
    pub version: String,
    /// The language the mail was written in, after falling back from the user's locale.
    pub locale: String,
}

impl From<TemplateRef> for TemplateV1 {
    fn from(t: TemplateRef) -> Self {
        Self {
            id: t.id,
            version: t.version,
            locale: t.locale,
        }
    }
}

/// The "your account is ready" mail went out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WelcomeMailSentV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The mail's Message-ID header, to find the mail in mail server logs.
    pub message_id: String,
    /// The template the mail was rendered from.
    pub template: TemplateV1,
    /// When the SMTP server accepted the mail.
    pub sent_at: DateTime<Utc>,
}

/// The invitation mail for a code could not be delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvitationMailFailedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The code whose mail failed.
    pub code_id: Uuid,
    /// What went wrong, as the mailer reported it.
    pub reason: String,
    /// Whether retrying cannot help (for example, the recipient address was refused).
    pub permanent: bool,
    /// When the attempt failed.
    pub failed_at: DateTime<Utc>,
    /// Which attempt failed (1 for the first); absent in records from before attempts were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When the mail will be tried again; absent when it will not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The worker gave up on the invitation mail for a code (a permanent failure, or the attempts or
/// the time allowed ran out). A resend issues a new code and tries again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvitationMailAbandonedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The code whose mail was given up.
    pub code_id: Uuid,
    /// Why the worker gave up, with the last failure.
    pub reason: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When the worker gave up.
    pub abandoned_at: DateTime<Utc>,
}

/// Someone opened the confirmation link (GET or HEAD). `client` is a coarse class such as
/// `browser`, `link-scanner`, `http-client`; no address is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LinkOpenedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The code whose link was opened (only a genuine code is recorded).
    pub code_id: Uuid,
    /// What opened the link, as a coarse class: tells a mail scanner's visit from the user's.
    pub client: String,
    /// When the link was opened.
    pub opened_at: DateTime<Utc>,
}

/// A wrong code was presented for the live code; `failures` counts them for this code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CodeCheckFailedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The live code the wrong code was presented for.
    pub code_id: Uuid,
    /// Wrong codes for this code so far; at the configured maximum the code locks.
    pub failures: u32,
    /// When the wrong code was presented.
    pub failed_at: DateTime<Utc>,
}

/// Too many wrong codes: the live code is dead until a new one is issued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CodeLockedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The code that was disabled.
    pub code_id: Uuid,
    /// When it was disabled.
    pub locked_at: DateTime<Utc>,
}

/// The live code passed its expiry (`expired_at` is the code's expiry, not when this was noticed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CodeExpiredV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The code that expired.
    pub code_id: Uuid,
    /// The code's expiry (from its `code_issued` record).
    pub expired_at: DateTime<Utc>,
}

/// The invitation was withdrawn by an admin or declined by the user. Final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvitationRevokedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// Who withdrew it.
    pub by: RevokedByV1,
    /// The administrator's reason, if one was given; `null` otherwise.
    pub reason: Option<String>,
    /// When it was withdrawn.
    pub revoked_at: DateTime<Utc>,
}

/// An active account was switched off (an upstream system's SCIM `active: false`): downstream
/// services must not let the user in until `onboard.user.enabled.v1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountDisabledV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// When it was disabled.
    pub disabled_at: DateTime<Utc>,
}

/// A disabled account was switched on again: it is active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountEnabledV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// When it was enabled.
    pub enabled_at: DateTime<Utc>,
}

/// The account's mails go to another address from now on. For an invitation that was still
/// open, an `onboard.user.code_issued.v1` follows: the new address gets a new link, and the link
/// mailed to the old address is dead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmailChangedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The new address.
    pub email: String,
    /// When it was changed.
    pub changed_at: DateTime<Utc>,
}

/// The account's claims were replaced as a whole (`name`, `given_name`, `family_name`,
/// `display_name`, `external_id`, …); a claim absent here is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClaimsUpdatedV1 {
    /// The account's id, also the record's key: one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The event's position in the account's log (1 for the first): consumers order and
    /// deduplicate one user's events by it.
    pub sequence: i64,
    /// The claims from now on.
    pub claims: BTreeMap<String, serde_json::Value>,
    /// When they were replaced.
    pub updated_at: DateTime<Utc>,
}

/// Who withdrew an invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokedByV1 {
    /// An administrator withdrew it.
    Admin,
    /// The user declined it with the link in the invitation mail.
    User,
}

/// Any one public event: what the relay publishes and what consumers (the email worker, the
/// audit replay) read back.
#[derive(Debug, Clone, PartialEq)]
pub enum PublicEvent {
    /// `onboard.user.invited.v1`.
    UserInvited(UserInvitedV1),
    /// `onboard.user.code_issued.v1`.
    CodeIssued(CodeIssuedV1),
    /// `onboard.user.password_set.v1`.
    PasswordSet(PasswordSetV1),
    /// `onboard.user.activated.v1`.
    UserActivated(UserActivatedV1),
    /// `onboard.user.invitation_mail_sent.v1`.
    InvitationMailSent(InvitationMailSentV1),
    /// `onboard.user.invitation_mail_failed.v1`.
    InvitationMailFailed(InvitationMailFailedV1),
    /// `onboard.user.invitation_mail_abandoned.v1`.
    InvitationMailAbandoned(InvitationMailAbandonedV1),
    /// `onboard.user.link_opened.v1`.
    LinkOpened(LinkOpenedV1),
    /// `onboard.user.code_check_failed.v1`.
    CodeCheckFailed(CodeCheckFailedV1),
    /// `onboard.user.code_locked.v1`.
    CodeLocked(CodeLockedV1),
    /// `onboard.user.code_expired.v1`.
    CodeExpired(CodeExpiredV1),
    /// `onboard.user.invitation_revoked.v1`.
    InvitationRevoked(InvitationRevokedV1),
    /// `onboard.user.welcome_mail_sent.v1`.
    WelcomeMailSent(WelcomeMailSentV1),
    /// `onboard.user.provisioned.v1`
    UserProvisioned(UserProvisionedV1),
    /// `onboard.user.provisioning_failed.v1`
    ProvisioningFailed(ProvisioningFailedV1),
    /// `onboard.user.disabled.v1`.
    AccountDisabled(AccountDisabledV1),
    /// `onboard.user.enabled.v1`.
    AccountEnabled(AccountEnabledV1),
    /// `onboard.user.email_changed.v1`.
    EmailChanged(EmailChangedV1),
    /// `onboard.user.claims_updated.v1`.
    ClaimsUpdated(ClaimsUpdatedV1),
    /// `onboard.user.erased.v1`
    UserErased(UserErasedV1),
}

/// A record that does not fit the contract, named so that a consumer can log and skip it.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The `ce_type` header names no public event type (consumers should ignore such records).
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// The value is not valid JSON of the type's schema.
    #[error("payload does not match the schema of `{ce_type}`: {reason}")]
    BadPayload {
        /// The record's `ce_type`.
        ce_type: String,
        /// What serde found wrong.
        reason: String,
    },
}

/// The CloudEvents version of every record (`ce_specversion` header).
pub const SPEC_VERSION: &str = "1.0";
/// The media type of every record's value (`content-type` header).
pub const CONTENT_TYPE: &str = "application/json";

macro_rules! types {
    ($($ty:ident => $name:literal),* $(,)?) => {
        $(impl $ty {
            /// The CloudEvents type of these records (`ce_type` header), which names the schema.
            pub const TYPE: &'static str = $name;
        })*
    };
}

types! {
    UserInvitedV1 => "onboard.user.invited.v1",
    CodeIssuedV1 => "onboard.user.code_issued.v1",
    PasswordSetV1 => "onboard.user.password_set.v1",
    UserActivatedV1 => "onboard.user.activated.v1",
    InvitationMailSentV1 => "onboard.user.invitation_mail_sent.v1",
    InvitationMailFailedV1 => "onboard.user.invitation_mail_failed.v1",
    InvitationMailAbandonedV1 => "onboard.user.invitation_mail_abandoned.v1",
    LinkOpenedV1 => "onboard.user.link_opened.v1",
    CodeCheckFailedV1 => "onboard.user.code_check_failed.v1",
    CodeLockedV1 => "onboard.user.code_locked.v1",
    CodeExpiredV1 => "onboard.user.code_expired.v1",
    InvitationRevokedV1 => "onboard.user.invitation_revoked.v1",
    WelcomeMailSentV1 => "onboard.user.welcome_mail_sent.v1",
    UserProvisionedV1 => "onboard.user.provisioned.v1",
    ProvisioningFailedV1 => "onboard.user.provisioning_failed.v1",
    AccountDisabledV1 => "onboard.user.disabled.v1",
    AccountEnabledV1 => "onboard.user.enabled.v1",
    EmailChangedV1 => "onboard.user.email_changed.v1",
    ClaimsUpdatedV1 => "onboard.user.claims_updated.v1",
    UserErasedV1 => "onboard.user.erased.v1",
}

impl PublicEvent {
    /// Maps a stored domain event to its public form, dropping whatever is internal.
    pub fn from_domain(user_id: Uuid, sequence: i64, event: OnboardingEvent) -> Self {
        match event {
            OnboardingEvent::UserInvited {
                username,
                email,
                domain,
                locale,
                time_zone,
                claims,
                invited_at,
                ..
            } => Self::UserInvited(UserInvitedV1 {
                user_id,
                sequence,
                username: username.as_str().to_owned(),
                domain: domain.as_str().to_owned(),
                email: email.as_str().to_owned(),
                locale: locale.map(|l| l.as_str().to_owned()),
                time_zone: time_zone.map(|t| t.as_str().to_owned()),
                claims,
                invited_at,
            }),
            OnboardingEvent::CodeIssued {
                code_id,
                issued_at,
                expires_at,
                reason,
                ..
            } => Self::CodeIssued(CodeIssuedV1 {
                user_id,
                sequence,
                code_id: code_id.as_uuid(),
                reason: match reason {
                    CodeIssueReason::Invitation => CodeReason::Invitation,
                    CodeIssueReason::Resend => CodeReason::Resend,
                    CodeIssueReason::UserRequest => CodeReason::UserRequest,
                },
                issued_at,
                expires_at,
            }),
            OnboardingEvent::PasswordSet {
                code_id, set_at, ..
            } => Self::PasswordSet(PasswordSetV1 {
                user_id,
                sequence,
                code_id: code_id.as_uuid(),
                set_at,
            }),
            OnboardingEvent::UserErased { erased_at } => Self::UserErased(UserErasedV1 {
                user_id,
                sequence,
                erased_at,
            }),
            OnboardingEvent::UserActivated { activated_at } => {
                Self::UserActivated(UserActivatedV1 {
                    user_id,
                    sequence,
                    activated_at,
                })
            }
            OnboardingEvent::InvitationMailSent {
                code_id,
                message_id,
                smtp_response,
                template,
                sent_at,
            } => Self::InvitationMailSent(InvitationMailSentV1 {
                user_id,
                sequence,
                code_id: code_id.as_uuid(),
                message_id,
                smtp_response,
                template: template.map(TemplateV1::from),
                sent_at,
            }),
            OnboardingEvent::WelcomeMailSent {
                message_id,
                template,
                sent_at,
            } => Self::WelcomeMailSent(WelcomeMailSentV1 {
                user_id,
                sequence,
                message_id,
                template: template.into(),
                sent_at,
            }),
            OnboardingEvent::InvitationMailFailed {
                code_id,
                reason,
                permanent,
                failed_at,
                attempt,
                next_attempt_at,
            } => Self::InvitationMailFailed(InvitationMailFailedV1 {
                user_id,
                sequence,
                code_id: code_id.as_uuid(),
                reason,
                permanent,
                failed_at,
                attempt: Some(attempt).filter(|a| *a > 0),
                next_attempt_at,
            }),
            OnboardingEvent::InvitationMailAbandoned {
                code_id,
                reason,
                attempts,
                abandoned_at,
            } => Self::InvitationMailAbandoned(InvitationMailAbandonedV1 {
                user_id,
                sequence,
                code_id: code_id.as_uuid(),
                reason,
                attempts,
                abandoned_at,
            }),
            OnboardingEvent::LinkOpened {
                code_id,
                client,
                opened_at,
            } => Self::LinkOpened(LinkOpenedV1 {
                user_id,
                sequence,
                code_id: code_id.as_uuid(),
                client,
                opened_at,
            }),
            OnboardingEvent::CodeCheckFailed {
                code_id,
                failures,
                failed_at,
            } => Self::CodeCheckFailed(CodeCheckFailedV1 {
                user_id,
                sequence,
                code_id: code_id.as_uuid(),
                failures,
                failed_at,
            }),
            OnboardingEvent::CodeLocked { code_id, locked_at } => Self::CodeLocked(CodeLockedV1 {
                user_id,
                sequence,
                code_id: code_id.as_uuid(),
                locked_at,
            }),
            OnboardingEvent::CodeExpired {
                code_id,
                expired_at,
            } => Self::CodeExpired(CodeExpiredV1 {
                user_id,
                sequence,
                code_id: code_id.as_uuid(),
                expired_at,
            }),
            OnboardingEvent::InvitationRevoked {
                by,
                reason,
                revoked_at,
            } => Self::InvitationRevoked(InvitationRevokedV1 {
                user_id,
                sequence,
                by: match by {
                    RevokedBy::Admin => RevokedByV1::Admin,
                    RevokedBy::User => RevokedByV1::User,
                },
                reason,
                revoked_at,
            }),
            OnboardingEvent::UserProvisioned {
                user_store,
                attempts,
                provisioned_at,
            } => Self::UserProvisioned(UserProvisionedV1 {
                user_id,
                sequence,
                user_store,
                attempts,
                provisioned_at,
            }),
            OnboardingEvent::ProvisioningFailed {
                user_store,
                reason,
                permanent,
                attempt,
                failed_at,
            } => Self::ProvisioningFailed(ProvisioningFailedV1 {
                user_id,
                sequence,
                user_store,
                reason,
                permanent,
                attempt,
                failed_at,
            }),
            OnboardingEvent::AccountDisabled { disabled_at } => {
                Self::AccountDisabled(AccountDisabledV1 {
                    user_id,
                    sequence,
                    disabled_at,
                })
            }
            OnboardingEvent::AccountEnabled { enabled_at } => {
                Self::AccountEnabled(AccountEnabledV1 {
                    user_id,
                    sequence,
                    enabled_at,
                })
            }
            OnboardingEvent::EmailChanged { email, changed_at } => {
                Self::EmailChanged(EmailChangedV1 {
                    user_id,
                    sequence,
                    email: email.as_str().to_owned(),
                    changed_at,
                })
            }
            OnboardingEvent::ClaimsUpdated { claims, updated_at } => {
                Self::ClaimsUpdated(ClaimsUpdatedV1 {
                    user_id,
                    sequence,
                    claims,
                    updated_at,
                })
            }
        }
    }

    /// The record's `ce_type` header.
    pub fn ce_type(&self) -> &'static str {
        match self {
            Self::UserInvited(_) => UserInvitedV1::TYPE,
            Self::CodeIssued(_) => CodeIssuedV1::TYPE,
            Self::PasswordSet(_) => PasswordSetV1::TYPE,
            Self::UserActivated(_) => UserActivatedV1::TYPE,
            Self::InvitationMailSent(_) => InvitationMailSentV1::TYPE,
            Self::InvitationMailFailed(_) => InvitationMailFailedV1::TYPE,
            Self::InvitationMailAbandoned(_) => InvitationMailAbandonedV1::TYPE,
            Self::LinkOpened(_) => LinkOpenedV1::TYPE,
            Self::CodeCheckFailed(_) => CodeCheckFailedV1::TYPE,
            Self::CodeLocked(_) => CodeLockedV1::TYPE,
            Self::CodeExpired(_) => CodeExpiredV1::TYPE,
            Self::InvitationRevoked(_) => InvitationRevokedV1::TYPE,
            Self::WelcomeMailSent(_) => WelcomeMailSentV1::TYPE,
            Self::UserProvisioned(_) => UserProvisionedV1::TYPE,
            Self::ProvisioningFailed(_) => ProvisioningFailedV1::TYPE,
            Self::AccountDisabled(_) => AccountDisabledV1::TYPE,
            Self::AccountEnabled(_) => AccountEnabledV1::TYPE,
            Self::EmailChanged(_) => EmailChangedV1::TYPE,
            Self::ClaimsUpdated(_) => ClaimsUpdatedV1::TYPE,
            Self::UserErased(_) => UserErasedV1::TYPE,
        }
    }

    /// The account the event is about: the record's key.
    pub fn user_id(&self) -> Uuid {
        match self {
            Self::UserInvited(e) => e.user_id,
            Self::CodeIssued(e) => e.user_id,
            Self::PasswordSet(e) => e.user_id,
            Self::UserActivated(e) => e.user_id,
            Self::InvitationMailSent(e) => e.user_id,
            Self::InvitationMailFailed(e) => e.user_id,
            Self::InvitationMailAbandoned(e) => e.user_id,
            Self::LinkOpened(e) => e.user_id,
            Self::CodeCheckFailed(e) => e.user_id,
            Self::CodeLocked(e) => e.user_id,
            Self::CodeExpired(e) => e.user_id,
            Self::InvitationRevoked(e) => e.user_id,
            Self::WelcomeMailSent(e) => e.user_id,
            Self::UserProvisioned(e) => e.user_id,
            Self::ProvisioningFailed(e) => e.user_id,
            Self::AccountDisabled(e) => e.user_id,
            Self::AccountEnabled(e) => e.user_id,
            Self::EmailChanged(e) => e.user_id,
            Self::ClaimsUpdated(e) => e.user_id,
            Self::UserErased(e) => e.user_id,
        }
    }

    /// The event's position in the account's log.
    pub fn sequence(&self) -> i64 {
        match self {
            Self::UserInvited(e) => e.sequence,
            Self::CodeIssued(e) => e.sequence,
            Self::PasswordSet(e) => e.sequence,
            Self::UserActivated(e) => e.sequence,
            Self::InvitationMailSent(e) => e.sequence,
            Self::InvitationMailFailed(e) => e.sequence,
            Self::InvitationMailAbandoned(e) => e.sequence,
            Self::LinkOpened(e) => e.sequence,
            Self::CodeCheckFailed(e) => e.sequence,
            Self::CodeLocked(e) => e.sequence,
            Self::CodeExpired(e) => e.sequence,
            Self::InvitationRevoked(e) => e.sequence,
            Self::WelcomeMailSent(e) => e.sequence,
            Self::UserProvisioned(e) => e.sequence,
            Self::ProvisioningFailed(e) => e.sequence,
            Self::AccountDisabled(e) => e.sequence,
            Self::AccountEnabled(e) => e.sequence,
            Self::EmailChanged(e) => e.sequence,
            Self::ClaimsUpdated(e) => e.sequence,
            Self::UserErased(e) => e.sequence,
        }
    }

    /// The record's `ce_id` header, stable across republishing (see [`ce_id`]).
    pub fn ce_id(&self) -> Uuid {
        ce_id(self.user_id(), self.sequence())
    }

    /// The record's value: the JSON of the event's struct, as its schema describes it.
    pub fn to_json(&self) -> Vec<u8> {
        let value = match self {
            Self::UserInvited(e) => serde_json::to_vec(e),
            Self::CodeIssued(e) => serde_json::to_vec(e),
            Self::PasswordSet(e) => serde_json::to_vec(e),
            Self::UserActivated(e) => serde_json::to_vec(e),
            Self::InvitationMailSent(e) => serde_json::to_vec(e),
            Self::InvitationMailFailed(e) => serde_json::to_vec(e),
            Self::InvitationMailAbandoned(e) => serde_json::to_vec(e),
            Self::LinkOpened(e) => serde_json::to_vec(e),
            Self::CodeCheckFailed(e) => serde_json::to_vec(e),
            Self::CodeLocked(e) => serde_json::to_vec(e),
            Self::CodeExpired(e) => serde_json::to_vec(e),
            Self::InvitationRevoked(e) => serde_json::to_vec(e),
            Self::WelcomeMailSent(e) => serde_json::to_vec(e),
            Self::UserProvisioned(e) => serde_json::to_vec(e),
            Self::ProvisioningFailed(e) => serde_json::to_vec(e),
            Self::AccountDisabled(e) => serde_json::to_vec(e),
            Self::AccountEnabled(e) => serde_json::to_vec(e),
            Self::EmailChanged(e) => serde_json::to_vec(e),
            Self::ClaimsUpdated(e) => serde_json::to_vec(e),
            Self::UserErased(e) => serde_json::to_vec(e),
        };
        value.expect("public events always serialise")
    }

    /// Parses a record's value given its `ce_type` header.
    pub fn parse(ce_type: &str, value: &[u8]) -> Result<Self, ContractError> {
        fn de<T: serde::de::DeserializeOwned>(t: &str, v: &[u8]) -> Result<T, ContractError> {
            serde_json::from_slice(v).map_err(|e| ContractError::BadPayload {
                ce_type: t.to_owned(),
                reason: e.to_string(),
            })
        }
        Ok(match ce_type {
            UserInvitedV1::TYPE => Self::UserInvited(de(ce_type, value)?),
            CodeIssuedV1::TYPE => Self::CodeIssued(de(ce_type, value)?),
            PasswordSetV1::TYPE => Self::PasswordSet(de(ce_type, value)?),
            UserActivatedV1::TYPE => Self::UserActivated(de(ce_type, value)?),
            InvitationMailSentV1::TYPE => Self::InvitationMailSent(de(ce_type, value)?),
            InvitationMailFailedV1::TYPE => Self::InvitationMailFailed(de(ce_type, value)?),
            InvitationMailAbandonedV1::TYPE => Self::InvitationMailAbandoned(de(ce_type, value)?),
            LinkOpenedV1::TYPE => Self::LinkOpened(de(ce_type, value)?),
            CodeCheckFailedV1::TYPE => Self::CodeCheckFailed(de(ce_type, value)?),
            CodeLockedV1::TYPE => Self::CodeLocked(de(ce_type, value)?),
            CodeExpiredV1::TYPE => Self::CodeExpired(de(ce_type, value)?),
            InvitationRevokedV1::TYPE => Self::InvitationRevoked(de(ce_type, value)?),
            WelcomeMailSentV1::TYPE => Self::WelcomeMailSent(de(ce_type, value)?),
            UserProvisionedV1::TYPE => Self::UserProvisioned(de(ce_type, value)?),
            ProvisioningFailedV1::TYPE => Self::ProvisioningFailed(de(ce_type, value)?),
            AccountDisabledV1::TYPE => Self::AccountDisabled(de(ce_type, value)?),
            AccountEnabledV1::TYPE => Self::AccountEnabled(de(ce_type, value)?),
            EmailChangedV1::TYPE => Self::EmailChanged(de(ce_type, value)?),
            ClaimsUpdatedV1::TYPE => Self::ClaimsUpdated(de(ce_type, value)?),
            UserErasedV1::TYPE => Self::UserErased(de(ce_type, value)?),
            other => return Err(ContractError::UnknownType(other.to_owned())),
        })
    }
}

/// The JSON Schema of each public type, keyed by file name (`<ce_type>.json`).
pub fn schemas() -> Vec<(String, serde_json::Value)> {
    fn one<T: JsonSchema>(ce_type: &str) -> (String, serde_json::Value) {
        let mut schema = serde_json::to_value(schemars::schema_for!(T)).expect("schema serialises");
        if let Some(obj) = schema.as_object_mut() {
            obj.insert(
                "$id".into(),
                serde_json::Value::String(format!("urn:onboard:schema:{ce_type}")),
            );
            obj.insert(
                "x-cloudevents-type".into(),
                serde_json::Value::String(ce_type.to_owned()),
            );
        }
        (format!("{ce_type}.json"), schema)
    }
    vec![
        one::<UserInvitedV1>(UserInvitedV1::TYPE),
        one::<CodeIssuedV1>(CodeIssuedV1::TYPE),
        one::<PasswordSetV1>(PasswordSetV1::TYPE),
        one::<UserActivatedV1>(UserActivatedV1::TYPE),
        one::<InvitationMailSentV1>(InvitationMailSentV1::TYPE),
        one::<InvitationMailFailedV1>(InvitationMailFailedV1::TYPE),
        one::<InvitationMailAbandonedV1>(InvitationMailAbandonedV1::TYPE),
        one::<LinkOpenedV1>(LinkOpenedV1::TYPE),
        one::<CodeCheckFailedV1>(CodeCheckFailedV1::TYPE),
        one::<CodeLockedV1>(CodeLockedV1::TYPE),
        one::<CodeExpiredV1>(CodeExpiredV1::TYPE),
        one::<InvitationRevokedV1>(InvitationRevokedV1::TYPE),
        one::<WelcomeMailSentV1>(WelcomeMailSentV1::TYPE),
        one::<UserProvisionedV1>(UserProvisionedV1::TYPE),
        one::<ProvisioningFailedV1>(ProvisioningFailedV1::TYPE),
        one::<AccountDisabledV1>(AccountDisabledV1::TYPE),
        one::<AccountEnabledV1>(AccountEnabledV1::TYPE),
        one::<EmailChangedV1>(EmailChangedV1::TYPE),
        one::<ClaimsUpdatedV1>(ClaimsUpdatedV1::TYPE),
        one::<UserErasedV1>(UserErasedV1::TYPE),
    ]
}

/// Shapes of stored events (`events.payload`) that this build no longer writes, kept so that
/// their schemas stay generated from Rust types. Rows of these versions are upcast on load
/// (`onboarding_store::upcasters`).
pub mod stored_history {
    use super::*;

    /// `PasswordSet` 1.0, which held the password's argon2id hash (docs/adr/0018): rows of this
    /// version keep it, `onboard audit export` and `onboard events` redact it.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub enum PasswordSetV1_0 {
        /// The user chose a password (the 1.0 shape).
        PasswordSet {
            /// The code whose link set the password.
            code_id: onboarding_domain::code::CodeId,
            /// The argon2id hash (PHC string).
            password_hash: String,
            /// When the password was set.
            set_at: DateTime<Utc>,
        },
    }

    /// `InvitationMailFailed` 1.0, before attempts were counted.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub enum InvitationMailFailedV1_0 {
        /// One attempt at the invitation mail for a code failed (the 1.0 shape).
        InvitationMailFailed {
            /// The code whose mail failed.
            code_id: onboarding_domain::code::CodeId,
            /// What went wrong, as the mailer reported it.
            reason: String,
            /// Whether retrying cannot help.
            permanent: bool,
            /// When the attempt failed.
            failed_at: DateTime<Utc>,
        },
    }

    /// `UserInvited` 1.0, before `time_zone` was added.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub enum UserInvitedV1_0 {
        /// An account was invited (the 1.0 shape).
        UserInvited {
            /// The account's id.
            user_id: Uuid,
            /// The username as given.
            username: String,
            /// Where the account's mails go.
            email: String,
            /// The user store domain, upper case.
            domain: String,
            /// Language of the user's mails and pages, if one was chosen.
            locale: Option<String>,
            /// Attributes kept with the account.
            #[serde(default)]
            claims: BTreeMap<String, serde_json::Value>,
            /// When the account was invited.
            invited_at: DateTime<Utc>,
        },
    }
}

/// The JSON Schema of every stored event type and version (`events.payload`), keyed by file
/// name (`<event_type>.<event_version>.json`): the current versions from
/// `onboarding_domain::OnboardingEvent`, older ones from [`stored_history`].
pub fn stored_schemas() -> Vec<(String, serde_json::Value)> {
    fn split(
        root: serde_json::Value,
        version: impl Fn(&str) -> String,
    ) -> Vec<(String, serde_json::Value)> {
        let defs = root.get("$defs").cloned();
        let variants = match root.get("oneOf").and_then(|v| v.as_array()) {
            Some(all) => all.clone(),
            None => vec![root.clone()],
        };
        variants
            .into_iter()
            .filter_map(|mut variant| {
                let name = variant
                    .get("properties")?
                    .as_object()?
                    .keys()
                    .next()?
                    .clone();
                let version = version(&name);
                seal_in_schema(&mut variant, &name);
                let obj = variant.as_object_mut()?;
                obj.insert(
                    "$schema".into(),
                    "https://json-schema.org/draft/2020-12/schema".into(),
                );
                obj.insert(
                    "$id".into(),
                    format!("urn:onboard:stored:{name}:{version}").into(),
                );
                obj.insert("title".into(), format!("{name} {version}").into());
                if let Some(defs) = &defs {
                    obj.insert("$defs".into(), defs.clone());
                }
                Some((format!("{name}.{version}.json"), variant))
            })
            .collect()
    }
    /// A stored payload holds an event's personal fields in clear (written before
    /// docs/adr/0030) or sealed: without them, and with `sealed`, the ciphertext that holds them.
    fn seal_in_schema(variant: &mut serde_json::Value, name: &str) {
        let personal = OnboardingEvent::personal_fields(name);
        let Some(fields) = variant
            .pointer_mut(&format!("/properties/{name}"))
            .and_then(|f| f.as_object_mut())
        else {
            return;
        };
        if personal.is_empty() {
            return;
        }
        if let Some(required) = fields.get_mut("required").and_then(|r| r.as_array_mut()) {
            required.retain(|r| !personal.iter().any(|p| r == p));
        }
        if let Some(properties) = fields.get_mut("properties").and_then(|p| p.as_object_mut()) {
            properties.insert(
                "sealed".into(),
                serde_json::json!({
                    "description": format!(
                        "The personal fields ({}) as one JSON object, sealed with the user's data \
                         key: base64 of a 12-byte nonce and the AES-256-GCM ciphertext \
                         (docs/adr/0030). Absent in events written before sealing, which hold \
                         the fields in clear.",
                        personal.join(", ")
                    ),
                    "type": "string",
                    "contentEncoding": "base64"
                }),
            );
        }
    }
    let current =
        serde_json::to_value(schemars::schema_for!(OnboardingEvent)).expect("schema serialises");
    let mut all = split(current, |name| OnboardingEvent::version_of(name).to_owned());
    let v1 = serde_json::to_value(schemars::schema_for!(stored_history::UserInvitedV1_0))
        .expect("schema serialises");
    all.extend(split(v1, |_| "1.0".to_owned()));
    let failed_v1 = serde_json::to_value(schemars::schema_for!(
        stored_history::InvitationMailFailedV1_0
    ))
    .expect("schema serialises");
    all.extend(split(failed_v1, |_| "1.0".to_owned()));
    let password_v1 = serde_json::to_value(schemars::schema_for!(stored_history::PasswordSetV1_0))
        .expect("schema serialises");
    all.extend(split(password_v1, |_| "1.0".to_owned()));
    all
}

/// For the tests that keep `schemas/` in step with the types (here and in `onboarding-intake`):
/// fails on a file under `schemas/<sub>/` that is stale, missing or generated by no type, and
/// with `UPDATE_SCHEMAS=1` in the environment writes the files first.
#[doc(hidden)]
pub fn check_committed_schemas(
    sub: &str,
    package: &str,
    schemas: Vec<(String, serde_json::Value)>,
) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas")
        .join(sub);
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let generated: Vec<String> = schemas.iter().map(|(f, _)| f.clone()).collect();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".json") || generated.contains(&name),
            "schemas/{sub}/{name} is generated by no type; delete it if its type was removed"
        );
    }
    for (file, schema) in schemas {
        let path = dir.join(&file);
        let text = serde_json::to_string_pretty(&schema).expect("a schema serialises") + "\n";
        if update {
            std::fs::create_dir_all(&dir).expect("schemas/ is writable");
            std::fs::write(&path, &text).expect("schemas/ is writable");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed, text,
            "schemas/{sub}/{file} is stale; run UPDATE_SCHEMAS=1 cargo test -p {package}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onboarding_domain::code::CodeId;
    use onboarding_domain::password::PasswordHash;

    #[test]
    fn the_password_hash_never_reaches_the_public_event() {
        let hash = PasswordHash::parse(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$c2VjcmV0IGhhc2ggYnl0ZXM".into(),
        )
        .unwrap();
        // As the aggregate emits it, with the hash on its way to the credential table.
        let e = PublicEvent::from_domain(
            Uuid::nil(),
            3,
            OnboardingEvent::PasswordSet {
                code_id: CodeId::from_random_bytes([1; 16]),
                scheme: hash.scheme(),
                set_at: Utc::now(),
                password_hash: Some(hash),
            },
        );
        let json = String::from_utf8(e.to_json()).unwrap();
        assert!(!json.contains("argon2"), "{json}");
        assert!(!json.contains("c2VjcmV0IGhhc2ggYnl0ZXM"), "{json}");
        assert_eq!(e.ce_type(), "onboard.user.password_set.v1");
    }

    #[test]
    fn the_key_id_stays_internal() {
        let e = PublicEvent::from_domain(
            Uuid::nil(),
            2,
            OnboardingEvent::CodeIssued {
                code_id: CodeId::from_random_bytes([1; 16]),
                key_id: "secret-key-id".into(),
                issued_at: Utc::now(),
                expires_at: Utc::now(),
                reason: CodeIssueReason::Invitation,
            },
        );
        let json = String::from_utf8(e.to_json()).unwrap();
        assert!(!json.contains("secret-key-id"));
        let back = PublicEvent::parse(e.ce_type(), json.as_bytes()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn ce_ids_are_stable_per_user_and_sequence() {
        assert_eq!(ce_id(Uuid::nil(), 1), ce_id(Uuid::nil(), 1));
        assert_ne!(ce_id(Uuid::nil(), 1), ce_id(Uuid::nil(), 2));
    }

    #[test]
    fn unknown_types_and_bad_payloads_are_named() {
        assert!(matches!(
            PublicEvent::parse("x.y", b"{}"),
            Err(ContractError::UnknownType(_))
        ));
        let err = PublicEvent::parse(UserActivatedV1::TYPE, b"{}").unwrap_err();
        assert!(err.to_string().contains("onboard.user.activated.v1"));
    }

    /// `schemas/events/` is generated from these types; regenerate with
    /// `UPDATE_SCHEMAS=1 cargo test -p onboarding-events`.
    #[test]
    fn committed_schemas_match_the_types() {
        check_committed_schemas("events", "onboarding-events", schemas());
        check_committed_schemas("stored", "onboarding-events", stored_schemas());
    }

    #[test]
    fn every_stored_event_type_has_a_schema_of_its_current_version() {
        let files: Vec<String> = stored_schemas().into_iter().map(|(f, _)| f).collect();
        for name in [
            "UserInvited",
            "CodeIssued",
            "PasswordSet",
            "WelcomeMailSent",
        ] {
            let file = format!("{name}.{}.json", OnboardingEvent::version_of(name));
            assert!(files.contains(&file), "{file} missing from {files:?}");
        }
        assert!(files.contains(&"UserInvited.1.0.json".to_owned()));
        assert!(files.contains(&"UserInvited.2.0.json".to_owned()));
    }
}
