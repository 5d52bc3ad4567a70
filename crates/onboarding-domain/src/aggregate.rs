//! The `Onboarding` aggregate: one per account, `Invited → CodeIssued → PasswordSet → Active`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, SubsecRound, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::code::{CodeBinding, CodeId, CodeKeyring, PresentedCode};
use crate::event::{CodeIssueReason, OnboardingEvent, TemplateRef};
use crate::password::{
    Password, PasswordContext, PasswordHash, PasswordPolicy, PasswordRuleViolation,
};
use crate::value::{EmailAddress, Locale, RevokeReason, TimeZone, UserDomain, Username};

/// Where an account is in its onboarding. `Uninvited` is the state of an id nobody invited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnboardingState {
    /// Nobody invited this id; only `InviteUser` applies, every other command is refused.
    #[default]
    Uninvited,
    /// Invited, first code not yet applied. Passing only: `InviteUser` writes `UserInvited` and
    /// the first `CodeIssued` together, so a loaded account is never left here.
    Invited,
    /// A live code exists: its link may set the password until it expires, is replaced or locks.
    CodeIssued,
    /// The live code passed its expiry (written by the scheduler); a new code revives it.
    Expired,
    /// Too many wrong codes: the live code died; a new code revives it.
    Locked,
    /// The invitation was withdrawn by an admin or declined by the user. Final.
    Revoked,
    /// The password was stored. Passing only: `UserActivated` is written in the same command.
    PasswordSet,
    /// The account is ready: downstream services may let the user in.
    Active,
    /// An active account that an administrator or an upstream system (SCIM `active: false`)
    /// switched off: downstream services must not let the user in. `EnableAccount` makes it
    /// active again.
    Disabled,
    /// The user's personal data was erased (crypto-shredded, docs/adr/0030): her data key, her
    /// credential, her user store entry and the projections' personal columns are gone. Final;
    /// every command is refused.
    Erased,
}

impl OnboardingState {
    /// Every state, in lifecycle order, so that [`OnboardingState::parse`] knows them all.
    pub const ALL: [Self; 10] = [
        Self::Uninvited,
        Self::Invited,
        Self::CodeIssued,
        Self::Expired,
        Self::Locked,
        Self::Revoked,
        Self::PasswordSet,
        Self::Active,
        Self::Disabled,
        Self::Erased,
    ];

    /// Reads a state name as a client writes it (the API's `?state=` filter), ignoring case;
    /// `None` for a name that is not a state.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// The state's name, as `account_states` stores it and the API and SCIM show it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Uninvited => "Uninvited",
            Self::Invited => "Invited",
            Self::CodeIssued => "CodeIssued",
            Self::Expired => "Expired",
            Self::Locked => "Locked",
            Self::Revoked => "Revoked",
            Self::PasswordSet => "PasswordSet",
            Self::Active => "Active",
            Self::Disabled => "Disabled",
            Self::Erased => "Erased",
        }
    }
}

/// Hashes passwords. The adapter runs the (deliberately slow) hash off the async threads.
#[async_trait]
pub trait PasswordHasher: Send + Sync {
    /// Turns an accepted password into its hash, which `PasswordSet` carries to the store's
    /// `credentials` table (never into the log); the password itself goes no further.
    async fn hash(&self, password: Password) -> Result<PasswordHash, HashingFailed>;
}

/// The hasher could not produce a hash (its pool closed, the hash library failed). The cause is
/// for the adapter's logs; the user is only told to try again ([`OnboardingError::HashingFailed`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashingFailed(pub String);

/// What the aggregate needs from the outside world, injected by the application.
#[derive(Clone)]
pub struct OnboardingServices {
    /// Hashes the password of `SubmitPassword`, off the async threads.
    pub hasher: Arc<dyn PasswordHasher>,
    /// The code keys, to check the tag of every code a user presents.
    pub keyring: Arc<CodeKeyring>,
    /// What a new password must satisfy (from the configuration).
    pub policy: PasswordPolicy,
}

/// A code to issue: its random id (from the OS's CSPRNG), the key that signs it, and how long
/// it lives. `expires_at` is computed once, here, and shown everywhere from the event.
#[derive(Debug, Clone)]
pub struct NewCode {
    /// The code's public id, drawn by the adapter from the OS's CSPRNG (the domain draws nothing).
    pub code_id: CodeId,
    /// The keyring's active key, which will sign the link; recorded so that key rotation keeps
    /// older links verifiable.
    pub key_id: String,
    /// How long the link stays usable; must be positive ([`OnboardingError::InvalidValidity`]).
    pub validity: Duration,
}

/// How often a code may be re-issued for one invitation (admin resends and user requests alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendLimits {
    /// Minimum time between two codes.
    pub cooldown: Duration,
    /// Most re-issued codes in any 24 hours.
    pub daily_cap: u32,
}

/// Who withdrew an invitation: support staff need to tell a withdrawal from a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokedBy {
    /// An administrator, through the API or SCIM.
    Admin,
    /// The user, through the "I didn't expect this" link in the mail.
    User,
}

/// Invite one account and issue its first code: what every way in (API, SCIM, bulk file, CLI,
/// intake) hands to the aggregate once its fields were parsed.
#[derive(Debug)]
pub struct InviteUser {
    /// The account's id: a fresh UUIDv7, or one derived from the request so that a retry meets
    /// the same account (docs/adr/0005).
    pub user_id: Uuid,
    /// Unique within `domain`, ignoring case; the store's username registry enforces it.
    pub username: Username,
    /// Where the invitation, its new links and the welcome mail go.
    pub email: EmailAddress,
    /// The user store domain the account belongs to (`PRIMARY` unless the caller chose one).
    pub domain: UserDomain,
    /// Language of the user's mails and pages; none falls back to the configured default.
    pub locale: Option<Locale>,
    /// Zone in which the mails state the link's expiry; none means UTC.
    pub time_zone: Option<TimeZone>,
    /// Attributes kept with the account and published; the name claims also feed the password
    /// policy (the password must not contain them).
    pub claims: BTreeMap<String, serde_json::Value>,
    /// The first code, issued in the same command as the invitation.
    pub code: NewCode,
    /// The invitation's instant, also the first code's issue time.
    pub now: DateTime<Utc>,
}

/// Everything that can be asked of an account. Each carries its own `now`: the domain reads no
/// clock, so tests and replays decide the time.
#[derive(Debug)]
pub enum OnboardingCommand {
    /// Invite a new account and issue its first code (boxed: it is much larger than the rest).
    InviteUser(Box<InviteUser>),
    /// Issue a new code and kill the previous one at once (an admin's resend).
    ResendCode {
        /// The replacement code.
        code: NewCode,
        /// Cooldown and daily cap, shared with the user's own requests.
        limits: ResendLimits,
        /// When the resend was asked for; the limits count from it.
        now: DateTime<Utc>,
    },
    /// The user, holding any code of this invitation (expired, replaced, locked), asks for a new one.
    RequestNewLink {
        /// The code from the user's link; a genuine tag is the only proof of who asks.
        presented: PresentedCode,
        /// The replacement code.
        code: NewCode,
        /// Cooldown and daily cap, shared with admin resends.
        limits: ResendLimits,
        /// When the user asked; the limits count from it.
        now: DateTime<Utc>,
    },
    /// Someone opened the link (GET or HEAD). Recorded for support staff; changes no state.
    RecordLinkOpened {
        /// The code from the opened link; only a genuine one is recorded.
        presented: PresentedCode,
        /// A coarse class of what opened it (`browser`, `link-scanner`, …), never an address.
        client: String,
        /// When the link was opened.
        now: DateTime<Utc>,
    },
    /// The scheduler found the live code past its expiry.
    ExpireCode {
        /// The scheduler's clock; refused with `CodeNotExpired` while it is before the expiry.
        now: DateTime<Utc>,
    },
    /// An admin (or the user, through [`OnboardingCommand::RevokeWithCode`]) withdraws the
    /// invitation for good; the username becomes free again.
    RevokeInvitation {
        /// Who withdrew it.
        by: RevokedBy,
        /// The admin's note for support staff, if any.
        reason: Option<RevokeReason>,
        /// When it was withdrawn.
        now: DateTime<Utc>,
    },
    /// The user's "I didn't expect this" link: any code of the invitation authenticates it.
    RevokeWithCode {
        /// The code from the mail's decline link.
        presented: PresentedCode,
        /// When the user declined.
        now: DateTime<Utc>,
    },
    /// The user chose a password with the live code: on success the account becomes active.
    SubmitPassword {
        /// The code from the link; it must be the live, unexpired, unlocked one.
        code: PresentedCode,
        /// The chosen password, checked against the policy and then hashed; never stored as is.
        password: Password,
        /// When it was submitted; decides whether the code has expired.
        now: DateTime<Utc>,
    },
    /// Switch an active account off (SCIM `active: false`): downstream services must not let
    /// the user in until it is enabled again.
    DisableAccount {
        /// When it was disabled.
        now: DateTime<Utc>,
    },
    /// Switch a disabled account on again (SCIM `active: true`).
    EnableAccount {
        /// When it was enabled.
        now: DateTime<Utc>,
    },
    /// Mails go to another address from now on. For an invitation that is still open (a live,
    /// expired or locked code), the code is issued again, to the new address: the link mailed to
    /// the old address stops working. The same address again changes nothing.
    ChangeEmail {
        /// The new address.
        email: EmailAddress,
        /// The code that replaces the open invitation's code; unused for an active account.
        code: NewCode,
        /// When the address was changed.
        now: DateTime<Utc>,
    },
    /// Replace the account's claims (the name parts, the display name, the externalId) as a
    /// whole. The same claims again change nothing.
    UpdateClaims {
        /// The account's claims from now on.
        claims: BTreeMap<String, serde_json::Value>,
        /// When they were replaced.
        now: DateTime<Utc>,
    },
    /// The SMTP server accepted the invitation mail for a code (recorded by the email worker).
    RecordMailSent {
        /// The code whose link the mail carried.
        code_id: CodeId,
        /// The mail's Message-ID header, to find it in mail logs.
        message_id: String,
        /// The SMTP server's answer, as proof of acceptance.
        smtp_response: String,
        /// The template the mail was rendered from.
        template: Option<TemplateRef>,
        /// When the server accepted it.
        now: DateTime<Utc>,
    },
    /// The SMTP server accepted the welcome mail sent after activation.
    RecordWelcomeMailSent {
        /// The mail's Message-ID header, to find it in mail logs.
        message_id: String,
        /// The template the mail was rendered from.
        template: TemplateRef,
        /// When the server accepted it.
        now: DateTime<Utc>,
    },
    /// One attempt at the invitation mail for a code failed.
    RecordMailFailed {
        /// The code whose mail failed.
        code_id: CodeId,
        /// What went wrong, as the mailer reported it.
        reason: String,
        /// Whether retrying cannot help (for example, the recipient was refused).
        permanent: bool,
        /// Which attempt failed (1 for the first).
        attempt: u32,
        /// When the worker tries again; none when it will not.
        next_attempt_at: Option<DateTime<Utc>>,
        /// When the attempt failed.
        now: DateTime<Utc>,
    },
    /// The worker gives up on the invitation mail for a code; only a resend tries again.
    RecordMailAbandoned {
        /// The code whose mail is given up.
        code_id: CodeId,
        /// Why: a permanent failure, or the attempts or the time allowed ran out.
        reason: String,
        /// How many attempts were made.
        attempts: u32,
        /// When the worker gave up.
        now: DateTime<Utc>,
    },
    /// The provisioner wrote the active account's entry to the user store.
    RecordProvisioned {
        /// The kind of user store (`read_write_ldap_unique_id`).
        user_store: String,
        /// How many attempts it took.
        attempts: u32,
        /// When the user store accepted the entry.
        now: DateTime<Utc>,
    },
    /// Erase the user's personal data (GDPR Art. 17): the store destroys her data key, her
    /// credential and the projections' personal columns in the same transaction, and the
    /// provisioner removes her user store entry. Allowed in every state but `Uninvited` and
    /// `Erased`.
    EraseUser {
        /// When the erasure was asked for.
        now: DateTime<Utc>,
    },
    /// An attempt to write the active account's entry to the user store failed.
    RecordProvisioningFailed {
        /// The kind of user store (`read_write_ldap_unique_id`).
        user_store: String,
        /// What went wrong (no personal data).
        reason: String,
        /// Whether retrying cannot help.
        permanent: bool,
        /// Which attempt failed (1 for the first).
        attempt: u32,
        /// When the attempt failed.
        now: DateTime<Utc>,
    },
}

/// Every refusal, named. Messages say what to do next; none carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnboardingError {
    /// `InviteUser` for an id that already has an invitation.
    #[error("this user has already been invited")]
    AlreadyInvited,
    /// The command needs an invitation and this id has none.
    #[error("no invitation exists for this user")]
    NotInvited,
    /// The password is already set: no code, resend or revocation applies any more.
    #[error("the account is already active; sign in with your password, or use your organisation's password reset")]
    AlreadyActive,
    /// The presented code is not one this account was issued, or its tag is wrong. Deliberately
    /// says no more, so that a forger learns nothing.
    #[error(
        "the code is not valid; use the link from the most recent email, or ask for a new one"
    )]
    InvalidCode,
    /// A genuine code, but a newer one was issued since: only the latest link works.
    #[error(
        "a newer link has been sent for this account; use the link from the most recent email"
    )]
    CodeSuperseded,
    /// A genuine, latest code whose time ran out; the user can ask for a new link.
    #[error("the link expired at {expired_at}; ask for a new one")]
    CodeExpired {
        /// The code's expiry, shown to the user.
        expired_at: DateTime<Utc>,
    },
    /// The password breaks a rule of the policy; the rule's message tells the user what to change.
    #[error("{0}")]
    WeakPassword(PasswordRuleViolation),
    /// A code was to be issued with a zero or negative validity (a caller's bug or bad input).
    #[error("the code validity must be positive")]
    InvalidValidity,
    /// The latest code was disabled after too many wrong tags; a new link revives the invitation.
    #[error("this link was disabled after too many wrong attempts; ask for a new one")]
    CodeLocked,
    /// The invitation was withdrawn or declined; nothing more can happen to it.
    #[error("this invitation was withdrawn; contact your administrator if you need an account")]
    InvitationRevoked,
    /// A new code was refused by the cooldown or the daily cap (HTTP 429 with `Retry-After`).
    #[error("a new link was sent recently; try again in {retry_after_seconds} seconds")]
    ResendLimited {
        /// Seconds until a new code would be allowed (at least 1).
        retry_after_seconds: i64,
    },
    /// `ExpireCode` came too early, or there is no live code to expire (the scheduler raced a
    /// resend or a password).
    #[error("the code has not expired yet")]
    CodeNotExpired,
    /// A second welcome mail was recorded; it is sent once.
    #[error("the welcome mail is already recorded as sent")]
    WelcomeAlreadySent,
    /// A welcome mail was recorded for an account that is not active.
    #[error("the account is not active yet")]
    NotActive,
    /// An outcome arrived for a code whose mail is already recorded as sent (a record delivered
    /// twice): each code gets one "sent", and the worker skips the second mail.
    #[error("the mail for code {0} is already recorded as sent")]
    MailAlreadySent(CodeId),
    /// A mail outcome named a code this account was not issued.
    #[error("code {0} was never issued to this user")]
    UnknownCode(CodeId),
    /// The account is disabled: it must be enabled before anything else is asked of it.
    #[error("the account is disabled; an administrator can enable it again")]
    AccountDisabled,
    /// `EnableAccount` for an account that is not disabled.
    #[error("the account is not disabled")]
    NotDisabled,
    /// The hasher failed; nothing was stored and the user may simply try again.
    #[error("the password could not be stored; please try again in a moment")]
    HashingFailed,
    /// The account's entry is already recorded as provisioned: it is provisioned once, and a
    /// provisioner that wrote it again (a redelivered record) has nothing more to record.
    #[error("the account is already provisioned into the user store")]
    AlreadyProvisioned,
    /// The account's personal data was erased: nothing is kept that a command could act on.
    #[error("this account was erased; nothing more can happen to it")]
    Erased,
}

/// Where the active account's entry in the user store stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Provisioning {
    /// Active, not yet in the user store: the provisioner writes it when it reads the activation
    /// (with no `[user_store]` configured, nothing does).
    Pending,
    /// The user store holds the entry.
    Provisioned {
        /// When the user store accepted it.
        at: DateTime<Utc>,
        /// The kind of user store.
        user_store: String,
        /// How many attempts it took.
        attempts: u32,
    },
    /// The last attempt failed; a transient failure is being retried, a permanent one waits for
    /// an operator.
    Failed {
        /// When the attempt failed.
        at: DateTime<Utc>,
        /// What went wrong.
        reason: String,
        /// Whether retrying cannot help.
        permanent: bool,
        /// Which attempt failed.
        attempt: u32,
    },
}

impl Provisioning {
    /// The status's name, as `account_states.provisioning` stores it and the API filters by it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Provisioned { .. } => "provisioned",
            Self::Failed { .. } => "failed",
        }
    }
}

/// One code issued to the account; the last one is the live one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCode {
    /// The code's public id, which the link token names.
    pub code_id: CodeId,
    /// The key that signed the code's link, needed to verify it.
    pub key_id: String,
    /// When it was issued; the resend limits count from it.
    pub issued_at: DateTime<Utc>,
    /// When its link stops working; also part of what the tag signs.
    pub expires_at: DateTime<Utc>,
    /// Why it was issued; only re-issues count towards the daily cap.
    #[serde(default = "invitation_reason")]
    pub reason: CodeIssueReason,
}

fn invitation_reason() -> CodeIssueReason {
    CodeIssueReason::Invitation
}

/// What became of the mail for the live code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EmailDelivery {
    /// The code was issued; the email worker has not reported on its mail yet.
    Queued,
    /// The SMTP server accepted the mail.
    Sent {
        /// When the server accepted it.
        at: DateTime<Utc>,
        /// The mail's Message-ID header, to find it in mail logs.
        message_id: String,
    },
    /// The last attempt failed; see `next_attempt_at` for whether another follows.
    Failed {
        /// When the attempt failed.
        at: DateTime<Utc>,
        /// What went wrong, as the mailer reported it.
        reason: String,
        /// Whether retrying cannot help.
        permanent: bool,
        /// Which attempt failed (0 when recorded before attempts were counted).
        attempt: u32,
        /// When the worker tries again; none when it will not.
        next_attempt_at: Option<DateTime<Utc>>,
    },
    /// Given up: no further attempt for this code. A resend issues a new code and tries again.
    Abandoned {
        /// When the worker gave up.
        at: DateTime<Utc>,
        /// Why it gave up.
        reason: String,
        /// How many attempts were made.
        attempts: u32,
    },
}

/// One account's onboarding, folded from its events: what `handle` decides on and what the API,
/// the pages and the email worker read. The `Option` fields are `None` until `UserInvited`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Onboarding {
    /// Where the account is; decides which commands are allowed.
    pub state: OnboardingState,
    /// The account's id; every code's tag is bound to it.
    pub user_id: Option<Uuid>,
    /// The invited username; the password must not contain it.
    pub username: Option<Username>,
    /// Where mails go; the password must not contain its local part.
    pub email: Option<EmailAddress>,
    /// The user store domain, part of the username's uniqueness.
    pub domain: Option<UserDomain>,
    /// Language of the mails and pages, if the invitation chose one.
    pub locale: Option<Locale>,
    /// Zone for the times shown to the user, if the invitation chose one.
    #[serde(default)]
    pub time_zone: Option<TimeZone>,
    /// The invitation's claims; [`Onboarding::display_names`] reads the name claims.
    pub claims: BTreeMap<String, serde_json::Value>,
    /// When the account was invited.
    pub created_at: Option<DateTime<Utc>>,
    /// Every code issued, oldest first; the last is the live one while the state allows.
    pub codes: Vec<IssuedCode>,
    /// Wrong codes recorded for the live code (only logs written before docs/adr/0021 record
    /// them).
    pub failed_checks: u32,
    /// How often a genuine link was opened, for support staff.
    pub links_opened: u32,
    /// Who revoked the invitation and when, once it is revoked.
    pub revoked: Option<(RevokedBy, DateTime<Utc>)>,
    /// The codes whose invitation mail went out: a second "sent" for one of them is refused.
    pub mails_sent: Vec<CodeId>,
    /// What became of the live code's mail; shown by the API.
    pub delivery: Option<EmailDelivery>,
    /// When the password was set.
    pub password_set_at: Option<DateTime<Utc>>,
    /// When the account became active.
    pub activated_at: Option<DateTime<Utc>>,
    /// When the welcome mail went out; its presence stops a second one.
    pub welcome_sent_at: Option<DateTime<Utc>>,
    /// Where the account's entry in the user store stands; `None` until the account is active.
    #[serde(default)]
    pub provisioning: Option<Provisioning>,
    /// When the account was disabled, while it is.
    #[serde(default)]
    pub disabled_at: Option<DateTime<Utc>>,
    /// When the user's personal data was erased.
    #[serde(default)]
    pub erased_at: Option<DateTime<Utc>>,
}

impl Onboarding {
    /// The live code: the last one issued, while the account is not yet active.
    pub fn live_code(&self) -> Option<&IssuedCode> {
        match self.state {
            OnboardingState::CodeIssued => self.codes.last(),
            _ => None,
        }
    }

    /// The state as the views show it at `now`: a live code past its expiry makes the account
    /// `Expired` from that instant on (the instant [`Onboarding::check_code`] refuses the code
    /// from), not from the scheduler's next pass, which records `CodeExpired` later.
    pub fn state_at(&self, now: DateTime<Utc>) -> OnboardingState {
        match self.live_code() {
            Some(code) if now >= code.expires_at => OnboardingState::Expired,
            _ => self.state,
        }
    }

    /// The live code at `now`: [`Onboarding::live_code`] while it has not expired, so that a
    /// view shows the same before and after the scheduler recorded the expiry.
    pub fn live_code_at(&self, now: DateTime<Utc>) -> Option<&IssuedCode> {
        self.live_code().filter(|code| now < code.expires_at)
    }

    /// The user's names from the invitation's claims (`name`, `given_name`, …).
    pub fn display_names(&self) -> Vec<&str> {
        [
            "name",
            "display_name",
            "given_name",
            "family_name",
            "nickname",
        ]
        .iter()
        .filter_map(|k| self.claims.get(*k).and_then(|v| v.as_str()))
        .collect()
    }

    /// Whether the invitation mail for this code already went out: the email worker skips it.
    pub fn mail_sent_for(&self, code_id: CodeId) -> bool {
        self.mails_sent.contains(&code_id)
    }

    /// An outcome of a code's mail (sent, failed, abandoned) can be recorded only for a code this
    /// account issued and whose mail is not recorded as sent.
    fn mail_still_due(&self, code_id: CodeId) -> Result<(), OnboardingError> {
        if !self.codes.iter().any(|c| c.code_id == code_id) {
            return Err(OnboardingError::UnknownCode(code_id));
        }
        if self.mail_sent_for(code_id) {
            return Err(OnboardingError::MailAlreadySent(code_id));
        }
        Ok(())
    }

    fn issue(
        &self,
        code: NewCode,
        now: DateTime<Utc>,
        reason: CodeIssueReason,
    ) -> Result<OnboardingEvent, OnboardingError> {
        if code.validity <= Duration::zero() {
            return Err(OnboardingError::InvalidValidity);
        }
        Ok(OnboardingEvent::CodeIssued {
            code_id: code.code_id,
            key_id: code.key_id,
            issued_at: now,
            expires_at: now + code.validity,
            reason,
        })
    }

    /// Finds the issued code a presented token names and checks its tag.
    fn authenticate(
        &self,
        presented: &PresentedCode,
        keyring: &CodeKeyring,
    ) -> Result<&IssuedCode, OnboardingError> {
        let user_id = self.user_id.ok_or(OnboardingError::NotInvited)?;
        let issued = self
            .codes
            .iter()
            .find(|c| c.code_id == presented.code_id)
            .ok_or(OnboardingError::InvalidCode)?;
        let binding = CodeBinding {
            user_id,
            code_id: issued.code_id,
            expires_at: issued.expires_at,
        };
        if keyring.verify(&issued.key_id, &binding, presented) {
            Ok(issued)
        } else {
            Err(OnboardingError::InvalidCode)
        }
    }

    /// Decides whether a presented code may set the password now, without changing anything.
    /// The gateway uses it to render the right page before asking for a password. What
    /// happened to the code is told only after its tag verified (no oracle for forgers).
    pub fn check_code(
        &self,
        presented: &PresentedCode,
        keyring: &CodeKeyring,
        now: DateTime<Utc>,
    ) -> Result<&IssuedCode, OnboardingError> {
        if self.state == OnboardingState::Uninvited {
            return Err(OnboardingError::NotInvited);
        }
        let issued = self.authenticate(presented, keyring)?;
        match self.state {
            // A disabled account's password was set with one of its codes: the link is spent.
            OnboardingState::PasswordSet | OnboardingState::Active | OnboardingState::Disabled => {
                return Err(OnboardingError::AlreadyActive)
            }
            OnboardingState::Revoked => return Err(OnboardingError::InvitationRevoked),
            OnboardingState::Erased => return Err(OnboardingError::Erased),
            OnboardingState::Uninvited | OnboardingState::Invited => {
                return Err(OnboardingError::InvalidCode)
            }
            OnboardingState::Locked | OnboardingState::Expired | OnboardingState::CodeIssued => {}
        }
        if self.codes.last().map(|c| c.code_id) != Some(issued.code_id) {
            return Err(OnboardingError::CodeSuperseded);
        }
        if self.state == OnboardingState::Locked {
            return Err(OnboardingError::CodeLocked);
        }
        if self.state == OnboardingState::Expired || now >= issued.expires_at {
            return Err(OnboardingError::CodeExpired {
                expired_at: issued.expires_at,
            });
        }
        Ok(issued)
    }

    /// Whether a new code may be issued now, given the limits.
    fn may_reissue(
        &self,
        limits: &ResendLimits,
        now: DateTime<Utc>,
    ) -> Result<(), OnboardingError> {
        match self.state {
            OnboardingState::Uninvited => return Err(OnboardingError::NotInvited),
            OnboardingState::PasswordSet | OnboardingState::Active | OnboardingState::Disabled => {
                return Err(OnboardingError::AlreadyActive)
            }
            OnboardingState::Revoked => return Err(OnboardingError::InvitationRevoked),
            OnboardingState::Erased => return Err(OnboardingError::Erased),
            OnboardingState::Invited
            | OnboardingState::CodeIssued
            | OnboardingState::Expired
            | OnboardingState::Locked => {}
        }
        if let Some(last) = self.codes.last() {
            let ready = last.issued_at + limits.cooldown;
            if now < ready {
                return Err(OnboardingError::ResendLimited {
                    retry_after_seconds: (ready - now).num_seconds().max(1),
                });
            }
        }
        let day_ago = now - Duration::hours(24);
        let mut recent: Vec<DateTime<Utc>> = self
            .codes
            .iter()
            .filter(|c| c.reason != CodeIssueReason::Invitation && c.issued_at > day_ago)
            .map(|c| c.issued_at)
            .collect();
        if recent.len() as u32 >= limits.daily_cap {
            recent.sort();
            // The re-issue that must leave the 24-hour window before another one fits.
            let blocking = recent.len() - (limits.daily_cap as usize).min(recent.len());
            let ready = recent
                .get(blocking)
                .map_or(now + Duration::hours(24), |t| *t + Duration::hours(24));
            return Err(OnboardingError::ResendLimited {
                retry_after_seconds: (ready - now).num_seconds().max(1),
            });
        }
        Ok(())
    }

    /// A provisioning outcome can be recorded only for an active account whose entry is not
    /// recorded as provisioned yet: a revoked, expired or unfinished invitation is never
    /// provisioned, and an account is provisioned once.
    fn may_record_provisioning(&self) -> Result<(), OnboardingError> {
        match self.state {
            OnboardingState::Uninvited => Err(OnboardingError::NotInvited),
            OnboardingState::Active => match self.provisioning {
                Some(Provisioning::Provisioned { .. }) => Err(OnboardingError::AlreadyProvisioned),
                _ => Ok(()),
            },
            _ => Err(OnboardingError::NotActive),
        }
    }

    /// The revocation, if the account may still be revoked.
    fn revoke(
        &self,
        by: RevokedBy,
        reason: Option<RevokeReason>,
        now: DateTime<Utc>,
    ) -> Result<OnboardingEvent, OnboardingError> {
        match self.state {
            OnboardingState::Uninvited => Err(OnboardingError::NotInvited),
            OnboardingState::PasswordSet | OnboardingState::Active | OnboardingState::Disabled => {
                Err(OnboardingError::AlreadyActive)
            }
            OnboardingState::Revoked => Err(OnboardingError::InvitationRevoked),
            _ => Ok(OnboardingEvent::InvitationRevoked {
                by,
                reason: reason.map(RevokeReason::into_string),
                revoked_at: now,
            }),
        }
    }
}

impl Onboarding {
    /// Whether the account's address and claims may still change: not before the invitation,
    /// not after a revocation.
    fn may_change(&self) -> Result<(), OnboardingError> {
        match self.state {
            OnboardingState::Uninvited => Err(OnboardingError::NotInvited),
            OnboardingState::Revoked => Err(OnboardingError::InvitationRevoked),
            _ => Ok(()),
        }
    }

    /// Whether the invitation is still open: a code was issued and no password set yet.
    fn is_open_invitation(&self) -> bool {
        matches!(
            self.state,
            OnboardingState::Invited
                | OnboardingState::CodeIssued
                | OnboardingState::Expired
                | OnboardingState::Locked
        )
    }
}

/// Reduces an instant to the precision the event log keeps: whole microseconds, as PostgreSQL's
/// `timestamptz` does. Every instant in an event derives from a command's times, so reducing them
/// once, before any event is made, means every reader of the log (the projection trigger, the
/// audit replay, a Kafka consumer) reads the same instant, with nothing left to round.
pub fn at_log_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

impl OnboardingCommand {
    /// The command with its instants at the log's precision ([`at_log_precision`]).
    fn at_log_precision(mut self) -> Self {
        use OnboardingCommand as C;
        let now = match &mut self {
            C::InviteUser(invite) => &mut invite.now,
            C::RecordMailFailed {
                now,
                next_attempt_at,
                ..
            } => {
                *next_attempt_at = next_attempt_at.map(at_log_precision);
                now
            }
            C::ResendCode { now, .. }
            | C::RequestNewLink { now, .. }
            | C::RecordLinkOpened { now, .. }
            | C::ExpireCode { now, .. }
            | C::RevokeInvitation { now, .. }
            | C::RevokeWithCode { now, .. }
            | C::SubmitPassword { now, .. }
            | C::RecordMailSent { now, .. }
            | C::RecordWelcomeMailSent { now, .. }
            | C::RecordMailAbandoned { now, .. }
            | C::RecordProvisioned { now, .. }
            | C::RecordProvisioningFailed { now, .. }
            | C::DisableAccount { now }
            | C::EnableAccount { now }
            | C::ChangeEmail { now, .. }
            | C::UpdateClaims { now, .. } => now,
            C::EraseUser { now } => now,
        };
        *now = at_log_precision(*now);
        self
    }
}

impl Aggregate for Onboarding {
    const TYPE: &'static str = "Onboarding";
    type Command = OnboardingCommand;
    type Event = OnboardingEvent;
    type Error = OnboardingError;
    type Services = OnboardingServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if self.state == OnboardingState::Erased {
            return Err(OnboardingError::Erased);
        }
        match command.at_log_precision() {
            OnboardingCommand::EraseUser { now } => {
                if self.state == OnboardingState::Uninvited {
                    return Err(OnboardingError::NotInvited);
                }
                sink.write(OnboardingEvent::UserErased { erased_at: now }, self)
                    .await;
            }
            OnboardingCommand::InviteUser(invite) => {
                if self.state != OnboardingState::Uninvited {
                    return Err(OnboardingError::AlreadyInvited);
                }
                let InviteUser {
                    user_id,
                    username,
                    email,
                    domain,
                    locale,
                    time_zone,
                    claims,
                    code,
                    now,
                } = *invite;
                let issued = self.issue(code, now, CodeIssueReason::Invitation)?;
                sink.write(
                    OnboardingEvent::UserInvited {
                        user_id,
                        username,
                        email,
                        domain,
                        locale,
                        time_zone,
                        claims,
                        invited_at: now,
                    },
                    self,
                )
                .await;
                sink.write(issued, self).await;
            }
            OnboardingCommand::ResendCode { code, limits, now } => {
                self.may_reissue(&limits, now)?;
                let issued = self.issue(code, now, CodeIssueReason::Resend)?;
                sink.write(issued, self).await;
            }
            OnboardingCommand::RequestNewLink {
                presented,
                code,
                limits,
                now,
            } => {
                self.authenticate(&presented, &services.keyring)?;
                self.may_reissue(&limits, now)?;
                let issued = self.issue(code, now, CodeIssueReason::UserRequest)?;
                sink.write(issued, self).await;
            }
            OnboardingCommand::RecordLinkOpened {
                presented,
                client,
                now,
            } => {
                let issued = self.authenticate(&presented, &services.keyring)?;
                let code_id = issued.code_id;
                sink.write(
                    OnboardingEvent::LinkOpened {
                        code_id,
                        client,
                        opened_at: now,
                    },
                    self,
                )
                .await;
            }
            OnboardingCommand::ExpireCode { now } => {
                let live = self.live_code().ok_or(OnboardingError::CodeNotExpired)?;
                if now < live.expires_at {
                    return Err(OnboardingError::CodeNotExpired);
                }
                let event = OnboardingEvent::CodeExpired {
                    code_id: live.code_id,
                    expired_at: live.expires_at,
                };
                sink.write(event, self).await;
            }
            OnboardingCommand::RevokeInvitation { by, reason, now } => {
                let event = self.revoke(by, reason, now)?;
                sink.write(event, self).await;
            }
            OnboardingCommand::RevokeWithCode { presented, now } => {
                self.authenticate(&presented, &services.keyring)?;
                let event = self.revoke(RevokedBy::User, None, now)?;
                sink.write(event, self).await;
            }
            OnboardingCommand::SubmitPassword {
                code,
                password,
                now,
            } => {
                let issued = self.check_code(&code, &services.keyring, now)?.clone();
                let (username, email) = match (&self.username, &self.email) {
                    (Some(u), Some(e)) => (u, e),
                    _ => return Err(OnboardingError::NotInvited),
                };
                let ctx = PasswordContext {
                    username,
                    email,
                    names: self.display_names(),
                };
                services
                    .policy
                    .check(&password, &ctx)
                    .map_err(OnboardingError::WeakPassword)?;
                let password_hash = services
                    .hasher
                    .hash(password)
                    .await
                    .map_err(|_| OnboardingError::HashingFailed)?;
                sink.write(
                    OnboardingEvent::PasswordSet {
                        code_id: issued.code_id,
                        scheme: password_hash.scheme(),
                        set_at: now,
                        password_hash: Some(password_hash),
                    },
                    self,
                )
                .await;
                sink.write(OnboardingEvent::UserActivated { activated_at: now }, self)
                    .await;
            }
            OnboardingCommand::DisableAccount { now } => match self.state {
                OnboardingState::Active => {
                    sink.write(OnboardingEvent::AccountDisabled { disabled_at: now }, self)
                        .await;
                }
                OnboardingState::Disabled => return Err(OnboardingError::AccountDisabled),
                OnboardingState::Uninvited => return Err(OnboardingError::NotInvited),
                OnboardingState::Revoked => return Err(OnboardingError::InvitationRevoked),
                _ => return Err(OnboardingError::NotActive),
            },
            OnboardingCommand::EnableAccount { now } => match self.state {
                OnboardingState::Disabled => {
                    sink.write(OnboardingEvent::AccountEnabled { enabled_at: now }, self)
                        .await;
                }
                OnboardingState::Uninvited => return Err(OnboardingError::NotInvited),
                OnboardingState::Revoked => return Err(OnboardingError::InvitationRevoked),
                _ => return Err(OnboardingError::NotDisabled),
            },
            OnboardingCommand::ChangeEmail { email, code, now } => {
                self.may_change()?;
                if self.email.as_ref() == Some(&email) {
                    return Ok(());
                }
                // Checked before anything is written: a refused code writes nothing.
                let reissue = if self.is_open_invitation() {
                    Some(self.issue(code, now, CodeIssueReason::Resend)?)
                } else {
                    None
                };
                sink.write(
                    OnboardingEvent::EmailChanged {
                        email,
                        changed_at: now,
                    },
                    self,
                )
                .await;
                if let Some(issued) = reissue {
                    sink.write(issued, self).await;
                }
            }
            OnboardingCommand::UpdateClaims { claims, now } => {
                self.may_change()?;
                if self.claims == claims {
                    return Ok(());
                }
                sink.write(
                    OnboardingEvent::ClaimsUpdated {
                        claims,
                        updated_at: now,
                    },
                    self,
                )
                .await;
            }
            OnboardingCommand::RecordWelcomeMailSent {
                message_id,
                template,
                now,
            } => {
                if self.state != OnboardingState::Active {
                    return Err(OnboardingError::NotActive);
                }
                if self.welcome_sent_at.is_some() {
                    return Err(OnboardingError::WelcomeAlreadySent);
                }
                sink.write(
                    OnboardingEvent::WelcomeMailSent {
                        message_id,
                        template,
                        sent_at: now,
                    },
                    self,
                )
                .await;
            }
            OnboardingCommand::RecordMailSent {
                code_id,
                message_id,
                smtp_response,
                template,
                now,
            } => {
                self.mail_still_due(code_id)?;
                sink.write(
                    OnboardingEvent::InvitationMailSent {
                        code_id,
                        message_id,
                        smtp_response,
                        template,
                        sent_at: now,
                    },
                    self,
                )
                .await;
            }
            OnboardingCommand::RecordMailFailed {
                code_id,
                reason,
                permanent,
                attempt,
                next_attempt_at,
                now,
            } => {
                self.mail_still_due(code_id)?;
                sink.write(
                    OnboardingEvent::InvitationMailFailed {
                        code_id,
                        reason,
                        permanent,
                        failed_at: now,
                        attempt,
                        next_attempt_at,
                    },
                    self,
                )
                .await;
            }
            OnboardingCommand::RecordMailAbandoned {
                code_id,
                reason,
                attempts,
                now,
            } => {
                self.mail_still_due(code_id)?;
                sink.write(
                    OnboardingEvent::InvitationMailAbandoned {
                        code_id,
                        reason,
                        attempts,
                        abandoned_at: now,
                    },
                    self,
                )
                .await;
            }
            OnboardingCommand::RecordProvisioned {
                user_store,
                attempts,
                now,
            } => {
                self.may_record_provisioning()?;
                sink.write(
                    OnboardingEvent::UserProvisioned {
                        user_store,
                        attempts,
                        provisioned_at: now,
                    },
                    self,
                )
                .await;
            }
            OnboardingCommand::RecordProvisioningFailed {
                user_store,
                reason,
                permanent,
                attempt,
                now,
            } => {
                self.may_record_provisioning()?;
                sink.write(
                    OnboardingEvent::ProvisioningFailed {
                        user_store,
                        reason,
                        permanent,
                        attempt,
                        failed_at: now,
                    },
                    self,
                )
                .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            OnboardingEvent::UserInvited {
                user_id,
                username,
                email,
                domain,
                locale,
                time_zone,
                claims,
                invited_at,
            } => {
                self.state = OnboardingState::Invited;
                self.user_id = Some(user_id);
                self.username = Some(username);
                self.email = Some(email);
                self.domain = Some(domain);
                self.locale = locale;
                self.time_zone = time_zone;
                self.claims = claims;
                self.created_at = Some(invited_at);
            }
            OnboardingEvent::CodeIssued {
                code_id,
                key_id,
                issued_at,
                expires_at,
                reason,
            } => {
                self.state = OnboardingState::CodeIssued;
                self.codes.push(IssuedCode {
                    code_id,
                    key_id,
                    issued_at,
                    expires_at,
                    reason,
                });
                self.failed_checks = 0;
                self.delivery = Some(EmailDelivery::Queued);
            }
            OnboardingEvent::LinkOpened { .. } => self.links_opened += 1,
            OnboardingEvent::UserErased { erased_at } => {
                // What the log still says about her is sealed with a key that no longer exists;
                // what was read from it before the erasure goes too.
                self.state = OnboardingState::Erased;
                self.erased_at = Some(erased_at);
                self.username = None;
                self.email = None;
                self.claims.clear();
                self.delivery = None;
                self.provisioning = None;
            }
            OnboardingEvent::WelcomeMailSent { sent_at, .. } => {
                self.welcome_sent_at = Some(sent_at)
            }
            OnboardingEvent::CodeCheckFailed { failures, .. } => self.failed_checks = failures,
            OnboardingEvent::CodeLocked { .. } => self.state = OnboardingState::Locked,
            OnboardingEvent::CodeExpired { .. } => self.state = OnboardingState::Expired,
            OnboardingEvent::InvitationRevoked { by, revoked_at, .. } => {
                self.state = OnboardingState::Revoked;
                self.revoked = Some((by, revoked_at));
            }
            OnboardingEvent::PasswordSet { set_at, .. } => {
                self.state = OnboardingState::PasswordSet;
                self.password_set_at = Some(set_at);
            }
            OnboardingEvent::UserActivated { activated_at } => {
                self.state = OnboardingState::Active;
                self.activated_at = Some(activated_at);
                self.provisioning = Some(Provisioning::Pending);
            }
            OnboardingEvent::UserProvisioned {
                user_store,
                attempts,
                provisioned_at,
            } => {
                self.provisioning = Some(Provisioning::Provisioned {
                    at: provisioned_at,
                    user_store,
                    attempts,
                });
            }
            OnboardingEvent::ProvisioningFailed {
                reason,
                permanent,
                attempt,
                failed_at,
                ..
            } => {
                self.provisioning = Some(Provisioning::Failed {
                    at: failed_at,
                    reason,
                    permanent,
                    attempt,
                });
            }
            OnboardingEvent::AccountDisabled { disabled_at } => {
                self.state = OnboardingState::Disabled;
                self.disabled_at = Some(disabled_at);
            }
            OnboardingEvent::AccountEnabled { .. } => {
                self.state = OnboardingState::Active;
                self.disabled_at = None;
            }
            OnboardingEvent::EmailChanged { email, .. } => self.email = Some(email),
            OnboardingEvent::ClaimsUpdated { claims, .. } => self.claims = claims,
            OnboardingEvent::InvitationMailSent {
                code_id,
                message_id,
                sent_at,
                ..
            } => {
                self.mails_sent.push(code_id);
                if self.codes.last().map(|c| c.code_id) == Some(code_id) {
                    self.delivery = Some(EmailDelivery::Sent {
                        at: sent_at,
                        message_id,
                    });
                }
            }
            OnboardingEvent::InvitationMailFailed {
                code_id,
                reason,
                permanent,
                failed_at,
                attempt,
                next_attempt_at,
            } => {
                if self.codes.last().map(|c| c.code_id) == Some(code_id) {
                    self.delivery = Some(EmailDelivery::Failed {
                        at: failed_at,
                        reason,
                        permanent,
                        attempt,
                        next_attempt_at,
                    });
                }
            }
            OnboardingEvent::InvitationMailAbandoned {
                code_id,
                reason,
                attempts,
                abandoned_at,
            } => {
                if self.codes.last().map(|c| c.code_id) == Some(code_id) {
                    self.delivery = Some(EmailDelivery::Abandoned {
                        at: abandoned_at,
                        reason,
                        attempts,
                    });
                }
            }
        }
    }
}
