//! Settings for every `onboard` component: defaults, then one TOML file, then environment
//! variables (`ONBOARD__SECTION__KEY`, e.g. `ONBOARD__DATABASE__URL`).
//!
//! Keys mirror WSO2 Identity Server's `deployment.toml` where it has them
//! (`[identity_mgt.user_onboarding]`, `[output_adapter.email]`). Secrets are `SecretString`:
//! they never appear in `Debug` output, logs or errors.
//!
//! One module per section: each holds the section's keys, its built-in defaults (a typed
//! `Default`) and its checks. Values are parsed while they are read ([`PublicBaseUrl`],
//! [`Scope`], trusted proxies as networks, positive limits as `NonZero*`), so no user of the
//! settings parses or guards them again.
#![forbid(unsafe_code)]

mod bulk;
mod codes;
mod database;
#[cfg(test)]
mod documented_keys;
mod email;
mod error;
mod gateway;
mod intake;
mod kafka;
mod limits;
mod observability;
mod onboarding;
mod organisation;
mod password;
mod personal_data;
#[cfg(test)]
mod properties;
mod public_base_url;
mod user_store;

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

pub use bulk::BulkSettings;
pub use codes::{CodeKey, CodeSettings};
pub use database::DatabaseSettings;
pub use email::{EmailSettings, OutputAdapter};
pub use error::ConfigError;
pub use gateway::{AdminToken, GatewaySettings, Scope};
pub use intake::IntakeSettings;
pub use kafka::{KafkaSettings, SaslMechanism, SecurityProtocol};
pub use observability::{ObservabilitySettings, OtlpEndpoint};
pub use onboarding::{IdentityMgt, InvitationsDisabled, UserOnboarding};
pub use organisation::OrganisationSettings;
pub use password::{PasswordHashingSettings, PasswordPolicySettings};
pub use personal_data::PersonalDataSettings;
pub use public_base_url::{NotHttp, PublicBaseUrl};
pub use user_store::{LdapUrl, UserStoreProperties, UserStoreSettings, UserStoreType};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub identity_mgt: IdentityMgt,
    pub output_adapter: OutputAdapter,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub gateway: GatewaySettings,
    pub codes: CodeSettings,
    pub password_policy: PasswordPolicySettings,
    pub password_hashing: PasswordHashingSettings,
    pub organisation: OrganisationSettings,
    #[serde(default)]
    pub observability: ObservabilitySettings,
    #[serde(default)]
    pub bulk: BulkSettings,
    #[serde(default)]
    pub intake: IntakeSettings,
    /// The directory active accounts are provisioned into; none, nothing is provisioned.
    #[serde(default)]
    pub user_store: Option<UserStoreSettings>,
    /// How personal data in the event log is sealed.
    #[serde(default)]
    pub personal_data: PersonalDataSettings,
}

/// The first layer: every section's built-in defaults. Sections with keys that have no default
/// (connection details) give the others only, so a missing one is named.
#[derive(Serialize, Default)]
struct Defaults {
    identity_mgt: IdentityMgt,
    output_adapter: email::OutputAdapterDefaults,
    database: database::DatabaseDefaults,
    kafka: kafka::KafkaDefaults,
    gateway: gateway::GatewayDefaults,
    codes: NoDefaults,
    password_policy: PasswordPolicySettings,
    password_hashing: PasswordHashingSettings,
    organisation: OrganisationSettings,
}

/// A section whose keys all have to be configured.
#[derive(Serialize, Default)]
struct NoDefaults {}

impl Settings {
    /// Loads defaults, then `path`, then `ONBOARD__…` environment variables.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing {
                path: path.display().to_string(),
            });
        }
        Self::from_figment(Self::defaults().merge(Toml::file(path)))
    }

    /// Loads from TOML text.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Self::defaults().merge(Toml::string(toml)))
    }

    fn defaults() -> Figment {
        Figment::from(Serialized::defaults(Defaults::default()))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        Self::extract(figment.merge(Env::prefixed("ONBOARD__").split("__").lowercase(true)))
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(error::describe(e)))?;
        settings.kafka.resolve()?;
        if let Some(store) = &mut settings.user_store {
            store.resolve()?;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// The checks that span several keys of a section, section by section. Single values
    /// (limits, addresses, scopes, `[bulk]`) were checked while they were read.
    fn validate(&self) -> Result<(), ConfigError> {
        self.identity_mgt.user_onboarding.validate()?;
        self.password_policy.validate()?;
        self.password_hashing.validate()?;
        self.codes.validate()?;
        self.output_adapter.email.validate()?;
        self.gateway.validate()?;
        self.kafka.validate()
    }

    pub fn database_url(&self) -> &str {
        self.database.url.expose_secret()
    }
}

/// What the tests of every section share: a minimal valid file, and loading it.
#[cfg(test)]
pub(crate) mod test_support {
    use figment::providers::{Format, Toml};

    use crate::{ConfigError, Settings};

    /// Without the environment: tests run in parallel, and the ones in a `figment::Jail` set
    /// `ONBOARD__…` variables.
    pub(crate) fn load(toml: &str) -> Result<Settings, ConfigError> {
        Settings::extract(Settings::defaults().merge(Toml::string(toml)))
    }

    /// With the environment (inside a `figment::Jail` only).
    pub(crate) fn load_with_env(toml: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml_str(toml)
    }

    pub(crate) const MINIMAL: &str = r#"
        [output_adapter.email]
        from_address = "noreply@pickup.example"
        hostname = "smtp.pickup.example"
        password = "smtp-secret-value"
        [database]
        url = "postgres://postgres:db-secret@127.0.0.1/onboarding"
        [kafka]
        bootstrap_servers = "127.0.0.1:9092"
        [gateway]
        public_base_url = "https://id.pickup.example"
        [codes]
        active_key = "k1"
        [[codes.keys]]
        id = "k1"
        secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
    "#;
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn a_minimal_file_gets_wso2_defaults() {
        let s = load(MINIMAL).unwrap();
        assert_eq!(
            s.identity_mgt.user_onboarding.ask_password_email_validity,
            1440
        );
        assert_eq!(s.output_adapter.email.port, 587);
        assert!(s.output_adapter.email.enable_start_tls);
        assert_eq!(s.kafka.topic, "onboarding.events");
        assert_eq!(s.output_adapter.email.message_id_domain(), "pickup.example");
        let built_in = UserOnboarding::default();
        assert_eq!(
            built_in.resend_daily_cap,
            s.identity_mgt.user_onboarding.resend_daily_cap
        );
        assert_eq!(built_in.max_validity_minutes, 10080);
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = load(MINIMAL).unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("smtp-secret-value"));
        assert!(!dbg.contains("db-secret"));
        assert!(!dbg.contains("c2VjcmV0"));
    }

    #[test]
    fn the_commented_example_file_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/onboard.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let s = load(&text).unwrap();
        assert_eq!(
            s.identity_mgt.user_onboarding.ask_password_email_validity,
            1440
        );
    }

    #[test]
    fn a_missing_key_is_named() {
        let err = load("[database]\nurl='x'").unwrap_err().to_string();
        assert!(err.contains("missing key"), "{err}");
    }

    #[test]
    fn a_misspelt_key_is_refused_and_named() {
        let toml = MINIMAL.replacen(
            "from_address",
            "enable_starttls = true\n        from_address",
            1,
        );
        let err = load(&toml).unwrap_err().to_string();
        assert!(
            err.contains("unknown key `output_adapter.email.enable_starttls`"),
            "{err}"
        );
    }

    #[test]
    fn a_wrongly_typed_secret_is_not_repeated_in_the_error() {
        let toml = MINIMAL.replace("password = \"smtp-secret-value\"", "password = 123456789");
        let err = load(&toml).unwrap_err().to_string();
        assert!(err.contains("output_adapter.email.password"), "{err}");
        assert!(!err.contains("123456789"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn environment_variables_override_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ONBOARD__KAFKA__TOPIC", "from.env");
            jail.set_env("ONBOARD__OUTPUT_ADAPTER__EMAIL__PORT", "2525");
            let s = load_with_env(MINIMAL).expect("loads");
            assert_eq!(s.kafka.topic, "from.env");
            assert_eq!(s.output_adapter.email.port, 2525);
            Ok(())
        });
    }
}
