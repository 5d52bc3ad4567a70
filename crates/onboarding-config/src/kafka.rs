//! `[kafka]`: the brokers, the topic of the event contract, the email worker's consumer group, and
//! how every client connects (TLS, SASL, extra librdkafka properties).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{de, Deserialize, Deserializer, Serialize};

use crate::limits;
use crate::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long the brokers keep the events topic's records (its `retention.ms`, set when
    /// `onboard migrate` or the relay creates it), in hours; 0 keeps them for good. The records
    /// carry personal data in clear (docs/api.md, "Personal data on the topic"): an erased user's records
    /// are gone from the topic once they are older than this (docs/adr/0030).
    pub retention_hours: u32,
    pub email_worker_group: String,
    /// An idle email worker that sees a partition with unread records whose committed offset has
    /// not moved for this long rejoins the consumer group, which makes the group reassign the
    /// partitions (a holder that died or went silent loses them).
    pub email_worker_stall_seconds: u64,
    /// Records one email worker has in hand at once (received, not yet handled). Each user's
    /// records are handled one after another, in order; different users' side by side (ADR 0022).
    /// 1 handles one record at a time.
    #[serde(deserialize_with = "email_worker_concurrency")]
    pub email_worker_concurrency: NonZeroU32,
    /// Records the relay puts in one Kafka record batch at most (its producer's
    /// `batch.num.messages`), and how far back from a committed offset every consumer of the
    /// events topic starts reading, skipping what lies below the committed offset: tansu answers
    /// a fetch that starts inside a batch with the next batch, and a batch of at most this many
    /// records that holds the offset this far back ends before the committed one (ADR 0036).
    /// One setting for both, so they cannot disagree. 1 writes one record per batch (ADR 0004).
    pub relay_batch_records: u32,
    /// CloudEvents `source` attribute of every published event.
    pub source: String,
    /// How the clients reach the brokers: `plaintext` (the default), `ssl` (TLS), `sasl_plaintext`
    /// or `sasl_ssl` (SASL authentication, over TLS). librdkafka's `security.protocol`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// A PEM file of the certificates (a private CA) trusted for the brokers' TLS certificates.
    /// Unset: the system's trust store. librdkafka's `ssl.ca.location`.
    #[serde(default)]
    pub ssl_ca_file: Option<PathBuf>,
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
    pub sasl_password_file: Option<PathBuf>,
    /// Extra librdkafka properties for every client (e.g. `ssl.certificate.location`, `debug`),
    /// passed as they are. The settings above cannot be set here too.
    #[serde(default)]
    pub properties: BTreeMap<String, SecretString>,
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
const TYPED_PROPERTIES: [(&str, &str); 7] = [
    ("security.protocol", "security_protocol"),
    ("ssl.ca.location", "ssl_ca_file"),
    ("sasl.mechanism", "sasl_mechanism"),
    ("sasl.mechanisms", "sasl_mechanism"),
    ("sasl.username", "sasl_username"),
    ("sasl.password", "sasl_password"),
    // The consumers read back as far as the relay's batches are long: one setting for both.
    ("batch.num.messages", "relay_batch_records"),
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
    pub(crate) fn resolve(&mut self) -> Result<(), ConfigError> {
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
            if let Err(source) = std::fs::metadata(ca) {
                return Err(ConfigError::Unreadable {
                    setting: "kafka.ssl_ca_file",
                    path: ca.clone(),
                    source,
                });
            }
        }
        if let Some(path) = &self.sasl_password_file {
            if self.sasl_password.is_some() {
                return bad("kafka: sasl_password and sasl_password_file are both set (ONBOARD__KAFKA__SASL_PASSWORD counts as sasl_password); keep one".into());
            }
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
                setting: "kafka.sasl_password_file",
                path: path.clone(),
                source,
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

    /// The events topic's `retention.ms`: `-1` (for good) for 0 hours.
    pub fn retention_ms(&self) -> i64 {
        match self.retention_hours {
            0 => -1,
            hours => i64::from(hours) * 3_600_000,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.email_worker_stall_seconds < 5 {
            return Err(ConfigError::Invalid(format!(
                "kafka.email_worker_stall_seconds ({}) must be at least 5",
                self.email_worker_stall_seconds
            )));
        }
        if !(1..=MAX_RELAY_BATCH_RECORDS).contains(&self.relay_batch_records) {
            return Err(ConfigError::Invalid(format!(
                "kafka.relay_batch_records ({}) must be between 1 and {MAX_RELAY_BATCH_RECORDS}; 1 writes one record per Kafka batch",
                self.relay_batch_records
            )));
        }
        Ok(())
    }
}

/// The largest `kafka.relay_batch_records`: a consumer reads at most this many records again
/// when it takes a partition over.
pub const MAX_RELAY_BATCH_RECORDS: u32 = 10_000;

fn email_worker_concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU32, D::Error> {
    let n = u32::deserialize(d)?;
    NonZeroU32::new(n).filter(|n| n.get() <= 256).ok_or_else(|| {
        de::Error::custom(format!(
            "kafka.email_worker_concurrency ({n}) must be between 1 and 256; 1 handles one record at a time"
        ))
    })
}

/// The keys of `[kafka]` that have a default; the brokers' addresses have none.
#[derive(Serialize)]
pub(crate) struct KafkaDefaults {
    topic: &'static str,
    partitions: i32,
    replication_factor: i32,
    retention_hours: u32,
    email_worker_group: &'static str,
    email_worker_stall_seconds: u64,
    email_worker_concurrency: NonZeroU32,
    relay_batch_records: u32,
    source: &'static str,
}

impl Default for KafkaDefaults {
    fn default() -> Self {
        Self {
            topic: "onboarding.events",
            partitions: 4,
            replication_factor: 1,
            retention_hours: 30 * 24,
            email_worker_group: "onboarding-email-worker",
            email_worker_stall_seconds: 60,
            email_worker_concurrency: limits::nonzero_u32(32),
            relay_batch_records: 100,
            source: "urn:onboard:engine",
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::*;

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
    fn the_relay_batches_100_records_unless_told_and_owns_batch_num_messages() {
        let s = load(MINIMAL).unwrap();
        assert_eq!(s.kafka.relay_batch_records, 100);
        assert_eq!(
            load(&with_kafka("relay_batch_records = 1"))
                .unwrap()
                .kafka
                .relay_batch_records,
            1
        );
        for n in [0, 10_001] {
            let err = load(&with_kafka(&format!("relay_batch_records = {n}")))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "kafka.relay_batch_records ({n}) must be between 1 and 10000"
                )),
                "{err}"
            );
        }
        // The consumers' read-back comes from the same setting: the batch size cannot be set
        // apart from it.
        let err = load(&with_kafka(
            "[kafka.properties]\n\"batch.num.messages\" = \"500\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("set kafka.relay_batch_records instead"),
            "{err}"
        );
    }

    #[test]
    fn the_email_worker_holds_32_records_at_once_unless_told_and_never_zero() {
        let s = load(MINIMAL).unwrap();
        assert_eq!(s.kafka.email_worker_concurrency.get(), 32);
        let toml = MINIMAL.replacen(
            "bootstrap_servers = \"127.0.0.1:9092\"",
            "bootstrap_servers = \"127.0.0.1:9092\"\nemail_worker_concurrency = 0",
            1,
        );
        let err = load(&toml).unwrap_err().to_string();
        assert!(
            err.contains("kafka.email_worker_concurrency (0) must be between 1 and 256"),
            "{err}"
        );
    }
}
