//! One account: decide, write it to the user store, record the outcome on the aggregate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use onboarding_domain::password::PasswordHash;
use onboarding_domain::value::UserDomain;
use onboarding_domain::{OnboardingCommand, OnboardingError, OnboardingState, Provisioning};
use onboarding_store::{Actor, Store, StoreError};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::user_store::{Deleted, Locked, UserRecord, UserStore, UserStoreError};

/// What became of one activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written and recorded (`UserProvisioned`).
    Provisioned,
    /// Already recorded as provisioned: a record delivered again, or another provisioner.
    AlreadyProvisioned,
    /// The entry of a provisioned account was brought up to date (enabled again: her password is
    /// back; a new address or new claims).
    Updated,
    /// The account is disabled: her entry holds no password (docs/adr/0032).
    Locked,
    /// The account is disabled and the store holds no entry for her: nothing binds as her.
    LockedAbsent,
    /// The account is not active (or unknown): nothing is provisioned.
    NotActive,
    /// The store refused the entry; `ProvisioningFailed { permanent: true }` is recorded.
    Refused,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Provisioned => "provisioned",
            Self::AlreadyProvisioned => "already_provisioned",
            Self::Updated => "updated",
            Self::Locked => "locked",
            Self::LockedAbsent => "locked_absent",
            Self::NotActive => "not_active",
            Self::Refused => "refused",
        }
    }
}

/// Why the provisioner looks at an account: its activation, or a later change that the
/// directory must follow (disabled, enabled, a new address, new claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The `activated` record: an account recorded as provisioned is left as it is (a record
    /// delivered again writes nothing).
    Activation,
    /// A change of the account: the directory is made to match the account as it is now, however
    /// often this runs (docs/adr/0032).
    Change,
}

/// An attempt that must be made again later: the directory or PostgreSQL is unavailable.
#[derive(Debug)]
pub struct TryAgain(pub String);

/// Backoff between attempts while the directory (or PostgreSQL) is unavailable.
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(15);

/// Provisions accounts into one user store and records the outcomes.
#[derive(Clone)]
pub struct Provision {
    store: Store,
    user_store: Arc<dyn UserStore>,
}

impl Provision {
    pub fn new(store: Store, user_store: Arc<dyn UserStore>) -> Self {
        Self { store, user_store }
    }

    pub fn user_store(&self) -> &Arc<dyn UserStore> {
        &self.user_store
    }

    /// Makes the user store match the account as it is now (active: her entry with her password;
    /// disabled: her entry without one), trying again with backoff while the directory or the
    /// database is unavailable, until it is done or `shutdown` comes (then `None`: the record is
    /// left for redelivery, and nothing is lost). Records the first failure of a run of failures,
    /// and each one whose reason differs from the previous, as `ProvisioningFailed` (while the
    /// account is active and not yet provisioned; the aggregate refuses it otherwise).
    #[tracing::instrument(skip_all, fields(user_id = %user_id, trigger = ?trigger))]
    pub async fn until_done(
        &self,
        user_id: Uuid,
        trigger: Trigger,
        shutdown: &CancellationToken,
    ) -> Option<Outcome> {
        let started = Instant::now();
        let mut delay = FIRST_DELAY;
        let mut recorded: Option<String> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.attempt(user_id, trigger, attempt).await {
                Ok(outcome) => {
                    metrics::counter!("onboard_provisioning_total", "outcome" => outcome.label())
                        .increment(1);
                    if outcome == Outcome::Provisioned {
                        metrics::histogram!("onboard_provisioning_seconds")
                            .record(started.elapsed().as_secs_f64());
                    }
                    tracing::info!(
                        outcome = outcome.label(),
                        attempts = attempt,
                        "record handled"
                    );
                    return Some(outcome);
                }
                Err(TryAgain(reason)) => {
                    tracing::warn!(%reason, attempt, retry_in_ms = delay.as_millis() as u64, "provisioning failed; will try again");
                    if recorded.as_deref() != Some(reason.as_str()) {
                        let record = self.record_failure(user_id, &reason, false, attempt).await;
                        if record.is_ok() {
                            recorded = Some(reason);
                        }
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_DELAY);
                }
            }
        }
    }

    /// One attempt. `Err` when it should be made again later.
    ///
    /// It reads the account as it is now, whatever the record that brought it here said: records
    /// of one user come in order, each after the change it tells of was committed, so the last
    /// record handled leaves the directory as the account is after the last change, and handling
    /// a record again (after a crash before its offset was stored) writes the same again.
    pub async fn attempt(
        &self,
        user_id: Uuid,
        trigger: Trigger,
        attempt: u32,
    ) -> Result<Outcome, TryAgain> {
        let account = self.store.load(user_id).await.map_err(unavailable)?;
        let Some(account) = account else {
            return Ok(Outcome::NotActive);
        };
        match account.state {
            OnboardingState::Active => {}
            // A disabled account keeps her entry, without her password.
            OnboardingState::Disabled => return self.lock(user_id, &account).await,
            // Never a revoked, expired or unfinished invitation: only an active account.
            _ => return Ok(Outcome::NotActive),
        }
        let provisioned = matches!(account.provisioning, Some(Provisioning::Provisioned { .. }));
        if provisioned && trigger == Trigger::Activation {
            return Ok(Outcome::AlreadyProvisioned);
        }
        let result = match self.record_of(user_id, &account).await? {
            Ok(user) => self.user_store.upsert(&user).await,
            Err(refused) => Err(refused),
        };
        match result {
            Ok(upserted) => {
                metrics::counter!("onboard_provisioning_attempts_total", "result" => upserted.label())
                    .increment(1);
                if provisioned {
                    // Recorded before: the entry follows the account, nothing more to record.
                    return Ok(Outcome::Updated);
                }
                let kind = self.user_store.kind().to_owned();
                let recorded = self
                    .store
                    .execute_retrying(
                        user_id,
                        || OnboardingCommand::RecordProvisioned {
                            user_store: kind.clone(),
                            attempts: attempt,
                            now: Utc::now(),
                        },
                        &Actor::system("provisioner"),
                    )
                    .await;
                match recorded {
                    Ok(()) => Ok(Outcome::Provisioned),
                    Err(StoreError::Refused(OnboardingError::AlreadyProvisioned)) => {
                        Ok(Outcome::AlreadyProvisioned)
                    }
                    Err(StoreError::Refused(_)) => Ok(Outcome::NotActive),
                    // The entry is written; the next attempt writes the same again and records.
                    Err(e) => Err(unavailable(e)),
                }
            }
            Err(e @ UserStoreError::Unavailable(_)) => Err(unreachable_store(&e)),
            Err(e @ UserStoreError::Refused(_)) => {
                count_attempt("refused");
                tracing::error!(reason = %e, "the user store refused the entry; an operator must act");
                self.record_failure(user_id, &e.reason(), true, attempt)
                    .await
                    .map_err(unavailable)?;
                Ok(Outcome::Refused)
            }
        }
    }

    /// A disabled account: her entry stays, without her password. Only a failure to reach the
    /// store or the database is tried again; a refusal is for an operator (there is no failure
    /// event for a disabled account: the log line and the metric say it).
    async fn lock(
        &self,
        user_id: Uuid,
        account: &onboarding_domain::Onboarding,
    ) -> Result<Outcome, TryAgain> {
        let result = match self.record_of(user_id, account).await? {
            Ok(user) => self.user_store.lock(&user).await,
            // Never provisioned (another user store domain, no hash): no entry binds as her.
            Err(_) => return Ok(Outcome::LockedAbsent),
        };
        match result {
            Ok(locked) => {
                metrics::counter!("onboard_provisioning_attempts_total", "result" => locked.label())
                    .increment(1);
                Ok(match locked {
                    Locked::Locked => Outcome::Locked,
                    Locked::Absent => Outcome::LockedAbsent,
                })
            }
            Err(e @ UserStoreError::Unavailable(_)) => Err(unreachable_store(&e)),
            Err(e @ UserStoreError::Refused(_)) => {
                count_attempt("refused");
                tracing::error!(reason = %e, "the user store refused to lock the disabled account's entry; an operator must remove its password or the entry");
                Ok(Outcome::Refused)
            }
        }
    }

    /// What the user store receives, or the refusal that no store could accept it.
    async fn record_of(
        &self,
        user_id: Uuid,
        account: &onboarding_domain::Onboarding,
    ) -> Result<Result<UserRecord, UserStoreError>, TryAgain> {
        let (Some(username), Some(email), Some(domain)) =
            (&account.username, &account.email, &account.domain)
        else {
            return Ok(Err(UserStoreError::Refused(
                "the account has no username, address or domain".into(),
            )));
        };
        // One `[user_store]`, WSO2's primary one: accounts of other user store domains would
        // collide with the primary's names in it.
        if domain.as_str() != UserDomain::PRIMARY {
            return Ok(Err(UserStoreError::Refused(format!(
                "the account belongs to the user store domain {}, and only {} accounts are \
                 provisioned into [user_store]",
                domain.as_str(),
                UserDomain::PRIMARY
            ))));
        }
        let Some(password_hash) = current_password_hash(&self.store, user_id)
            .await
            .map_err(unavailable)?
        else {
            return Ok(Err(UserStoreError::Refused(
                "no password hash is stored for this account".into(),
            )));
        };
        Ok(Ok(UserRecord {
            user_id,
            username: username.clone(),
            email: email.clone(),
            claims: account.claims.clone(),
            password_hash,
        }))
    }

    /// Removes an erased user's entry from the user store (docs/adr/0030), trying again with
    /// backoff while the store or the database is unavailable, until it is done or `shutdown`
    /// comes (`None`: the record is left for redelivery). An account that is not erased keeps
    /// its entry (`Ok(None)` inside); a store that refuses the delete is reported, for an
    /// operator.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn remove_until_done(
        &self,
        user_id: Uuid,
        shutdown: &CancellationToken,
    ) -> Option<Result<Option<Deleted>, UserStoreError>> {
        let mut delay = FIRST_DELAY;
        loop {
            let attempt = match self.store.load(user_id).await {
                Ok(Some(account)) if account.state == OnboardingState::Erased => {
                    self.user_store.delete(user_id).await.map(Some)
                }
                Ok(_) => Ok(None),
                Err(e) => Err(UserStoreError::Unavailable(unavailable(e).0)),
            };
            match attempt {
                Err(UserStoreError::Unavailable(reason)) => {
                    metrics::counter!("onboard_deprovisioning_total", "outcome" => "unavailable")
                        .increment(1);
                    tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "removing the erased user's entry failed; will try again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_DELAY);
                }
                done => {
                    let outcome = match &done {
                        Ok(Some(deleted)) => deleted.label(),
                        Ok(None) => "not_erased",
                        Err(_) => "refused",
                    };
                    metrics::counter!("onboard_deprovisioning_total", "outcome" => outcome)
                        .increment(1);
                    match &done {
                        Err(e) => {
                            tracing::error!(reason = %e, "the user store refused to remove the erased user's entry; an operator must remove it")
                        }
                        Ok(_) => tracing::info!(outcome, "erasure handled in the user store"),
                    }
                    return Some(done);
                }
            }
        }
    }

    async fn record_failure(
        &self,
        user_id: Uuid,
        reason: &str,
        permanent: bool,
        attempt: u32,
    ) -> Result<(), StoreError> {
        let kind = self.user_store.kind().to_owned();
        let result = self
            .store
            .execute_retrying(
                user_id,
                || OnboardingCommand::RecordProvisioningFailed {
                    user_store: kind.clone(),
                    reason: reason.to_owned(),
                    permanent,
                    attempt,
                    now: Utc::now(),
                },
                &Actor::system("provisioner"),
            )
            .await;
        match result {
            // Provisioned meanwhile, or no longer active: nothing to record.
            Err(StoreError::Refused(_)) => Ok(()),
            other => other,
        }
    }
}

/// The account's current password hash (argon2id PHC string), from the credential table
/// (`onboarding_store::Credentials`, docs/adr/0018); `None` when it has none.
pub async fn current_password_hash(
    store: &Store,
    user_id: Uuid,
) -> Result<Option<PasswordHash>, StoreError> {
    store
        .credentials()
        .current(user_id)
        .await?
        .map(|c| PasswordHash::parse(c.phc.expose_secret().to_owned()))
        .transpose()
        .map_err(|e| StoreError::Unexpected(Box::new(e)))
}

fn unavailable(e: StoreError) -> TryAgain {
    TryAgain(format!("the database is unavailable: {e}"))
}

/// Counts one attempt at the user store by its result (`onboard_provisioning_attempts_total`).
fn count_attempt(result: &'static str) {
    metrics::counter!("onboard_provisioning_attempts_total", "result" => result).increment(1);
}

/// An attempt that could not reach the user store: counted, and tried again.
fn unreachable_store(e: &UserStoreError) -> TryAgain {
    count_attempt("unavailable");
    TryAgain(e.reason())
}
