//! When a failed mail is tried again, and the task that tries it.
//!
//! One policy serves invitation and welcome mails: after a failed attempt [`RetryPolicy::decide`]
//! says [`Decision::RetryAt`] (the mail waits in the delayed store, `mail_retries`) or
//! [`Decision::GiveUp`] with the reason. [`run`] claims due rows under a lease and hands each to
//! [`Delivery::retry`], the same path a record's first attempt takes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use onboarding_config::EmailSettings;
use onboarding_store::MailRetry;
use tokio_util::sync::CancellationToken;

use crate::delivery::{Delivery, Outcome};

/// When to try a mail again and when to give up on it.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max_age: chrono::Duration,
}

/// Which attempt at a mail this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// When the first attempt failed; `None` on the first attempt.
    pub first_failed_at: Option<DateTime<Utc>>,
}

impl Attempt {
    pub const FIRST: Self = Self {
        number: 1,
        first_failed_at: None,
    };

    /// The attempt after those a row of the delayed store counts.
    pub fn after(retry: &MailRetry) -> Self {
        Self {
            number: u32::try_from(retry.attempts).unwrap_or(0) + 1,
            first_failed_at: Some(retry.first_failed_at),
        }
    }

    /// Whether an earlier attempt failed (this one comes from the delayed store).
    pub fn is_retry(&self) -> bool {
        self.first_failed_at.is_some()
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Stop trying; the reason says why (and what the last failure was).
    GiveUp(String),
}

impl Decision {
    /// The next attempt's time, if there is one.
    pub fn retry_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::RetryAt(at) => Some(*at),
            Self::GiveUp(_) => None,
        }
    }
}

impl RetryPolicy {
    /// `max_attempts`, `retry_initial_seconds` and `max_age_minutes` of `[output_adapter.email]`.
    pub fn from_settings(email: &EmailSettings) -> Self {
        Self {
            max_attempts: email.max_attempts.get(),
            initial: Duration::from_secs(email.retry_initial_seconds.get()),
            max_age: chrono::Duration::minutes(
                i64::try_from(email.max_age_minutes).unwrap_or(i64::MAX / 60_000),
            ),
        }
    }

    /// After `attempt` failed with `reason` at `now`: give up on a permanent failure, after
    /// `max_attempts`, or once the first failure is `max_age` old; else try again after
    /// [`RetryPolicy::delay_after`].
    pub fn decide(
        &self,
        attempt: Attempt,
        reason: &str,
        permanent: bool,
        now: DateTime<Utc>,
    ) -> Decision {
        let failing_for = now - attempt.first_failed_at.unwrap_or(now);
        if permanent {
            Decision::GiveUp(format!("permanent failure: {reason}"))
        } else if attempt.number >= self.max_attempts {
            Decision::GiveUp(format!(
                "{} attempts failed; the last: {reason}",
                attempt.number
            ))
        } else if failing_for >= self.max_age {
            Decision::GiveUp(format!(
                "still failing {} minutes after the first failure; the last: {reason}",
                failing_for.num_minutes()
            ))
        } else {
            Decision::RetryAt(
                now + chrono::Duration::from_std(self.delay_after(attempt.number))
                    .unwrap_or_else(|_| chrono::Duration::hours(1)),
            )
        }
    }

    /// The wait after `attempt` failed: `initial` doubled per earlier attempt, at most an hour,
    /// with ±20 % jitter so that mails that failed together are not retried together.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(Duration::from_secs(3600));
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        base.mul_f64(jitter)
    }
}

/// How long a claim holds when PostgreSQL lost the claiming session but not the worker (the
/// database restarted): the worker's attempt has this long to finish before another worker may
/// take the mail over.
pub const LEASE: chrono::Duration = chrono::Duration::minutes(5);

/// How old the claim of a worker whose PostgreSQL session ended must be before another worker
/// takes the mail over: longer than an attempt can last (`output_adapter.email.timeout_seconds`
/// for the SMTP exchange, plus 30 s to record its outcome), and at least a minute. A worker that
/// died has ended its session; one that lives through a restart of PostgreSQL lost it too, and
/// has finished its attempt by then.
pub fn takeover_after(smtp_timeout_seconds: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(smtp_timeout_seconds).unwrap_or(i64::MAX / 2000) + 30)
        .max(chrono::Duration::seconds(60))
}

/// Tries due mails from the delayed store until `shutdown`; finishes the attempt in hand. Claims
/// from a PostgreSQL session of its own (`MailClaimer`), so that its claims end with the worker
/// (docs/adr/0034).
pub async fn run(
    delivery: Delivery,
    takeover_after: chrono::Duration,
    shutdown: CancellationToken,
) {
    let store = delivery.store();
    let mut claimer: Option<onboarding_store::MailClaimer> = None;
    loop {
        let claimer_in_hand = match claimer.as_mut() {
            Some(c) => Ok(c),
            None => store.mail_claimer().await.map(|c| claimer.insert(c)),
        };
        let now = Utc::now();
        let claimed = match claimer_in_hand {
            Ok(c) => c.claim(now, now + LEASE, now - takeover_after).await,
            Err(e) => Err(e),
        };
        if claimed.is_err() {
            // A broken session is opened again at the next round.
            claimer = None;
        }
        let pause = match claimed {
            Ok(Some(retry)) => {
                let kind = retry.mail.kind();
                let attempt = Attempt::after(&retry).number;
                match delivery.retry(&retry).await {
                    Ok(outcome) => {
                        if outcome != Outcome::RetryScheduled {
                            // Sent, given up, or nothing left to send for this mail.
                            if let Err(e) = store.remove_mail_retry(retry.mail).await {
                                tracing::warn!(error = %e, "cannot remove a finished retry; it will be seen again");
                            }
                        }
                        tracing::info!(user_id = %retry.user_id, kind, attempt, outcome = outcome.label(), "mail retry handled");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "mail retry could not be recorded; it is tried again after its lease, or sooner by another worker if this one stops")
                    }
                }
                Duration::ZERO
            }
            Ok(None) => Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the delayed mail store; retrying");
                Duration::from_secs(5)
            }
        };
        // Counted when nothing is due, not after every retry.
        if !pause.is_zero() {
            if let Ok(n) = store.mail_retries_waiting().await {
                metrics::gauge!("onboard_mail_retries_waiting").set(n as f64);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(30),
            max_age: chrono::Duration::hours(24),
        }
    }

    #[test]
    fn a_dead_workers_mail_is_taken_over_after_its_longest_attempt_and_at_least_a_minute() {
        assert_eq!(takeover_after(30), chrono::Duration::seconds(60));
        assert_eq!(takeover_after(10), chrono::Duration::seconds(60));
        assert_eq!(takeover_after(600), chrono::Duration::seconds(630));
        assert!(takeover_after(u64::MAX) > chrono::Duration::days(365));
    }

    #[test]
    fn waits_double_per_attempt_with_jitter_and_stop_growing_at_an_hour() {
        let policy = policy();
        for (attempt, base) in [(1, 30.0), (2, 60.0), (3, 120.0), (8, 3600.0), (40, 3600.0)] {
            for _ in 0..50 {
                let d = policy.delay_after(attempt).as_secs_f64();
                assert!(
                    (base * 0.8..=base * 1.2).contains(&d),
                    "attempt {attempt}: {d} s"
                );
            }
        }
    }

    #[test]
    fn a_transient_failure_is_tried_again_after_the_policys_wait() {
        let now = Utc::now();
        let Decision::RetryAt(at) = policy().decide(Attempt::FIRST, "timeout", false, now) else {
            panic!("a first transient failure is retried");
        };
        let wait = (at - now).num_milliseconds();
        assert!((24_000..=36_000).contains(&wait), "{wait} ms");
    }

    #[test]
    fn a_permanent_failure_the_last_attempt_or_an_old_failure_gives_up_with_its_reason() {
        let now = Utc::now();
        let policy = policy();
        assert_eq!(
            policy.decide(Attempt::FIRST, "550 no such user", true, now),
            Decision::GiveUp("permanent failure: 550 no such user".into())
        );
        let fifth = Attempt {
            number: 5,
            first_failed_at: Some(now - chrono::Duration::minutes(10)),
        };
        assert_eq!(
            policy.decide(fifth, "timeout", false, now),
            Decision::GiveUp("5 attempts failed; the last: timeout".into())
        );
        let old = Attempt {
            number: 2,
            first_failed_at: Some(now - chrono::Duration::hours(25)),
        };
        assert_eq!(
            policy.decide(old, "timeout", false, now),
            Decision::GiveUp(
                "still failing 1500 minutes after the first failure; the last: timeout".into()
            )
        );
    }
}
