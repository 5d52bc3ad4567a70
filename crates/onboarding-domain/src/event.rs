//! Domain events, as stored in the event log. They are internal: the relay maps each one to a
//! public event (crate `onboarding-events`) before anything reaches Kafka.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::code::CodeId;
use crate::password::{HashScheme, PasswordHash};
use crate::value::{EmailAddress, Locale, TimeZone, UserDomain, Username};

/// Why a code was issued: the resend limits count only re-issues, and support staff see who
/// asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodeIssueReason {
    /// The first code, issued with the invitation.
    Invitation,
    /// An admin's resend.
    Resend,
    /// The user asked for a new link from the page of an expired, replaced or locked one.
    UserRequest,
}

/// Which template a mail was rendered from: its id, a version (a digest of its files) and the
/// locale chosen after fallback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TemplateRef {
    /// The template's name (`invitation`, `welcome`).
    pub id: String,
    /// A digest of the template's files: tells which wording a user received.
    pub version: String,
    /// The language actually used, after falling back from the user's locale.
    pub locale: String,
}

/// What happened to an account, as the event log stores it (`events.payload`). The log is the
/// source of truth: the aggregate, the projections and the Kafka topic are all folded from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OnboardingEvent {
    /// An account was invited. Version 2.0 added `time_zone`; stored 1.0 rows are upcast on load
    /// (`time_zone: null`), see `onboarding_store::upcasters`.
    UserInvited {
        /// The account's id (also the aggregate id and the Kafka key).
        user_id: Uuid,
        /// The username as given, unique within its domain ignoring case.
        username: Username,
        /// Where the account's mails go.
        email: EmailAddress,
        /// The user store domain, upper case.
        domain: UserDomain,
        /// Language of the user's mails and pages, if one was chosen.
        locale: Option<Locale>,
        /// IANA zone in which mails state times, if one was chosen.
        time_zone: Option<TimeZone>,
        /// Attributes kept with the account; the name claims also feed the password policy.
        #[serde(default)]
        claims: BTreeMap<String, serde_json::Value>,
        /// When the account was invited.
        invited_at: DateTime<Utc>,
    },
    /// A code was issued; any earlier code is dead from now on. No secret: the link token is
    /// derived from these fields with a key only the engine holds.
    CodeIssued {
        /// The code's public, random id.
        code_id: CodeId,
        /// The key that signs the link; internal, dropped from the public event.
        key_id: String,
        /// When it was issued; the resend limits count from it.
        issued_at: DateTime<Utc>,
        /// When the link stops working; computed once, here.
        expires_at: DateTime<Utc>,
        /// Why it was issued.
        reason: CodeIssueReason,
    },
    /// The user chose a password: the fact, and how it was hashed. Version 2.0 moved the hash
    /// itself out of the log into the `credentials` table, which can be replaced and erased
    /// (docs/adr/0018); stored 1.0 rows still hold it and are upcast on load (the hash dropped,
    /// its scheme read from it), see `onboarding_store::upcasters`.
    PasswordSet {
        /// The code whose link set the password.
        code_id: CodeId,
        /// The algorithm and cost parameters the password was hashed with (no salt, no hash).
        scheme: HashScheme,
        /// When the password was set.
        set_at: DateTime<Utc>,
        /// The hash, on its way to the store only: the store's `credentials_take_the_hash`
        /// trigger moves it into `credentials` in the append's transaction and removes it from
        /// the payload before the row is hashed into the chain, copied to the outbox or stored.
        /// Always `None` in an event read back from the log.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(skip)]
        password_hash: Option<PasswordHash>,
    },
    /// The account became active, in the same command as `PasswordSet`: downstream services may
    /// let the user in.
    UserActivated {
        /// When the account became active.
        activated_at: DateTime<Utc>,
    },
    /// The link was opened. `client` is a coarse class (browser, scanner, …); no address.
    LinkOpened {
        /// The genuine code whose link was opened.
        code_id: CodeId,
        /// What opened it, as a coarse class: tells a mail scanner's visit from the user's.
        client: String,
        /// When it was opened.
        opened_at: DateTime<Utc>,
    },
    /// A wrong tag was presented for the live code. Written only before docs/adr/0021: wrong
    /// tags are now counted in metrics, not in the log; kept so that older logs still load.
    CodeCheckFailed {
        /// The live code that was guessed at.
        code_id: CodeId,
        /// Wrong tags for this code so far; at the then `max_failed_attempts` the code locked.
        failures: u32,
        /// When the wrong tag was presented.
        failed_at: DateTime<Utc>,
    },
    /// Too many wrong codes: the live code is dead. Written only before docs/adr/0021 (a wrong
    /// tag no longer locks a code); a new code lifts it.
    CodeLocked {
        /// The code that was disabled.
        code_id: CodeId,
        /// When it was disabled.
        locked_at: DateTime<Utc>,
    },
    /// The live code passed `expired_at` (written by the scheduler, after the fact).
    CodeExpired {
        /// The code that expired.
        code_id: CodeId,
        /// The code's expiry, not when the scheduler noticed.
        expired_at: DateTime<Utc>,
    },
    /// The invitation was withdrawn by an admin or declined by the user. Final; the username is
    /// free again.
    InvitationRevoked {
        /// Who withdrew it.
        by: crate::aggregate::RevokedBy,
        /// The admin's note, if any.
        reason: Option<String>,
        /// When it was withdrawn.
        revoked_at: DateTime<Utc>,
    },
    /// An active account was switched off (SCIM `active: false`): downstream services must not
    /// let the user in.
    AccountDisabled {
        /// When it was disabled.
        disabled_at: DateTime<Utc>,
    },
    /// A disabled account was switched on again: it is active.
    AccountEnabled {
        /// When it was enabled.
        enabled_at: DateTime<Utc>,
    },
    /// Mails go to another address from now on. For an open invitation a `CodeIssued` follows
    /// in the same command, so the new address gets a new link and the old link is dead.
    EmailChanged {
        /// The new address.
        email: EmailAddress,
        /// When it was changed.
        changed_at: DateTime<Utc>,
    },
    /// The account's claims were replaced as a whole (the name parts, the display name, the
    /// externalId).
    ClaimsUpdated {
        /// The claims from now on.
        claims: BTreeMap<String, serde_json::Value>,
        /// When they were replaced.
        updated_at: DateTime<Utc>,
    },
    /// The SMTP server accepted the invitation mail for a code.
    InvitationMailSent {
        /// The code whose link the mail carried.
        code_id: CodeId,
        /// The mail's Message-ID header, to find it in mail logs.
        message_id: String,
        /// The SMTP server's answer, as proof of acceptance.
        smtp_response: String,
        /// The template the mail was rendered from (absent in events from before it was recorded).
        #[serde(default)]
        template: Option<TemplateRef>,
        /// When the server accepted it.
        sent_at: DateTime<Utc>,
    },
    /// The "your account is ready" mail went out after activation.
    WelcomeMailSent {
        /// The mail's Message-ID header, to find it in mail logs.
        message_id: String,
        /// The template the mail was rendered from.
        template: TemplateRef,
        /// When the server accepted it.
        sent_at: DateTime<Utc>,
    },
    /// Version 1.1 added `attempt` and `next_attempt_at`; stored 1.0 rows are upcast on load
    /// (`attempt: 0`, `next_attempt_at: null`), see `onboarding_store::upcasters`.
    InvitationMailFailed {
        /// The code whose mail failed.
        code_id: CodeId,
        /// What went wrong, as the mailer reported it.
        reason: String,
        /// Whether retrying cannot help (for example, the recipient was refused).
        permanent: bool,
        /// When the attempt failed.
        failed_at: DateTime<Utc>,
        /// Which attempt failed (1 for the first); 0 in events recorded before attempts were counted.
        #[serde(default)]
        attempt: u32,
        /// When the mail will be tried again; none when it will not (permanent, or given up).
        #[serde(default)]
        next_attempt_at: Option<DateTime<Utc>>,
    },
    /// The worker gave up on the invitation mail for this code: a permanent failure, or the
    /// attempts or the time allowed ran out. A resend issues a new code and tries again.
    InvitationMailAbandoned {
        /// The code whose mail was given up.
        code_id: CodeId,
        /// Why the worker gave up.
        reason: String,
        /// How many attempts were made.
        attempts: u32,
        /// When the worker gave up.
        abandoned_at: DateTime<Utc>,
    },
    /// The active account's entry was written to the user store (added, or brought up to date
    /// with what the engine holds). Recorded once per account.
    UserProvisioned {
        /// The kind of user store (`read_write_ldap_unique_id`).
        user_store: String,
        /// How many attempts it took (1 when the first one succeeded).
        attempts: u32,
        /// When the user store accepted the entry.
        provisioned_at: DateTime<Utc>,
    },
    /// The user's personal data was erased (docs/adr/0030): her data key is destroyed, so the
    /// personal fields sealed in her earlier events can no longer be read; her credential, her
    /// user store entry and the projections' personal columns are gone. Final.
    UserErased {
        /// When the erasure was recorded.
        erased_at: DateTime<Utc>,
    },
    /// An attempt to write the active account's entry to the user store failed. A transient
    /// failure (the directory is down) is retried until it succeeds; a permanent one (the
    /// directory refuses the entry) waits for an operator.
    ProvisioningFailed {
        /// The kind of user store (`read_write_ldap_unique_id`).
        user_store: String,
        /// What went wrong, as the directory or the connection reported it (no personal data).
        reason: String,
        /// Whether retrying cannot help (the directory refused the entry itself).
        permanent: bool,
        /// Which attempt failed (1 for the first).
        attempt: u32,
        /// When the attempt failed.
        failed_at: DateTime<Utc>,
    },
}

impl OnboardingEvent {
    /// The version of every event type that has not changed shape since the first release.
    pub const VERSION: &'static str = "1.0";
    /// `UserInvited` gained `time_zone`.
    pub const USER_INVITED_VERSION: &'static str = "2.0";
    /// `InvitationMailFailed` gained `attempt` and `next_attempt_at`.
    pub const INVITATION_MAIL_FAILED_VERSION: &'static str = "1.1";
    /// `PasswordSet` holds the hash's scheme instead of the hash.
    pub const PASSWORD_SET_VERSION: &'static str = "2.0";

    /// The version this build writes for each event type.
    pub fn version_of(event_type: &str) -> &'static str {
        match event_type {
            "UserInvited" => Self::USER_INVITED_VERSION,
            "InvitationMailFailed" => Self::INVITATION_MAIL_FAILED_VERSION,
            "PasswordSet" => Self::PASSWORD_SET_VERSION,
            _ => Self::VERSION,
        }
    }

    /// The fields of an event type that name or describe a person, or may quote such a field
    /// (an SMTP answer or a directory's refusal can echo the address or the DN). The store seals
    /// them with the user's data key before the event is stored and opens them when it is read;
    /// once her key is destroyed they stay sealed for good (docs/adr/0030). Kafka carries the
    /// public forms of the same fields in clear (docs/kafka.md, "Personal data").
    pub fn personal_fields(event_type: &str) -> &'static [&'static str] {
        match event_type {
            "UserInvited" => &["username", "email", "claims"],
            // SCIM's changes of an invited user's address and attributes.
            "EmailChanged" => &["email"],
            "ClaimsUpdated" => &["claims"],
            "InvitationRevoked" => &["reason"],
            "InvitationMailSent" => &["smtp_response"],
            "InvitationMailFailed" | "InvitationMailAbandoned" | "ProvisioningFailed" => {
                &["reason"]
            }
            _ => &[],
        }
    }

    /// The event's type name, stored as `events.event_type` and used to pick its version.
    pub fn name(&self) -> &'static str {
        match self {
            Self::UserInvited { .. } => "UserInvited",
            Self::CodeIssued { .. } => "CodeIssued",
            Self::PasswordSet { .. } => "PasswordSet",
            Self::UserActivated { .. } => "UserActivated",
            Self::InvitationMailSent { .. } => "InvitationMailSent",
            Self::WelcomeMailSent { .. } => "WelcomeMailSent",
            Self::InvitationMailFailed { .. } => "InvitationMailFailed",
            Self::InvitationMailAbandoned { .. } => "InvitationMailAbandoned",
            Self::LinkOpened { .. } => "LinkOpened",
            Self::CodeCheckFailed { .. } => "CodeCheckFailed",
            Self::CodeLocked { .. } => "CodeLocked",
            Self::CodeExpired { .. } => "CodeExpired",
            Self::InvitationRevoked { .. } => "InvitationRevoked",
            Self::UserProvisioned { .. } => "UserProvisioned",
            Self::ProvisioningFailed { .. } => "ProvisioningFailed",
            Self::AccountDisabled { .. } => "AccountDisabled",
            Self::AccountEnabled { .. } => "AccountEnabled",
            Self::EmailChanged { .. } => "EmailChanged",
            Self::ClaimsUpdated { .. } => "ClaimsUpdated",
            Self::UserErased { .. } => "UserErased",
        }
    }
}

impl DomainEvent for OnboardingEvent {
    fn event_type(&self) -> String {
        self.name().to_owned()
    }

    fn event_version(&self) -> String {
        Self::version_of(self.name()).to_owned()
    }
}
