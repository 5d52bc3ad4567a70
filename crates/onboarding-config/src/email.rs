//! `[output_adapter.email]`: the SMTP server, the mails' headers, their templates and retries.

use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;

use secrecy::SecretString;
use serde::{de, Deserialize, Deserializer, Serialize};

use crate::limits;
use crate::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputAdapter {
    pub email: EmailSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    pub from_address: String,
    pub from_name: String,
    pub username: String,
    pub password: SecretString,
    pub hostname: String,
    pub port: u16,
    /// STARTTLS required when true; plain SMTP when false (local catchers only).
    pub enable_start_tls: bool,
    /// Implicit TLS (SMTPS, usually port 465).
    pub enable_tls: bool,
    /// With `enable_start_tls = false`: upgrade with STARTTLS when the server offers it, send in
    /// plain text when it does not.
    #[serde(default)]
    pub opportunistic_start_tls: bool,
    /// A PEM file of certificates trusted for the SMTP server in addition to the Mozilla roots
    /// (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub enable_authentication: bool,
    /// Domain used in Message-ID headers; defaults to the from-address domain, never the host name.
    pub message_id_domain: Option<String>,
    /// Name sent in HELO/EHLO; defaults to the Message-ID domain.
    pub hello_name: Option<String>,
    /// Envelope sender (MAIL FROM, where bounces go); defaults to `from_address`.
    #[serde(default)]
    pub envelope_from: Option<String>,
    /// A Reply-To header for every mail; none by default.
    #[serde(default)]
    pub reply_to: Option<String>,
    pub timeout_seconds: u64,
    /// Attempts per invitation mail before it is abandoned (transient failures only; a
    /// permanent failure abandons it at once). 0 counts as 1.
    #[serde(deserialize_with = "limits::u32_zero_as_one")]
    pub max_attempts: NonZeroU32,
    /// Wait before the second attempt; each later wait doubles (up to an hour), with ±20 % jitter.
    #[serde(deserialize_with = "retry_initial_seconds")]
    pub retry_initial_seconds: NonZeroU64,
    /// An invitation mail not sent this long after its first failure is abandoned.
    pub max_age_minutes: u64,
    /// Overrides the invitation templates' subject in every locale (a template:
    /// `{{ organisation }}`, `{{ username }}`). Unset: each locale's `invitation.subject.txt`.
    #[serde(default)]
    pub invitation_subject: Option<String>,
    /// A directory with one folder per locale (`en/`, `de/`, …) holding `invitation.{subject.txt,
    /// txt,html}` and `welcome.{subject.txt,txt,html}`. Unset: the templates built into the binary.
    #[serde(default)]
    pub templates_dir: Option<PathBuf>,
    /// Locale used when the user's locale (and its language) has no templates.
    pub default_locale: String,
}

impl EmailSettings {
    pub fn message_id_domain(&self) -> String {
        self.message_id_domain.clone().unwrap_or_else(|| {
            self.from_address
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_else(|| "onboard.invalid".to_owned())
        })
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.enable_tls && self.enable_start_tls {
            return Err(ConfigError::Invalid("output_adapter.email: enable_tls (implicit TLS) and enable_start_tls are exclusive; choose one".into()));
        }
        if self.opportunistic_start_tls && (self.enable_start_tls || self.enable_tls) {
            return Err(ConfigError::Invalid("output_adapter.email: opportunistic_start_tls applies only with enable_start_tls = false and enable_tls = false; choose one mode".into()));
        }
        Ok(())
    }
}

fn retry_initial_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU64, D::Error> {
    NonZeroU64::new(u64::deserialize(d)?).ok_or_else(|| {
        de::Error::custom("output_adapter.email.retry_initial_seconds must be at least 1")
    })
}

/// The keys of `[output_adapter.email]` that have a default; the server and the sender have none.
#[derive(Serialize)]
pub(crate) struct OutputAdapterDefaults {
    email: EmailDefaults,
}

#[derive(Serialize)]
struct EmailDefaults {
    from_name: &'static str,
    username: &'static str,
    password: &'static str,
    port: u16,
    enable_start_tls: bool,
    enable_tls: bool,
    enable_authentication: bool,
    timeout_seconds: u64,
    max_attempts: NonZeroU32,
    retry_initial_seconds: NonZeroU64,
    max_age_minutes: u64,
    default_locale: &'static str,
}

impl Default for OutputAdapterDefaults {
    fn default() -> Self {
        Self {
            email: EmailDefaults {
                from_name: "",
                username: "",
                password: "",
                port: 587,
                enable_start_tls: true,
                enable_tls: false,
                enable_authentication: true,
                timeout_seconds: 30,
                max_attempts: limits::nonzero_u32(5),
                retry_initial_seconds: limits::nonzero_u64(30),
                max_age_minutes: 1440,
                default_locale: "en",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::*;

    #[test]
    fn opportunistic_starttls_is_a_mode_of_its_own() {
        // MINIMAL keeps the default: STARTTLS required.
        let toml = MINIMAL.replacen(
            "from_address",
            "opportunistic_start_tls = true\n        from_address",
            1,
        );
        let err = load(&toml).unwrap_err().to_string();
        assert!(err.contains("opportunistic_start_tls"), "{err}");
        let toml = MINIMAL.replacen(
            "from_address",
            "opportunistic_start_tls = true\n        enable_start_tls = false\n        from_address",
            1,
        );
        assert!(
            load(&toml)
                .unwrap()
                .output_adapter
                .email
                .opportunistic_start_tls
        );
    }
}
