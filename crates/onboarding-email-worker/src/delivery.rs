//! One attempt at one mail: decide whether it is still needed, render it, send it, and record
//! what became of it. The same path serves a record's first attempt and the retry task's later
//! ones, for invitation and welcome mails alike; a mail is named by its row key in the delayed
//! store ([`RetriedMail`]), which also names it in the metrics and its Message-ID.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use onboarding_config::{PublicBaseUrl, Settings};
use onboarding_domain::code::{CodeBinding, CodeId, CodeKeyring};
use onboarding_domain::{EmailDelivery, OnboardingCommand, OnboardingError};
use onboarding_events::{CodeIssuedV1, UserActivatedV1};
use onboarding_store::{Actor, Loaded, MailRetry, RetriedMail, Store, StoreError};
use uuid::Uuid;

use crate::mail::{Accepted, Invitation, MailError, Mailer, SetupError};
use crate::retry::{Attempt, Decision, RetryPolicy};
use crate::templates::Rendered;
use crate::HandleError;

/// What became of one attempt at an invitation (or of a welcome mail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    AlreadySent,
    Superseded,
    Expired,
    /// Active, revoked, expired or locked: no code is waiting for this mail.
    NotPending,
    UnknownUser,
    /// A transient failure; the mail waits in the delayed store for its next attempt.
    RetryScheduled,
    /// Given up: a permanent failure, or the attempts or the time allowed ran out.
    Abandoned,
    /// A welcome mail given up on (permanent failure, attempts or time ran out, or its template
    /// failed): best effort, logged and counted only.
    Failed {
        permanent: bool,
    },
}

impl Outcome {
    /// The outcome as the `outcome` label of `onboard_mail_total` and the logs name it.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::AlreadySent => "already_sent",
            Self::Superseded => "superseded",
            Self::Expired => "expired",
            Self::NotPending => "not_pending",
            Self::UnknownUser => "unknown_user",
            Self::RetryScheduled => "retry_scheduled",
            Self::Abandoned => "abandoned",
            Self::Failed { permanent: true } => "failed_permanent",
            Self::Failed { permanent: false } => "failed_transient",
        }
    }
}

/// Sends mails and records their fate; shared by the record loop and the retry task.
#[derive(Clone)]
pub struct Delivery {
    store: Store,
    mailer: Arc<Mailer>,
    keyring: Arc<CodeKeyring>,
    public_base_url: PublicBaseUrl,
    policy: RetryPolicy,
}

impl Delivery {
    /// A delivery keeping at most `connections` SMTP connections open.
    pub fn new(
        settings: &Settings,
        store: Store,
        connections: NonZeroU32,
    ) -> Result<Self, SetupError> {
        let email = &settings.output_adapter.email;
        Ok(Self {
            mailer: Arc::new(Mailer::new(
                email,
                &settings.organisation.name,
                connections,
            )?),
            keyring: store.services().keyring.clone(),
            store,
            public_base_url: settings.gateway.public_base_url.clone(),
            policy: RetryPolicy::from_settings(email),
        })
    }

    pub fn mailer(&self) -> &Mailer {
        &self.mailer
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Makes the first attempt at an issued code's mail, unless it needs none.
    #[tracing::instrument(skip_all, fields(user_id = %event.user_id))]
    pub async fn handle(&self, event: &CodeIssuedV1) -> Result<Outcome, HandleError> {
        let code_id = CodeId::from_random_bytes(*event.code_id.as_bytes());
        let mail = RetriedMail::Invitation(code_id);
        Ok(self.try_once(mail, event.user_id, Attempt::FIRST).await?)
    }

    /// Sends the "your account is ready" mail once after activation. Like an invitation mail it
    /// gets one attempt here; a transient failure waits in the delayed store, so it never holds
    /// the partition.
    #[tracing::instrument(skip_all, fields(user_id = %event.user_id))]
    pub async fn welcome(&self, event: &UserActivatedV1) -> Result<Outcome, StoreError> {
        let mail = RetriedMail::Welcome(event.user_id);
        self.try_once(mail, event.user_id, Attempt::FIRST).await
    }

    /// Makes the next attempt at a mail that waited in the delayed store.
    pub async fn retry(&self, retry: &MailRetry) -> Result<Outcome, StoreError> {
        self.try_once(retry.mail, retry.user_id, Attempt::after(retry))
            .await
    }

    /// Tries `mail` once and counts the outcome (`onboard_mail_total`): the one path of every
    /// attempt, first or later, at either mail.
    async fn try_once(
        &self,
        mail: RetriedMail,
        user_id: Uuid,
        attempt: Attempt,
    ) -> Result<Outcome, StoreError> {
        let outcome = match mail {
            RetriedMail::Invitation(code_id) => self.invitation(user_id, code_id, attempt).await?,
            RetriedMail::Welcome(_) => self.welcome_mail(user_id, attempt).await?,
        };
        metrics::counter!("onboard_mail_total", "kind" => mail.kind(), "outcome" => outcome.label())
            .increment(1);
        Ok(outcome)
    }

    /// Tries the mail for `code_id` once and records the outcome: sent; failed with the next
    /// attempt scheduled in the delayed store; or failed and abandoned.
    async fn invitation(
        &self,
        user_id: Uuid,
        code_id: CodeId,
        attempt: Attempt,
    ) -> Result<Outcome, StoreError> {
        // Read once: the mail's outcome is recorded on the account as read here, unless another
        // command changed it meanwhile (`record_after_send`).
        let loaded = self.store.load_for_command(user_id).await?;
        let Some(account) = loaded.account().cloned() else {
            return Ok(Outcome::UnknownUser);
        };
        if account.mail_sent_for(code_id) {
            return Ok(Outcome::AlreadySent);
        }
        let Some(live) = account.live_code() else {
            return Ok(Outcome::NotPending);
        };
        if live.code_id != code_id {
            return Ok(Outcome::Superseded);
        }
        if Utc::now() >= live.expires_at {
            return Ok(Outcome::Expired);
        }
        match &account.delivery {
            // Given up already (the record was seen again after a restart).
            Some(EmailDelivery::Abandoned { .. }) => return Ok(Outcome::Abandoned),
            // The record was seen again while its mail waits in the delayed store: the retry
            // task owns it.
            Some(EmailDelivery::Failed {
                next_attempt_at: Some(_),
                ..
            }) if !attempt.is_retry() => return Ok(Outcome::RetryScheduled),
            _ => {}
        }
        let (Some(username), Some(email)) = (&account.username, &account.email) else {
            return Ok(Outcome::UnknownUser);
        };
        let binding = CodeBinding {
            user_id,
            code_id,
            expires_at: live.expires_at,
        };
        let Some(token) = self.keyring.mint(&live.key_id, &binding) else {
            let reason = format!("code key `{}` is no longer configured", live.key_id);
            return self
                .record_failure(user_id, code_id, attempt, reason, true)
                .await;
        };
        let link = self
            .public_base_url
            .link("/confirm", &[("code", token.expose())]);
        let revoke_link = self
            .public_base_url
            .link("/revoke", &[("code", token.expose())]);
        let rendered = self.mailer.render(&Invitation {
            to: email.as_str(),
            username: username.as_str(),
            link: &link,
            revoke_link: &revoke_link,
            locale: account.locale.as_ref().map(|l| l.as_str()),
            time_zone: account.time_zone.as_ref().map(|t| t.as_str()),
            expires_at: live.expires_at,
        });
        let rendered = match rendered {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("template error: {e}");
                return self
                    .record_failure(user_id, code_id, attempt, reason, true)
                    .await;
            }
        };
        let mail = RetriedMail::Invitation(code_id);
        match self.send(mail, email.as_str(), &rendered).await {
            Ok(accepted) => {
                let template = rendered.template.clone();
                let outcome = self
                    .record_after_send(user_id, loaded, |now| OnboardingCommand::RecordMailSent {
                        code_id,
                        message_id: accepted.message_id.clone(),
                        smtp_response: accepted.smtp_response.clone(),
                        template: Some(template.clone()),
                        now,
                    })
                    .await?;
                if attempt.is_retry() {
                    self.store.remove_mail_retry(mail).await?;
                }
                Ok(outcome)
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt = attempt.number, recipient_domain = %email.domain(), "invitation mail failed");
                self.record_failure(user_id, code_id, attempt, e.to_string(), e.is_permanent())
                    .await
            }
        }
    }

    /// Records a failed attempt at an invitation; schedules the next one or gives up.
    async fn record_failure(
        &self,
        user_id: Uuid,
        code_id: CodeId,
        attempt: Attempt,
        reason: String,
        permanent: bool,
    ) -> Result<Outcome, StoreError> {
        let mail = RetriedMail::Invitation(code_id);
        let now = Utc::now();
        let decision = self.policy.decide(attempt, &reason, permanent, now);
        let failed = OnboardingCommand::RecordMailFailed {
            code_id,
            reason: reason.clone(),
            permanent,
            attempt: attempt.number,
            next_attempt_at: decision.retry_at(),
            now,
        };
        let actor = Actor::system("email-worker");
        match self.store.execute(user_id, failed, &actor).await {
            Ok(()) => {}
            Err(StoreError::Refused(OnboardingError::MailAlreadySent(_))) => {
                self.store.remove_mail_retry(mail).await?;
                return Ok(Outcome::AlreadySent);
            }
            Err(e) => return Err(e),
        }
        match decision {
            Decision::RetryAt(next) => {
                self.schedule(mail, user_id, attempt, now, next, reason)
                    .await?;
                Ok(Outcome::RetryScheduled)
            }
            Decision::GiveUp(why) => {
                let abandon = OnboardingCommand::RecordMailAbandoned {
                    code_id,
                    reason: why,
                    attempts: attempt.number,
                    now: Utc::now(),
                };
                match self.store.execute(user_id, abandon, &actor).await {
                    Ok(()) | Err(StoreError::Refused(OnboardingError::MailAlreadySent(_))) => {}
                    Err(e) => return Err(e),
                }
                self.store.remove_mail_retry(mail).await?;
                Ok(Outcome::Abandoned)
            }
        }
    }

    /// Tries the welcome mail once; on a transient failure schedules the next attempt, as the
    /// policy allows. The welcome mail is best effort: giving up is logged and counted, not
    /// recorded.
    async fn welcome_mail(&self, user_id: Uuid, attempt: Attempt) -> Result<Outcome, StoreError> {
        let mail = RetriedMail::Welcome(user_id);
        // Seen again (a restart, a rebalance) while its retry waits: the retry task owns it.
        if !attempt.is_retry() && self.store.mail_retry_waits(mail).await? {
            return Ok(Outcome::RetryScheduled);
        }
        let loaded = self.store.load_for_command(user_id).await?;
        let Some(account) = loaded.account().cloned() else {
            return Ok(Outcome::UnknownUser);
        };
        if account.welcome_sent_at.is_some() {
            return Ok(Outcome::AlreadySent);
        }
        let (Some(username), Some(email), Some(activated_at)) =
            (&account.username, &account.email, account.activated_at)
        else {
            return Ok(Outcome::NotPending);
        };
        let rendered = match self.mailer.render_welcome(
            username.as_str(),
            activated_at,
            account.locale.as_ref().map(|l| l.as_str()),
            account.time_zone.as_ref().map(|t| t.as_str()),
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "welcome template failed; no welcome mail");
                return Ok(Outcome::Failed { permanent: true });
            }
        };
        let error = match self.send(mail, email.as_str(), &rendered).await {
            Ok(accepted) => {
                return self
                    .record_after_send(user_id, loaded, |now| {
                        OnboardingCommand::RecordWelcomeMailSent {
                            message_id: accepted.message_id.clone(),
                            template: rendered.template.clone(),
                            now,
                        }
                    })
                    .await;
            }
            Err(e) => e,
        };
        let now = Utc::now();
        let reason = error.to_string();
        match self
            .policy
            .decide(attempt, &reason, error.is_permanent(), now)
        {
            Decision::GiveUp(_) => {
                tracing::warn!(error = %error, attempt = attempt.number, recipient_domain = %email.domain(), "welcome mail failed; giving up");
                Ok(Outcome::Failed {
                    permanent: error.is_permanent(),
                })
            }
            Decision::RetryAt(next_attempt_at) => {
                tracing::warn!(error = %error, attempt = attempt.number, %next_attempt_at, recipient_domain = %email.domain(), "welcome mail failed; retry scheduled");
                self.schedule(mail, user_id, attempt, now, next_attempt_at, reason)
                    .await?;
                Ok(Outcome::RetryScheduled)
            }
        }
    }

    /// Sends a rendered mail under the Message-ID of what it is for (`invitation/<code id>`,
    /// `welcome/<user id>`: the same on every attempt) and counts the attempt
    /// (`onboard_mail_attempts_total`).
    async fn send(
        &self,
        mail: RetriedMail,
        to: &str,
        rendered: &Rendered,
    ) -> Result<Accepted, MailError> {
        let message_id = self
            .mailer
            .message_id_for(&format!("{}/{}", mail.kind(), mail.key()));
        let result = self.mailer.send_as(to, rendered, message_id).await;
        let label = match &result {
            Ok(_) => "accepted",
            Err(e) if e.is_permanent() => "permanent_failure",
            Err(_) => "transient_failure",
        };
        metrics::counter!("onboard_mail_attempts_total", "kind" => mail.kind(), "result" => label)
            .increment(1);
        result
    }

    /// Puts a failed mail in the delayed store for its attempt at `next_attempt_at`.
    async fn schedule(
        &self,
        mail: RetriedMail,
        user_id: Uuid,
        attempt: Attempt,
        now: DateTime<Utc>,
        next_attempt_at: DateTime<Utc>,
        last_error: String,
    ) -> Result<(), StoreError> {
        self.store
            .schedule_mail_retry(&MailRetry {
                mail,
                user_id,
                attempts: attempt.number as i32,
                first_failed_at: attempt.first_failed_at.unwrap_or(now),
                next_attempt_at,
                last_error,
            })
            .await
    }

    /// Records that the SMTP server accepted a mail, first on the account as it was read
    /// before sending (`loaded`), then, when another command changed it meanwhile, on the
    /// account as it is now. The mail is out: this retries for up to a minute (through database
    /// hiccups and concurrent changes) rather than let the record be handled again, which would
    /// mail a second time.
    async fn record_after_send(
        &self,
        user_id: Uuid,
        loaded: Loaded,
        command: impl Fn(DateTime<Utc>) -> OnboardingCommand,
    ) -> Result<Outcome, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(100);
        let actor = Actor::system("email-worker");
        let mut loaded = Some(loaded);
        loop {
            let recorded = match loaded.take() {
                Some(loaded) => {
                    match self
                        .store
                        .execute_loaded(loaded, command(Utc::now()), &actor)
                        .await
                    {
                        // Changed since it was read: decided again at once on what it is now.
                        Err(StoreError::Conflict) => continue,
                        other => other,
                    }
                }
                None => {
                    self.store
                        .execute(user_id, command(Utc::now()), &actor)
                        .await
                }
            };
            match recorded {
                Ok(()) => return Ok(Outcome::Sent),
                Err(StoreError::Refused(
                    OnboardingError::MailAlreadySent(_) | OnboardingError::WelcomeAlreadySent,
                )) => return Ok(Outcome::AlreadySent),
                Err(e @ (StoreError::Conflict | StoreError::Unavailable(_)))
                    if Instant::now() < deadline =>
                {
                    tracing::warn!(error = %e, "mail sent but not yet recorded; retrying the record");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, %user_id, "mail sent but could not be recorded; it may be sent again");
                    return Err(e);
                }
            }
        }
    }
}
