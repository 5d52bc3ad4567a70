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
use crate::event::{CodeIssueReason, OnboardingEvent};
use crate::password::{Password, PasswordHash, PasswordPolicy, PasswordRuleViolation};
use crate::value::{EmailAddress, Locale, UserDomain, Username};

/// Where an account is in its onboarding. `Uninvited` is the state of an id nobody invited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnboardingState {
    #[default]
    Uninvited,
    Invited,
    CodeIssued,
    PasswordSet,
    Active,
}

impl OnboardingState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Uninvited => "Uninvited",
            Self::Invited => "Invited",
            Self::CodeIssued => "CodeIssued",
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

#[derive(Debug)]
pub struct InviteUser {
    pub user_id: Uuid,
    pub username: Username,
    pub email: EmailAddress,
    pub domain: UserDomain,
    pub locale: Option<Locale>,
    pub claims: BTreeMap<String, serde_json::Value>,
    pub code: NewCode,
    pub now: DateTime<Utc>,
}

#[derive(Debug)]
pub enum OnboardingCommand {
    InviteUser(Box<InviteUser>),
    /// Issue a new code and kill the previous one at once.
    ResendCode {
        code: NewCode,
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
        now: DateTime<Utc>,
    },
    RecordMailFailed {
        code_id: CodeId,
        reason: String,
        permanent: bool,
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
    pub claims: BTreeMap<String, serde_json::Value>,
    pub created_at: Option<DateTime<Utc>>,
    pub codes: Vec<IssuedCode>,
    pub mails_sent: Vec<CodeId>,
    pub delivery: Option<EmailDelivery>,
    pub password_set_at: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
}

impl Onboarding {
    /// The live code: the last one issued, while the account is not yet active.
    pub fn live_code(&self) -> Option<&IssuedCode> {
        match self.state {
            OnboardingState::CodeIssued => self.codes.last(),
            _ => None,
        }
    }

    pub fn mail_sent_for(&self, code_id: CodeId) -> bool {
        self.mails_sent.contains(&code_id)
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
    /// The gateway uses it to render the right page before asking for a password.
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
            OnboardingState::Uninvited | OnboardingState::Invited => {
                return Err(OnboardingError::InvalidCode)
            }
            OnboardingState::CodeIssued => {}
        }
        if self.codes.last().map(|c| c.code_id) != Some(issued.code_id) {
            return Err(OnboardingError::CodeSuperseded);
        }
        if now >= issued.expires_at {
            return Err(OnboardingError::CodeExpired {
                expired_at: issued.expires_at,
            });
        }
        Ok(issued)
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
                        claims,
                        invited_at: now,
                    },
                    self,
                )
                .await;
                sink.write(issued, self).await;
            }
            OnboardingCommand::ResendCode { code, now } => {
                match self.state {
                    OnboardingState::Uninvited => return Err(OnboardingError::NotInvited),
                    OnboardingState::PasswordSet | OnboardingState::Active => {
                        return Err(OnboardingError::AlreadyActive)
                    }
                    OnboardingState::Invited | OnboardingState::CodeIssued => {}
                }
                let issued = self.issue(code, now, CodeIssueReason::Resend)?;
                sink.write(issued, self).await;
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
                services
                    .policy
                    .check(&password, username, email)
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
            OnboardingCommand::RecordMailSent {
                code_id,
                message_id,
                smtp_response,
                now,
            } => {
                if !self.codes.iter().any(|c| c.code_id == code_id) {
                    return Err(OnboardingError::UnknownCode(code_id));
                }
                if self.mail_sent_for(code_id) {
                    return Err(OnboardingError::MailAlreadySent(code_id));
                }
                sink.write(
                    OnboardingEvent::InvitationMailSent {
                        code_id,
                        message_id,
                        smtp_response,
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
                now,
            } => {
                if !self.codes.iter().any(|c| c.code_id == code_id) {
                    return Err(OnboardingError::UnknownCode(code_id));
                }
                if self.mail_sent_for(code_id) {
                    return Err(OnboardingError::MailAlreadySent(code_id));
                }
                sink.write(
                    OnboardingEvent::InvitationMailFailed {
                        code_id,
                        reason,
                        permanent,
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
                claims,
                invited_at,
            } => {
                self.state = OnboardingState::Invited;
                self.user_id = Some(user_id);
                self.username = Some(username);
                self.email = Some(email);
                self.domain = Some(domain);
                self.locale = locale;
                self.claims = claims;
                self.created_at = Some(invited_at);
            }
            OnboardingEvent::CodeIssued {
                code_id,
                key_id,
                issued_at,
                expires_at,
                ..
            } => {
                self.state = OnboardingState::CodeIssued;
                self.codes.push(IssuedCode {
                    code_id,
                    key_id,
                    issued_at,
                    expires_at,
                });
                self.delivery = Some(EmailDelivery::Queued);
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
            } => {
                if self.codes.last().map(|c| c.code_id) == Some(code_id) {
                    self.delivery = Some(EmailDelivery::Failed {
                        at: failed_at,
                        reason,
                        permanent,
                    });
                }
            }
        }
    }
}
