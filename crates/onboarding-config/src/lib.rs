//! Settings for every `onboard` component: defaults, then one TOML file, then environment
//! variables (`ONBOARD__SECTION__KEY`, e.g. `ONBOARD__DATABASE__URL`).
//!
//! Keys mirror WSO2 Identity Server's `deployment.toml` where it has them
//! (`[identity_mgt.user_onboarding]`, `[output_adapter.email]`). Secrets are `SecretString`:
//! they never appear in `Debug` output, logs or errors.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} not found; pass --config or set ONBOARD_CONFIG (see deploy/onboard.example.toml)")]
    Missing { path: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

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
}

/// Invitation requests that upstream services publish on Kafka (`onboard intake`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeSettings {
    /// Where upstream services publish `…user.invitation.requested` CloudEvents.
    pub requests_topic: String,
    /// Where each request's outcome (accepted with the user id, or rejected) is published.
    pub outcomes_topic: String,
    /// Where messages that are not invitation requests go, with the reason in a header.
    pub dead_letter_topic: String,
    /// Consumer group of the intake processes.
    pub group: String,
    /// Partitions of the three topics when `onboard migrate` creates them.
    pub partitions: i32,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            requests_topic: "onboarding.requests".into(),
            outcomes_topic: "onboarding.request-outcomes".into(),
            dead_letter_topic: "onboarding.requests.dlq".into(),
            group: "onboarding-intake".into(),
            partitions: 4,
        }
    }
}

/// Bulk invitations (`POST /api/v1/bulk-invites`, `onboard invite --file`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkSettings {
    /// Largest file accepted, in bytes; larger uploads get 413.
    pub max_file_bytes: u64,
    /// Rows applied at the same time by one process.
    pub concurrency: usize,
}

impl Default for BulkSettings {
    fn default() -> Self {
        Self {
            max_file_bytes: 8 * 1024 * 1024,
            concurrency: 8,
        }
    }
}

/// Where processes without the gateway (`relay`, `email-worker`, `scheduler`) serve `/metrics`
/// and `/healthz`. The gateway always serves them on its own address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilitySettings {
    pub metrics_bind: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityMgt {
    pub user_onboarding: UserOnboarding,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserOnboarding {
    /// WSO2's switch. When false, invitations are refused: this engine only does ask-password.
    pub ask_password_from_user: bool,
    /// Minutes a code stays valid (WSO2's "Ask password code expiry time").
    pub ask_password_email_validity: i64,
    /// Bounds for a per-invitation `code_validity_minutes` override.
    pub min_validity_minutes: i64,
    pub max_validity_minutes: i64,
    /// Wrong codes accepted for one live code before it dies (`CodeLocked`).
    pub max_failed_attempts: u32,
    /// Minimum seconds between two codes for one invitation (admin resend or user request).
    pub resend_cooldown_seconds: i64,
    /// Most re-issued codes per invitation in any 24 hours.
    pub resend_daily_cap: u32,
    /// Seconds between two passes of the scheduler that marks expired codes.
    pub expiry_scan_seconds: u64,
}

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
    pub ca_file: Option<std::path::PathBuf>,
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
    /// permanent failure abandons it at once).
    pub max_attempts: u32,
    /// Wait before the second attempt; each later wait doubles (up to an hour), with ±20 % jitter.
    pub retry_initial_seconds: u64,
    /// An invitation mail not sent this long after its first failure is abandoned.
    pub max_age_minutes: u64,
    /// Overrides the invitation templates' subject in every locale (a template:
    /// `{{ organisation }}`, `{{ username }}`). Unset: each locale's `invitation.subject.txt`.
    #[serde(default)]
    pub invitation_subject: Option<String>,
    /// A directory with one folder per locale (`en/`, `de/`, …) holding `invitation.{subject.txt,
    /// txt,html}` and `welcome.{subject.txt,txt,html}`. Unset: the templates built into the binary.
    #[serde(default)]
    pub templates_dir: Option<std::path::PathBuf>,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub email_worker_group: String,
    /// An idle email worker that sees a partition with unread records whose committed offset has
    /// not moved for this long rejoins the consumer group, which makes the group reassign the
    /// partitions (a holder that died or went silent loses them).
    pub email_worker_stall_seconds: u64,
    /// Records one email worker has in hand at once (received, not yet handled). Records of
    /// different partitions are handled side by side, a partition's one after another, in order.
    /// 1 handles one record at a time.
    pub email_worker_concurrency: u32,
    /// CloudEvents `source` attribute of every published event.
    pub source: String,
    /// How the clients reach the brokers: `plaintext` (the default), `ssl` (TLS), `sasl_plaintext`
    /// or `sasl_ssl` (SASL authentication, over TLS). librdkafka's `security.protocol`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// A PEM file of the certificates (a private CA) trusted for the brokers' TLS certificates.
    /// Unset: the system's trust store. librdkafka's `ssl.ca.location`.
    #[serde(default)]
    pub ssl_ca_file: Option<std::path::PathBuf>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; with `sasl_plaintext` or `sasl_ssl` only.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// The SASL password; or `sasl_password_file`, or the environment variable
    /// `ONBOARD__KAFKA__SASL_PASSWORD`. After loading it holds the file's contents.
    #[serde(default)]
    pub sasl_password: Option<SecretString>,
    /// A file holding the SASL password (a mounted secret); one trailing newline is ignored.
    #[serde(default)]
    pub sasl_password_file: Option<std::path::PathBuf>,
    /// Extra librdkafka properties for every client (e.g. `ssl.certificate.location`, `debug`),
    /// passed as they are. The settings above cannot be set here too.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, SecretString>,
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    #[serde(alias = "PLAINTEXT")]
    Plaintext,
    #[serde(alias = "SSL")]
    Ssl,
    #[serde(alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanism`: the user name and password mechanisms (`GSSAPI` and
/// `OAUTHBEARER` are not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// librdkafka properties the typed settings of `[kafka]` own.
const TYPED_PROPERTIES: [(&str, &str); 6] = [
    ("security.protocol", "security_protocol"),
    ("ssl.ca.location", "ssl_ca_file"),
    ("sasl.mechanism", "sasl_mechanism"),
    ("sasl.mechanisms", "sasl_mechanism"),
    ("sasl.username", "sasl_username"),
    ("sasl.password", "sasl_password"),
];

impl KafkaSettings {
    /// The librdkafka properties of these settings for every client: the typed security settings,
    /// then `properties`. The values include the SASL password: hand them to librdkafka only.
    pub fn client_properties(&self) -> Vec<(&str, &str)> {
        let mut out = vec![("security.protocol", self.security_protocol.as_str())];
        if let Some(ca) = self.ssl_ca_file.as_deref().and_then(|p| p.to_str()) {
            out.push(("ssl.ca.location", ca));
        }
        if let Some(m) = self.sasl_mechanism {
            out.push(("sasl.mechanism", m.as_str()));
        }
        if let Some(u) = &self.sasl_username {
            out.push(("sasl.username", u));
        }
        if let Some(p) = &self.sasl_password {
            out.push(("sasl.password", p.expose_secret()));
        }
        out.extend(
            self.properties
                .iter()
                .map(|(k, v)| (k.as_str(), v.expose_secret())),
        );
        out
    }

    /// Checks the security settings and reads `sasl_password_file`.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (property, setting) in TYPED_PROPERTIES {
            if self.properties.contains_key(property) {
                return bad(format!(
                    "kafka.properties.\"{property}\": set kafka.{setting} instead (see docs/configuration.md)"
                ));
            }
        }
        let protocol = self.security_protocol;
        if let Some(ca) = &self.ssl_ca_file {
            if !protocol.tls() {
                return bad(format!(
                    "kafka.ssl_ca_file is set but kafka.security_protocol is `{}`; use `ssl` or `sasl_ssl`",
                    protocol.as_str()
                ));
            }
            if let Err(e) = std::fs::metadata(ca) {
                return bad(format!("kafka.ssl_ca_file {}: {e}", ca.display()));
            }
        }
        if let Some(path) = &self.sasl_password_file {
            if self.sasl_password.is_some() {
                return bad("kafka: sasl_password and sasl_password_file are both set (ONBOARD__KAFKA__SASL_PASSWORD counts as sasl_password); keep one".into());
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!("kafka.sasl_password_file {}: {e}", path.display()))
            })?;
            let password = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            if password.is_empty() {
                return bad(format!(
                    "kafka.sasl_password_file {} is empty",
                    path.display()
                ));
            }
            self.sasl_password = Some(SecretString::from(password.to_owned()));
        }
        if protocol.sasl() {
            let mut missing = Vec::new();
            if self.sasl_mechanism.is_none() {
                missing.push("kafka.sasl_mechanism");
            }
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                missing.push("kafka.sasl_username");
            }
            if self
                .sasl_password
                .as_ref()
                .is_none_or(|p| p.expose_secret().is_empty())
            {
                missing.push("kafka.sasl_password (or sasl_password_file)");
            }
            if !missing.is_empty() {
                return bad(format!(
                    "kafka.security_protocol `{}` needs {}",
                    protocol.as_str(),
                    missing.join(", ")
                ));
            }
        } else if self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
        {
            return bad(format!(
                "kafka: SASL settings are set but kafka.security_protocol is `{}`; use `sasl_ssl` (or `sasl_plaintext`)",
                protocol.as_str()
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    pub bind: SocketAddr,
    /// Base of the links in mails, e.g. `https://id.pickup.example`.
    pub public_base_url: String,
    pub max_body_bytes: u64,
    pub admin_tokens: Vec<AdminToken>,
    /// Requests per minute one client address may make to the public, unauthenticated
    /// endpoints that can fail a code check or send mail (submissions, new-link requests).
    pub public_rate_limit_per_minute: u32,
    /// Reverse proxies (`10.0.0.5`) or their networks (`10.0.0.0/8`) whose `X-Forwarded-For`
    /// names the client. Empty (the default): the TCP peer is the client and the header is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl GatewaySettings {
    /// [`GatewaySettings::trusted_proxies`] as networks; an address is a network of one.
    pub fn trusted_proxy_networks(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        ConfigError::Invalid(format!(
                            "gateway.trusted_proxies: `{entry}` is neither an IP address (10.0.0.5) nor a network (10.0.0.0/8)"
                        ))
                    })
            })
            .collect()
    }
}

/// An admin token, stored as the SHA-256 of the token (the token itself is never configured).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    pub id: String,
    pub sha256: String,
    /// What the token may do: `invite` (create, resend), `read` (show, list), `revoke`.
    #[serde(default = "all_scopes")]
    pub scopes: Vec<String>,
    /// A revoked token is refused (401) without being removed from the file.
    #[serde(default)]
    pub revoked: bool,
}

fn all_scopes() -> Vec<String> {
    ["invite", "read", "revoke"].map(String::from).to_vec()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeSettings {
    pub active_key: String,
    pub keys: Vec<CodeKey>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeKey {
    pub id: String,
    /// Standard base64 of at least 32 random bytes.
    pub secret: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordPolicySettings {
    pub min_length: usize,
    pub max_length: usize,
    /// Lowest zxcvbn strength score (0 to 4) accepted.
    pub min_strength: u8,
}

/// argon2id cost. The defaults are OWASP's minimum; raise them as hardware allows (hashes record
/// their parameters, so old ones still verify).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordHashingSettings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganisationSettings {
    /// Shown in mails and on the page ("Pickup invited you…").
    pub name: String,
}

/// Defaults for everything that has a sensible one; connection details have none.
#[derive(Serialize)]
struct Defaults {
    identity_mgt: serde_json::Value,
    output_adapter: serde_json::Value,
    database: serde_json::Value,
    kafka: serde_json::Value,
    gateway: serde_json::Value,
    codes: serde_json::Value,
    password_policy: serde_json::Value,
    password_hashing: serde_json::Value,
    organisation: serde_json::Value,
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
}

impl Default for UserOnboarding {
    /// The built-in settings, as a configuration file that leaves the section out gets them.
    fn default() -> Self {
        serde_json::from_value(defaults().identity_mgt["user_onboarding"].clone())
            .expect("the built-in defaults of identity_mgt.user_onboarding are complete")
    }
}

fn defaults() -> Defaults {
    use serde_json::json;
    Defaults {
        identity_mgt: json!({"user_onboarding": {
            "ask_password_from_user": true,
            "ask_password_email_validity": 1440,
            "min_validity_minutes": 5,
            "max_validity_minutes": 10080,
            "max_failed_attempts": 5,
            "resend_cooldown_seconds": 60,
            "resend_daily_cap": 5,
            "expiry_scan_seconds": 30,
        }}),
        output_adapter: json!({"email": {
            "from_name": "",
            "username": "",
            "password": "",
            "port": 587,
            "enable_start_tls": true,
            "enable_tls": false,
            "enable_authentication": true,
            "timeout_seconds": 30,
            "max_attempts": 5,
            "retry_initial_seconds": 30,
            "max_age_minutes": 1440,
            "default_locale": "en",
        }}),
        database: json!({"max_connections": 10}),
        kafka: json!({
            "topic": "onboarding.events",
            "partitions": 4,
            "replication_factor": 1,
            "email_worker_group": "onboarding-email-worker",
            "email_worker_stall_seconds": 60,
            "email_worker_concurrency": 32,
            "source": "urn:onboard:engine",
        }),
        gateway: json!({
            "bind": "127.0.0.1:8080",
            "max_body_bytes": 16384,
            "admin_tokens": [],
            "public_rate_limit_per_minute": 30,
            "trusted_proxies": [],
        }),
        codes: json!({}),
        password_policy: json!({"min_length": 8, "max_length": 128, "min_strength": 3}),
        password_hashing: json!({"memory_kib": 19456, "iterations": 2, "parallelism": 1}),
        organisation: json!({"name": "Your organisation"}),
    }
}

impl Settings {
    /// Loads defaults, then `path`, then `ONBOARD__…` environment variables.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing {
                path: path.display().to_string(),
            });
        }
        Self::from_figment(Figment::from(Serialized::defaults(defaults())).merge(Toml::file(path)))
    }

    /// Loads from TOML text.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(defaults())).merge(Toml::string(toml)),
        )
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        Self::extract(figment.merge(Env::prefixed("ONBOARD__").split("__").lowercase(true)))
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        settings.kafka.resolve()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.gateway.trusted_proxy_networks()?;
        let u = &self.identity_mgt.user_onboarding;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(1..=64).contains(&self.bulk.concurrency) || self.bulk.max_file_bytes == 0 {
            return bad(format!(
                "bulk: concurrency ({}) must be between 1 and 64 and max_file_bytes ({}) positive",
                self.bulk.concurrency, self.bulk.max_file_bytes
            ));
        }
        if u.min_validity_minutes < 0 || u.min_validity_minutes > u.max_validity_minutes {
            return bad(format!(
                "identity_mgt.user_onboarding: min_validity_minutes ({}) must be between 0 and max_validity_minutes ({})",
                u.min_validity_minutes, u.max_validity_minutes
            ));
        }
        if !(u.min_validity_minutes.max(1)..=u.max_validity_minutes)
            .contains(&u.ask_password_email_validity)
        {
            return bad(format!(
                "identity_mgt.user_onboarding.ask_password_email_validity ({}) must be between {} and {} minutes",
                u.ask_password_email_validity,
                u.min_validity_minutes.max(1),
                u.max_validity_minutes
            ));
        }
        if u.resend_daily_cap < 1 || u.max_failed_attempts < 1 || u.resend_cooldown_seconds < 0 {
            return bad(format!(
                "identity_mgt.user_onboarding: resend_daily_cap ({}) and max_failed_attempts ({}) must be at least 1, resend_cooldown_seconds ({}) at least 0",
                u.resend_daily_cap, u.max_failed_attempts, u.resend_cooldown_seconds
            ));
        }
        let p = &self.password_policy;
        if p.min_length < 1 || p.max_length < 64 || p.min_length > p.max_length {
            return bad(format!(
                "password_policy: min_length ({}) must be at least 1 and max_length ({}) at least 64 (NIST SP 800-63B)",
                p.min_length, p.max_length
            ));
        }
        if p.min_strength > 4 {
            return bad(format!(
                "password_policy.min_strength ({}) must be between 0 and 4 (zxcvbn scores)",
                p.min_strength
            ));
        }
        let h = &self.password_hashing;
        if h.memory_kib > 4_194_304 || h.iterations > 100 || h.parallelism > 64 {
            return bad(format!(
                "password_hashing: memory_kib ({}) must be at most 4194304 (4 GiB), iterations ({}) at most 100 and parallelism ({}) at most 64",
                h.memory_kib, h.iterations, h.parallelism
            ));
        }
        if h.memory_kib < 19_456 || h.iterations < 2 || h.parallelism < 1 {
            return bad(format!(
                "password_hashing: memory_kib ({}) must be at least 19456, iterations ({}) at least 2 and parallelism ({}) at least 1 (OWASP's argon2id minimum)",
                h.memory_kib, h.iterations, h.parallelism
            ));
        }
        for t in &self.gateway.admin_tokens {
            if let Some(bad_scope) = t.scopes.iter().find(|s| !all_scopes().contains(s)) {
                return bad(format!(
                    "gateway.admin_tokens `{}`: unknown scope `{bad_scope}`; use invite, read or revoke",
                    t.id
                ));
            }
        }
        if !self.gateway.public_base_url.starts_with("http://")
            && !self.gateway.public_base_url.starts_with("https://")
        {
            return bad(
                "gateway.public_base_url must start with https:// (or http:// for local use)"
                    .into(),
            );
        }
        if self.codes.keys.is_empty() {
            return bad(
                "codes.keys is empty; add a key with `openssl rand -base64 32` as its secret"
                    .into(),
            );
        }
        if self.output_adapter.email.enable_tls && self.output_adapter.email.enable_start_tls {
            return bad("output_adapter.email: enable_tls (implicit TLS) and enable_start_tls are exclusive; choose one".into());
        }
        if self.output_adapter.email.retry_initial_seconds == 0 {
            return bad("output_adapter.email.retry_initial_seconds must be at least 1".into());
        }
        if self.output_adapter.email.opportunistic_start_tls
            && (self.output_adapter.email.enable_start_tls || self.output_adapter.email.enable_tls)
        {
            return bad("output_adapter.email: opportunistic_start_tls applies only with enable_start_tls = false and enable_tls = false; choose one mode".into());
        }
        if !(1..=256).contains(&self.kafka.email_worker_concurrency) {
            return bad(format!(
                "kafka.email_worker_concurrency ({}) must be between 1 and 256; 1 handles one record at a time",
                self.kafka.email_worker_concurrency
            ));
        }
        if self.kafka.email_worker_stall_seconds < 5 {
            return bad(format!(
                "kafka.email_worker_stall_seconds ({}) must be at least 5",
                self.kafka.email_worker_stall_seconds
            ));
        }
        Ok(())
    }

    pub fn database_url(&self) -> &str {
        self.database.url.expose_secret()
    }
}

/// Figment's errors name the key and what was wrong; keep that, drop values (they may be secrets).
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let what = match &e.kind {
                figment::error::Kind::MissingField(f) => {
                    let full = if key.is_empty() {
                        f.to_string()
                    } else {
                        format!("{key}.{f}")
                    };
                    return format!("missing key `{full}`");
                }
                // The value itself is not repeated: it may be a secret.
                figment::error::Kind::InvalidType(_, expected)
                    if key.starts_with("kafka.properties.") =>
                {
                    format!(
                        "expected {expected} (a property named with dots cannot be set from the \
                         environment: figment splits variable names at dots; for the SASL \
                         password use ONBOARD__KAFKA__SASL_PASSWORD or kafka.sasl_password_file)"
                    )
                }
                figment::error::Kind::InvalidType(_, expected) => format!("expected {expected}"),
                figment::error::Kind::UnknownField(..) => {
                    return format!(
                        "unknown key `{key}` (misspelt? see deploy/onboard.example.toml)"
                    );
                }
                figment::error::Kind::InvalidValue(_, expected) => format!("expected {expected}"),
                other => other.to_string(),
            };
            format!("key `{key}`: {what}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the environment: tests run in parallel, and the ones in a `figment::Jail` set
    /// `ONBOARD__…` variables.
    fn load(toml: &str) -> Result<Settings, ConfigError> {
        Settings::extract(Figment::from(Serialized::defaults(defaults())).merge(Toml::string(toml)))
    }

    /// With the environment (inside a `figment::Jail` only).
    fn load_with_env(toml: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml_str(toml)
    }

    const MINIMAL: &str = r#"
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
            built_in.max_failed_attempts,
            s.identity_mgt.user_onboarding.max_failed_attempts
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
    fn trusted_proxies_are_addresses_or_networks_and_a_bad_one_is_named() {
        let toml = MINIMAL.replacen(
            "[gateway]",
            "[gateway]\ntrusted_proxies = [\"10.1.2.3/8\", \"192.0.2.10\", \"::1\"]",
            1,
        );
        let s = load(&toml).unwrap();
        let nets: Vec<String> = s
            .gateway
            .trusted_proxy_networks()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.10/32", "::1/128"]);
        let toml = MINIMAL.replacen(
            "[gateway]",
            "[gateway]\ntrusted_proxies = [\"proxy.internal\"]",
            1,
        );
        let err = load(&toml).unwrap_err().to_string();
        assert!(
            err.contains("gateway.trusted_proxies: `proxy.internal` is neither"),
            "{err}"
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

    fn with_kafka(lines: &str) -> String {
        MINIMAL.replacen(
            "bootstrap_servers = \"127.0.0.1:9092\"",
            &format!("bootstrap_servers = \"127.0.0.1:9092\"\n{lines}"),
            1,
        )
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn a_sasl_password_comes_from_a_file_or_the_environment_and_never_shows() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("kafka-password", "kafka-secret-from-file\n")?;
            let file = jail.directory().join("kafka-password");
            let toml = with_kafka(&format!(
                "security_protocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"onboard\"\nsasl_password_file = \"{}\"",
                file.display()
            ));
            let s = load_with_env(&toml).expect("loads");
            let props = s.kafka.client_properties();
            assert!(
                props.contains(&("security.protocol", "sasl_ssl")),
                "{props:?}"
            );
            assert!(props.contains(&("sasl.mechanism", "SCRAM-SHA-512")));
            assert!(props.contains(&("sasl.username", "onboard")));
            assert!(props.contains(&("sasl.password", "kafka-secret-from-file")));
            assert!(!format!("{s:?}").contains("kafka-secret"));

            // Both a file and a password: refused, and neither is repeated.
            jail.set_env("ONBOARD__KAFKA__SASL_PASSWORD", "kafka-secret-from-env");
            let err = load_with_env(&toml).unwrap_err().to_string();
            assert!(err.contains("sasl_password_file are both set"), "{err}");
            assert!(!err.contains("kafka-secret"), "{err}");

            let toml = with_kafka(
                "security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"onboard\"",
            );
            let s = load_with_env(&toml).expect("loads");
            assert!(s
                .kafka
                .client_properties()
                .contains(&("sasl.password", "kafka-secret-from-env")));
            assert!(!format!("{s:?}").contains("kafka-secret"));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn the_whole_properties_table_can_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "ONBOARD__KAFKA__PROPERTIES",
                r#"{"ssl.key.password"="kafka-secret-key-pw", "client.rack"="eu-1a"}"#,
            );
            let s = load_with_env(MINIMAL).expect("loads");
            let props = s.kafka.client_properties();
            assert!(
                props.contains(&("ssl.key.password", "kafka-secret-key-pw")),
                "{props:?}"
            );
            assert!(props.contains(&("client.rack", "eu-1a")), "{props:?}");
            assert!(!format!("{s:?}").contains("kafka-secret"));
            Ok(())
        });
    }

    #[test]
    fn incomplete_or_contradictory_kafka_security_is_refused_and_named() {
        let err = load(&with_kafka("security_protocol = \"sasl_ssl\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs kafka.sasl_mechanism, kafka.sasl_username, kafka.sasl_password"),
            "{err}"
        );
        let err = load(&with_kafka("sasl_username = \"onboard\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("use `sasl_ssl`"), "{err}");
        let err = load(&with_kafka("ssl_ca_file = \"/nonexistent/ca.pem\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("use `ssl` or `sasl_ssl`"), "{err}");
        let err = load(&with_kafka(
            "security_protocol = \"ssl\"\nssl_ca_file = \"/nonexistent/ca.pem\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("kafka.ssl_ca_file /nonexistent/ca.pem"),
            "{err}"
        );
        let err = load(&with_kafka("sasl_mechanism = \"GSSAPI\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.sasl_mechanism"), "{err}");
        // The typed settings own their librdkafka properties; the value is not repeated.
        let err = load(&with_kafka(
            "[kafka.properties]\n\"sasl.password\" = \"kafka-secret-in-properties\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("set kafka.sasl_password instead"), "{err}");
        assert!(!err.contains("kafka-secret"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn a_property_with_dots_cannot_come_from_the_environment() {
        // Figment splits keys at dots as well as at `__`: such a variable is refused with a hint.
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "ONBOARD__KAFKA__PROPERTIES__SASL.PASSWORD",
                "kafka-secret-dotted",
            );
            let err = load_with_env(MINIMAL).unwrap_err().to_string();
            assert!(err.contains("ONBOARD__KAFKA__SASL_PASSWORD"), "{err}");
            assert!(!err.contains("kafka-secret"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_out_of_bounds_validity_is_refused_with_the_bounds() {
        let toml = format!(
            "{MINIMAL}\n[identity_mgt.user_onboarding]\nask_password_email_validity = 999999\n"
        );
        let err = load(&toml).unwrap_err().to_string();
        assert!(err.contains("between 5 and 10080"), "{err}");
    }

    #[test]
    fn the_email_worker_holds_32_records_at_once_unless_told_and_never_zero() {
        let s = Settings::from_toml_str(MINIMAL).unwrap();
        assert_eq!(s.kafka.email_worker_concurrency, 32);
        let toml = MINIMAL.replacen(
            "bootstrap_servers = \"127.0.0.1:9092\"",
            "bootstrap_servers = \"127.0.0.1:9092\"\nemail_worker_concurrency = 0",
            1,
        );
        let err = Settings::from_toml_str(&toml).unwrap_err().to_string();
        assert!(
            err.contains("kafka.email_worker_concurrency (0) must be between 1 and 256"),
            "{err}"
        );
    }
}
