//! The `Onboarding` aggregate: one per account, `Invited → CodeIssued → PasswordSet → Active`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::code::{CodeBinding, CodeId, CodeKeyring, PresentedCode};
use crate::event::{CodeIssueReason, OnboardingEvent, TemplateRef};
use crate::password::{
    Password, PasswordContext, PasswordHash, PasswordPolicy, PasswordRuleViolation,
};
use crate::value::{EmailAddress, Locale, TimeZone, UserDomain, Username};

/// Where an account is in its onboarding. `Uninvited` is the state of an id nobody invited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnboardingState {
    #[default]
    Uninvited,
    Invited,
    CodeIssued,
    /// The live code passed its expiry (written by the scheduler); a new code revives it.
    Expired,
    /// Too many wrong codes: the live code died; a new code revives it.
    Locked,
    /// The invitation was withdrawn by an admin or declined by the user. Final.
    Revoked,
    PasswordSet,
    Active,
}

impl OnboardingState {
    pub const ALL: [Self; 8] = [
        Self::Uninvited,
        Self::Invited,
        Self::CodeIssued,
        Self::Expired,
        Self::Locked,
        Self::Revoked,
        Self::PasswordSet,
        Self::Active,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

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
        }
    }
}

/// Hashes passwords. The adapter runs the (deliberately slow) hash off the async threads.
#[async_trait]
pub trait PasswordHasher: Send + Sync {
    async fn hash(&self, password: Password) -> Result<PasswordHash, HashingFailed>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashingFailed(pub String);

/// What the aggregate needs from the outside world, injected by the application.
#[derive(Clone)]
pub struct OnboardingServices {
    pub hasher: Arc<dyn PasswordHasher>,
    pub keyring: Arc<CodeKeyring>,
    pub policy: PasswordPolicy,
}

/// A code to issue: its random id (from the OS's CSPRNG), the key that signs it, and how long
/// it lives. `expires_at` is computed once, here, and shown everywhere from the event.
#[derive(Debug, Clone)]
pub struct NewCode {
    pub code_id: CodeId,
    pub key_id: String,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokedBy {
    Admin,
    /// The user, through the "I didn't expect this" link in the mail.
    User,
}

#[derive(Debug)]
pub struct InviteUser {
    pub user_id: Uuid,
    pub username: Username,
    pub email: EmailAddress,
    pub domain: UserDomain,
    pub locale: Option<Locale>,
    pub time_zone: Option<TimeZone>,
    pub claims: BTreeMap<String, serde_json::Value>,
    pub code: NewCode,
    pub now: DateTime<Utc>,
}

#[derive(Debug)]
pub enum OnboardingCommand {
    InviteUser(Box<InviteUser>),
    /// Issue a new code and kill the previous one at once (an admin's resend).
    ResendCode {
        code: NewCode,
        limits: ResendLimits,
        now: DateTime<Utc>,
    },
    /// The user, holding any code of this invitation (expired, replaced, locked), asks for a new one.
    RequestNewLink {
        presented: PresentedCode,
        code: NewCode,
        limits: ResendLimits,
        now: DateTime<Utc>,
    },
    /// Someone opened the link (GET or HEAD). Recorded for support staff; changes no state.
    RecordLinkOpened {
        presented: PresentedCode,
        client: String,
        now: DateTime<Utc>,
    },
    /// A submission named this invitation's live code with a wrong tag.
    RecordFailedCodeCheck {
        code_id: CodeId,
        max_failures: u32,
        now: DateTime<Utc>,
    },
    /// The scheduler found the live code past its expiry.
    ExpireCode {
        now: DateTime<Utc>,
    },
    RevokeInvitation {
        by: RevokedBy,
        reason: Option<String>,
        now: DateTime<Utc>,
    },
    /// The user's "I didn't expect this" link: any code of the invitation authenticates it.
    RevokeWithCode {
        presented: PresentedCode,
        now: DateTime<Utc>,
    },
    SubmitPassword {
        code: PresentedCode,
        password: Password,
        now: DateTime<Utc>,
    },
    RecordMailSent {
        code_id: CodeId,
        message_id: String,
        smtp_response: String,
        template: Option<TemplateRef>,
        now: DateTime<Utc>,
    },
    RecordWelcomeMailSent {
        message_id: String,
        template: TemplateRef,
        now: DateTime<Utc>,
    },
    RecordMailFailed {
        code_id: CodeId,
        reason: String,
        permanent: bool,
        attempt: u32,
        next_attempt_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    },
    RecordMailAbandoned {
        code_id: CodeId,
        reason: String,
        attempts: u32,
        now: DateTime<Utc>,
    },
}

/// Every refusal, named. Messages say what to do next; none carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnboardingError {
    #[error("this user has already been invited")]
    AlreadyInvited,
    #[error("no invitation exists for this user")]
    NotInvited,
    #[error("the account is already active; sign in with your password, or use your organisation's password reset")]
    AlreadyActive,
    #[error(
        "the code is not valid; use the link from the most recent email, or ask for a new one"
    )]
    InvalidCode,
    #[error(
        "a newer link has been sent for this account; use the link from the most recent email"
    )]
    CodeSuperseded,
    #[error("the link expired at {expired_at}; ask for a new one")]
    CodeExpired { expired_at: DateTime<Utc> },
    #[error("{0}")]
    WeakPassword(PasswordRuleViolation),
    #[error("the code validity must be positive")]
    InvalidValidity,
    #[error("this link was disabled after too many wrong attempts; ask for a new one")]
    CodeLocked,
    #[error("this invitation was withdrawn; contact your administrator if you need an account")]
    InvitationRevoked,
    #[error("a new link was sent recently; try again in {retry_after_seconds} seconds")]
    ResendLimited { retry_after_seconds: i64 },
    #[error("the code has not expired yet")]
    CodeNotExpired,
    #[error("the welcome mail is already recorded as sent")]
    WelcomeAlreadySent,
    #[error("the account is not active yet")]
    NotActive,
    #[error("the mail for code {0} is already recorded as sent")]
    MailAlreadySent(CodeId),
    #[error("code {0} was never issued to this user")]
    UnknownCode(CodeId),
    #[error("the password could not be stored; please try again in a moment")]
    HashingFailed,
}

/// One code issued to the account; the last one is the live one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCode {
    pub code_id: CodeId,
    pub key_id: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
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
    Queued,
    Sent {
        at: DateTime<Utc>,
        message_id: String,
    },
    Failed {
        at: DateTime<Utc>,
        reason: String,
        permanent: bool,
        /// Which attempt failed (0 when recorded before attempts were counted).
        attempt: u32,
        /// When the worker tries again; none when it will not.
        next_attempt_at: Option<DateTime<Utc>>,
    },
    /// Given up: no further attempt for this code. A resend issues a new code and tries again.
    Abandoned {
        at: DateTime<Utc>,
        reason: String,
        attempts: u32,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Onboarding {
    pub state: OnboardingState,
    pub user_id: Option<Uuid>,
    pub username: Option<Username>,
    pub email: Option<EmailAddress>,
    pub domain: Option<UserDomain>,
    pub locale: Option<Locale>,
    #[serde(default)]
    pub time_zone: Option<TimeZone>,
    pub claims: BTreeMap<String, serde_json::Value>,
    pub created_at: Option<DateTime<Utc>>,
    pub codes: Vec<IssuedCode>,
    /// Wrong codes presented for the live code.
    pub failed_checks: u32,
    pub links_opened: u32,
    pub revoked: Option<(RevokedBy, DateTime<Utc>)>,
    pub mails_sent: Vec<CodeId>,
    pub delivery: Option<EmailDelivery>,
    pub password_set_at: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    pub welcome_sent_at: Option<DateTime<Utc>>,
}

impl Onboarding {
    /// The live code: the last one issued, while the account is not yet active.
    pub fn live_code(&self) -> Option<&IssuedCode> {
        match self.state {
            OnboardingState::CodeIssued => self.codes.last(),
            _ => None,
        }
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
            OnboardingState::PasswordSet | OnboardingState::Active => {
                return Err(OnboardingError::AlreadyActive)
            }
            OnboardingState::Revoked => return Err(OnboardingError::InvitationRevoked),
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
            OnboardingState::PasswordSet | OnboardingState::Active => {
                return Err(OnboardingError::AlreadyActive)
            }
            OnboardingState::Revoked => return Err(OnboardingError::InvitationRevoked),
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

    /// The revocation, if the account may still be revoked.
    fn revoke(
        &self,
        by: RevokedBy,
        reason: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<OnboardingEvent, OnboardingError> {
        match self.state {
            OnboardingState::Uninvited => Err(OnboardingError::NotInvited),
            OnboardingState::PasswordSet | OnboardingState::Active => {
                Err(OnboardingError::AlreadyActive)
            }
            OnboardingState::Revoked => Err(OnboardingError::InvitationRevoked),
            _ => Ok(OnboardingEvent::InvitationRevoked {
                by,
                reason,
                revoked_at: now,
            }),
        }
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
        match command {
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
            OnboardingCommand::RecordFailedCodeCheck {
                code_id,
                max_failures,
                now,
            } => {
                if self.live_code().map(|c| c.code_id) != Some(code_id) {
                    return Err(OnboardingError::UnknownCode(code_id));
                }
                let failures = self.failed_checks + 1;
                sink.write(
                    OnboardingEvent::CodeCheckFailed {
                        code_id,
                        failures,
                        failed_at: now,
                    },
                    self,
                )
                .await;
                if failures >= max_failures.max(1) {
                    sink.write(
                        OnboardingEvent::CodeLocked {
                            code_id,
                            locked_at: now,
                        },
                        self,
                    )
                    .await;
                }
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
                        password_hash,
                        set_at: now,
                    },
                    self,
                )
                .await;
                sink.write(OnboardingEvent::UserActivated { activated_at: now }, self)
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
            }
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
