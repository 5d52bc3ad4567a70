//! Domain events, as stored in the event log. They are internal: the relay maps each one to a
//! public event (crate `onboarding-events`) before anything reaches Kafka.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::code::CodeId;
use crate::password::PasswordHash;
use crate::value::{EmailAddress, Locale, TimeZone, UserDomain, Username};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodeIssueReason {
    Invitation,
    Resend,
    /// The user asked for a new link from the page of an expired, replaced or locked one.
    UserRequest,
}

/// Which template a mail was rendered from: its id, a version (a digest of its files) and the
/// locale chosen after fallback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TemplateRef {
    pub id: String,
    pub version: String,
    pub locale: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum OnboardingEvent {
    /// Version 2.0 added `time_zone`; stored 1.0 rows are upcast on load (`time_zone: null`),
    /// see `onboarding_store::upcasters`.
    UserInvited {
        user_id: Uuid,
        username: Username,
        email: EmailAddress,
        domain: UserDomain,
        locale: Option<Locale>,
        time_zone: Option<TimeZone>,
        #[serde(default)]
        claims: BTreeMap<String, serde_json::Value>,
        invited_at: DateTime<Utc>,
    },
    /// A code was issued; any earlier code is dead from now on. No secret: the link token is
    /// derived from these fields with a key only the engine holds.
    CodeIssued {
        code_id: CodeId,
        key_id: String,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        reason: CodeIssueReason,
    },
    /// The argon2id hash lives here, in the event store only; the relay drops it.
    PasswordSet {
        code_id: CodeId,
        password_hash: PasswordHash,
        set_at: DateTime<Utc>,
    },
    UserActivated {
        activated_at: DateTime<Utc>,
    },
    /// The link was opened. `client` is a coarse class (browser, scanner, …); no address.
    LinkOpened {
        code_id: CodeId,
        client: String,
        opened_at: DateTime<Utc>,
    },
    CodeCheckFailed {
        code_id: CodeId,
        failures: u32,
        failed_at: DateTime<Utc>,
    },
    /// Too many wrong codes: the live code is dead.
    CodeLocked {
        code_id: CodeId,
        locked_at: DateTime<Utc>,
    },
    /// The live code passed `expired_at` (written by the scheduler, after the fact).
    CodeExpired {
        code_id: CodeId,
        expired_at: DateTime<Utc>,
    },
    InvitationRevoked {
        by: crate::aggregate::RevokedBy,
        reason: Option<String>,
        revoked_at: DateTime<Utc>,
    },
    InvitationMailSent {
        code_id: CodeId,
        message_id: String,
        smtp_response: String,
        #[serde(default)]
        template: Option<TemplateRef>,
        sent_at: DateTime<Utc>,
    },
    /// The "your account is ready" mail went out after activation.
    WelcomeMailSent {
        message_id: String,
        template: TemplateRef,
        sent_at: DateTime<Utc>,
    },
    /// Version 1.1 added `attempt` and `next_attempt_at`; stored 1.0 rows are upcast on load
    /// (`attempt: 0`, `next_attempt_at: null`), see `onboarding_store::upcasters`.
    InvitationMailFailed {
        code_id: CodeId,
        reason: String,
        permanent: bool,
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
        code_id: CodeId,
        reason: String,
        attempts: u32,
        abandoned_at: DateTime<Utc>,
    },
}

impl OnboardingEvent {
    /// The version of every event type that has not changed shape since the first release.
    pub const VERSION: &'static str = "1.0";
    /// `UserInvited` gained `time_zone`.
    pub const USER_INVITED_VERSION: &'static str = "2.0";
    /// `InvitationMailFailed` gained `attempt` and `next_attempt_at`.
    pub const INVITATION_MAIL_FAILED_VERSION: &'static str = "1.1";

    /// The version this build writes for each event type.
    pub fn version_of(event_type: &str) -> &'static str {
        match event_type {
            "UserInvited" => Self::USER_INVITED_VERSION,
            "InvitationMailFailed" => Self::INVITATION_MAIL_FAILED_VERSION,
            _ => Self::VERSION,
        }
    }

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
