//! Reading accounts by state (the `account_states` table): the admins' list of invitations, and
//! the scheduler that marks expired codes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use onboarding_domain::OnboardingCommand;
use uuid::Uuid;

use crate::{db, Actor, Store, StoreError};

/// One row of the admins' invitation list.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct AccountSummary {
    pub user_id: Uuid,
    pub state: String,
    pub state_since: DateTime<Utc>,
    pub code_expires_at: Option<DateTime<Utc>>,
    pub username: Option<String>,
    pub domain: Option<String>,
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The latest code's invitation mail: `queued`, `sent` or `failed`.
    pub delivery: Option<String>,
    /// The active account's entry in the user store: `pending`, `provisioned` or `failed`.
    pub provisioning: Option<String>,
}

/// What the admins' list is filtered by; `None` takes every value.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccountFilter<'a> {
    pub state: Option<&'a str>,
    pub delivery: Option<&'a str>,
    pub provisioning: Option<&'a str>,
    /// Part of the username or the email address, any case (the console's search box).
    pub search: Option<&'a str>,
}

impl Store {
    /// Invitations in user id order, filtered by state, delivery and provisioning, `limit` at a
    /// time after `after`.
    ///
    /// A live code past its expiry lists as `Expired` (since its expiry, with no
    /// `code_expires_at`) and is found by `state=Expired`, not `CodeIssued`, before the
    /// scheduler records the expiry, as the account's own view shows it
    /// (`Onboarding::state_at`).
    pub async fn list_accounts(
        &self,
        filter: AccountFilter<'_>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<AccountSummary>, StoreError> {
        // A lapsed code (one the scheduler has not marked yet) is written out in the filter (rather
        // than comparing the CASE) so that the indexes by state still serve it.
        sqlx::query_as(
            "SELECT user_id, \
                    CASE WHEN state = 'CodeIssued' AND code_expires_at <= $5 THEN 'Expired' ELSE state END AS state, \
                    CASE WHEN state = 'CodeIssued' AND code_expires_at <= $5 THEN code_expires_at ELSE state_since END AS state_since, \
                    CASE WHEN state = 'CodeIssued' AND code_expires_at <= $5 THEN NULL ELSE code_expires_at END AS code_expires_at, \
                    username, domain, email, created_at, delivery, provisioning \
             FROM account_states \
             WHERE ($1::text IS NULL \
                    OR (state = $1 AND NOT (state = 'CodeIssued' AND code_expires_at <= $5)) \
                    OR ($1 = 'Expired' AND state = 'CodeIssued' AND code_expires_at <= $5)) \
             AND ($2::text IS NULL OR delivery = $2) \
             AND ($6::text IS NULL OR provisioning = $6) \
             AND ($7::text IS NULL OR username ILIKE $7 ESCAPE '\\' OR email ILIKE $7 ESCAPE '\\') \
             AND ($3::uuid IS NULL OR user_id > $3) ORDER BY user_id LIMIT $4",
        )
        .bind(filter.state)
        .bind(filter.delivery)
        .bind(after)
        .bind(limit)
        .bind(Utc::now())
        .bind(filter.provisioning)
        .bind(filter.search.map(like_pattern))
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    /// Which of `ids` had a link of theirs opened (`LinkOpened`), for the console's list: one
    /// look-up by the events' primary key per account.
    pub async fn links_opened(
        &self,
        ids: &[Uuid],
    ) -> Result<std::collections::HashSet<Uuid>, StoreError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let opened: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = 'Onboarding' \
             AND aggregate_id = ANY($1) AND event_type = 'LinkOpened'",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(opened
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect())
    }

    /// Accounts whose live code is past its expiry but not yet marked `Expired`.
    pub async fn due_for_expiry(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query_scalar(
            "SELECT user_id FROM account_states WHERE state = 'CodeIssued' AND code_expires_at <= $1 \
             ORDER BY code_expires_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    /// Marks every due code `Expired` (an event per account), until none is left. Returns how many.
    pub async fn expire_due_codes(&self) -> Result<usize, StoreError> {
        let mut expired = 0;
        loop {
            let due = self.due_for_expiry(Utc::now(), 500).await?;
            if due.is_empty() {
                return Ok(expired);
            }
            let before = expired;
            for user_id in due {
                let cmd = OnboardingCommand::ExpireCode { now: Utc::now() };
                match self
                    .execute(user_id, cmd, &Actor::system("scheduler"))
                    .await
                {
                    Ok(()) => expired += 1,
                    // Someone resent or activated in between: nothing to expire any more.
                    Err(StoreError::Refused(_) | StoreError::Conflict) => {}
                    Err(e) => return Err(e),
                }
            }
            if expired == before {
                return Ok(expired);
            }
        }
    }
}

/// `ILIKE` pattern that finds `text` anywhere, its `%`, `_` and `\` taken literally.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The scheduler: marks expired codes every `every`, until `shutdown`.
pub async fn run_scheduler(
    store: Store,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tracing::info!(every_s = every.as_secs(), "scheduler started");
    loop {
        match store.expire_due_codes().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "codes marked expired"),
            Err(e) => tracing::warn!(error = %e, "expiry scan failed; will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    tracing::info!("scheduler stopped");
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn a_search_takes_like_metacharacters_literally() {
        assert_eq!(like_pattern("jane"), "%jane%");
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
