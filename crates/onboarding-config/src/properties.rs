//! Properties of the configuration loader over values nobody would write on purpose: it never
//! panics, a refusal names the key and never repeats a secret, and what it accepts keeps the
//! documented bounds.

use proptest::prelude::*;

use crate::test_support::{load, MINIMAL};

/// Keys that take a number, a string, a list or an address, across the sections.
const KEYS: &[&str] = &[
    "gateway.bind",
    "gateway.public_base_url",
    "gateway.max_body_bytes",
    "gateway.max_connections",
    "gateway.header_read_timeout_seconds",
    "gateway.body_read_timeout_seconds",
    "gateway.request_timeout_seconds",
    "gateway.shutdown_timeout_seconds",
    "gateway.page_rate_limit_per_minute",
    "gateway.admin_rate_limit_per_minute",
    "gateway.public_rate_limit_per_minute",
    "gateway.trusted_proxies",
    "database.url",
    "database.acquire_timeout_seconds",
    "database.max_connections",
    "identity_mgt.user_onboarding.ask_password_email_validity",
    "identity_mgt.user_onboarding.resend_daily_cap",
    "identity_mgt.user_onboarding.max_failed_attempts",
    "identity_mgt.user_onboarding.resend_cooldown_seconds",
    "password_policy.min_length",
    "password_policy.max_length",
    "password_hashing.memory_kib",
    "output_adapter.email.port",
    "output_adapter.email.password",
    "output_adapter.email.from_address",
    "kafka.bootstrap_servers",
    "kafka.partitions",
    "codes.active_key",
    "bulk.concurrency",
    "misspelt.key",
];

/// Keys whose value is a secret: a refusal must not repeat it.
const SECRETS: &[&str] = &["database.url", "output_adapter.email.password"];

/// Keys documented as "at least 1" (docs/configuration.md).
const AT_LEAST_ONE: &[&str] = &[
    "gateway.max_connections",
    "gateway.header_read_timeout_seconds",
    "gateway.body_read_timeout_seconds",
    "gateway.shutdown_timeout_seconds",
    "gateway.page_rate_limit_per_minute",
    "gateway.admin_rate_limit_per_minute",
    "database.acquire_timeout_seconds",
    "identity_mgt.user_onboarding.resend_daily_cap",
    "password_policy.min_length",
];

fn value() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        prop_oneof![
            -3i64..3,
            0i64..100_000,
            Just(i64::MAX),
            Just(i64::MIN),
            Just(u32::MAX as i64 + 1)
        ]
        .prop_map(toml::Value::Integer),
        "zq[a-z]{8}".prop_map(toml::Value::String),
        "[ -~]{0,24}".prop_map(toml::Value::String),
        any::<bool>().prop_map(toml::Value::Boolean),
        Just(toml::Value::Array(Vec::new())),
    ]
}

/// The minimal file with `key` set to `value`.
fn file_with(key: &str, value: toml::Value) -> String {
    let mut table: toml::Table = MINIMAL.parse().unwrap();
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap();
    let mut section = &mut table;
    for part in parts {
        section = section
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap();
    }
    section.insert(last.to_owned(), value);
    toml::to_string(&table).unwrap()
}

proptest! {
    #[test]
    fn any_text_is_loaded_or_refused_with_a_message(text in "[ -~\n]{0,200}") {
        if let Err(e) = load(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn a_refusal_names_the_key_and_never_repeats_a_secret(
        key in prop::sample::select(KEYS),
        value in value(),
    ) {
        let file = file_with(key, value.clone());
        match load(&file) {
            Err(e) => {
                let message = e.to_string();
                let name = key.rsplit('.').next().unwrap();
                prop_assert!(message.contains(name), "{key} = {value}: {message}");
                if let (true, Some(secret)) = (SECRETS.contains(&key), value.as_str()) {
                    prop_assert!(secret.len() < 4 || !message.contains(secret), "{message}");
                }
            }
            Ok(settings) => {
                // Accepted: documented bounds hold.
                if let (true, Some(n)) = (AT_LEAST_ONE.contains(&key), value.as_integer()) {
                    prop_assert!(n >= 1, "{key} = {n} was accepted");
                }
                prop_assert!(settings.gateway.request_timeout > settings.gateway.body_read_timeout);
                prop_assert_ne!(key, "misspelt.key");
            }
        }
    }
}
