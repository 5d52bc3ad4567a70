//! `[identity_mgt.user_onboarding]`: WSO2's ask-password onboarding, its codes and their limits.

use std::num::NonZeroU64;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::limits;
use crate::ConfigError;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityMgt {
    pub user_onboarding: UserOnboarding,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserOnboarding {
    /// WSO2's switch. When false, invitations are refused: this engine only does ask-password.
    pub ask_password_from_user: bool,
    /// Minutes a code stays valid (WSO2's "Ask password code expiry time").
    pub ask_password_email_validity: i64,
    /// Bounds for a per-invitation `code_validity_minutes` override; see
    /// [`UserOnboarding::validity_bounds`].
    pub min_validity_minutes: i64,
    pub max_validity_minutes: i64,
    /// Ignored: a wrong code no longer locks the live code (docs/adr/0021). Still accepted so that
    /// older files load; the gateway warns at start when it is set.
    pub max_failed_attempts: Option<u32>,
    /// Minimum seconds between two codes for one invitation (admin resend or user request).
    pub resend_cooldown_seconds: i64,
    /// Most re-issued codes per invitation in any 24 hours.
    pub resend_daily_cap: u32,
    /// Seconds between two passes of the scheduler that marks expired codes (0 counts as 1).
    #[serde(deserialize_with = "limits::u64_zero_as_one")]
    pub expiry_scan_seconds: NonZeroU64,
    /// When true, a SCIM create must carry WSO2's `askPassword: true` (the enterprise
    /// extension); when false (the default), a create without a password is an invitation, as
    /// Entra ID and Okta send it.
    pub scim_require_ask_password: bool,
}

impl Default for UserOnboarding {
    /// The built-in settings, as a configuration file that leaves the section out gets them.
    fn default() -> Self {
        Self {
            ask_password_from_user: true,
            ask_password_email_validity: 1440,
            min_validity_minutes: 5,
            max_validity_minutes: 10080,
            max_failed_attempts: None,
            resend_cooldown_seconds: 60,
            resend_daily_cap: 5,
            expiry_scan_seconds: limits::nonzero_u64(30),
            scim_require_ask_password: false,
        }
    }
}

/// An invitation asked for while `ask_password_from_user` is off.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("invitations are disabled: set identity_mgt.user_onboarding.ask_password_from_user = true")]
pub struct InvitationsDisabled;

impl UserOnboarding {
    /// Whether this engine invites at all (WSO2's switch); every way in asks before it invites.
    pub fn invitations_enabled(&self) -> Result<(), InvitationsDisabled> {
        if self.ask_password_from_user {
            Ok(())
        } else {
            Err(InvitationsDisabled)
        }
    }

    /// The minutes a code may stay valid: `max(min_validity_minutes, 1)` to
    /// `max_validity_minutes`, since a code always lives at least one minute. The configured
    /// default and every per-invitation override lie within.
    pub fn validity_bounds(&self) -> RangeInclusive<i64> {
        self.min_validity_minutes.max(1)..=self.max_validity_minutes
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.min_validity_minutes < 0 || self.min_validity_minutes > self.max_validity_minutes {
            return bad(format!(
                "identity_mgt.user_onboarding: min_validity_minutes ({}) must be between 0 and max_validity_minutes ({})",
                self.min_validity_minutes, self.max_validity_minutes
            ));
        }
        let bounds = self.validity_bounds();
        if !bounds.contains(&self.ask_password_email_validity) {
            return bad(format!(
                "identity_mgt.user_onboarding.ask_password_email_validity ({}) must be between {} and {} minutes",
                self.ask_password_email_validity,
                bounds.start(),
                bounds.end()
            ));
        }
        if self.resend_daily_cap < 1 || self.resend_cooldown_seconds < 0 {
            return bad(format!(
                "identity_mgt.user_onboarding: resend_daily_cap ({}) must be at least 1, resend_cooldown_seconds ({}) at least 0",
                self.resend_daily_cap, self.resend_cooldown_seconds
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::*;

    #[test]
    fn an_out_of_bounds_validity_is_refused_with_the_bounds() {
        let toml = format!(
            "{MINIMAL}\n[identity_mgt.user_onboarding]\nask_password_email_validity = 999999\n"
        );
        let err = load(&toml).unwrap_err().to_string();
        assert!(err.contains("between 5 and 10080"), "{err}");
    }
}
