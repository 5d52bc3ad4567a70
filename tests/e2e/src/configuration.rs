//! What a test may change in its stack ([`Options`]), and the `onboard.toml` written from it.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::Services;

pub struct Options {
    pub validity_minutes: i64,
    pub max_body_bytes: u64,
    /// A broker of the test's own instead of the shared one.
    pub kafka: Option<String>,
    /// A PostgreSQL of the test's own (the URL of its `postgres` database, as
    /// [`crate::Postgres::url`]) instead of the shared one; the stack's database is made there.
    pub database: Option<String>,
    pub public_rate_limit_per_minute: u32,
    /// `gateway.page_rate_limit_per_minute`: `GET` and `HEAD` of `/confirm` and `/revoke`.
    pub page_rate_limit_per_minute: u32,
    /// `gateway.admin_rate_limit_per_minute`: per admin token, over the API, bulk and SCIM.
    pub admin_rate_limit_per_minute: u32,
    /// `gateway.verify_client_rate_limit_per_minute`: password checks per client.
    pub verify_client_rate_limit_per_minute: u32,
    /// `gateway.verify_username_rate_limit_per_minute`: password checks per username.
    pub verify_username_rate_limit_per_minute: u32,
    pub resend_cooldown_seconds: i64,
    /// `identity_mgt.user_onboarding.expiry_scan_seconds`: 1, so tests see the scheduler soon.
    pub expiry_scan_seconds: u64,
    /// An SMTP port of the test's own instead of MailDev's (e.g. one nobody listens on).
    pub smtp_port: Option<u16>,
    /// More lines for the `[kafka]` section (e.g. `security_protocol = "ssl"`).
    pub kafka_settings: String,
    /// A `[user_store]` section (e.g. [`crate::Slapd::user_store_toml`]): provisioning is on.
    pub user_store: Option<String>,
    /// `[personal_data] key_encryption_key_file`, as a deployment mounts it; `false` leaves it
    /// out (data keys unwrapped, names in the username registry in clear).
    pub key_encryption_key: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            validity_minutes: 60,
            max_body_bytes: 16384,
            kafka: None,
            database: None,
            public_rate_limit_per_minute: 600,
            page_rate_limit_per_minute: 600,
            admin_rate_limit_per_minute: 6000,
            verify_client_rate_limit_per_minute: 600,
            verify_username_rate_limit_per_minute: 600,
            resend_cooldown_seconds: 0,
            expiry_scan_seconds: 1,
            smtp_port: None,
            kafka_settings: String::new(),
            user_store: None,
            key_encryption_key: true,
        }
    }
}

/// Everything one stack's configuration names besides its [`Options`].
pub(crate) struct Stack<'a> {
    /// The test's name and the stack's random id: they name its consumer groups.
    pub name: &'a str,
    pub id: &'a str,
    pub services: &'a Services,
    pub database_url: &'a str,
    /// The shared broker, or the test's own (`Options::kafka`).
    pub kafka: &'a str,
    pub topic: &'a str,
    pub port: u16,
    pub base_url: &'a str,
    pub admin_token: &'a str,
    pub reader_token: &'a str,
    pub revoked_token: &'a str,
    pub verifier_token: &'a str,
    pub code_key: &'a [u8; 32],
    pub kek_file: &'a std::path::Path,
}

/// The stack's `onboard.toml`: short code validity and scan interval, three attempts per mail,
/// an admin token (the default scopes and `erase`), a read-only one, a revoked one and a login service's
/// (`verify` only).
pub(crate) fn onboard_toml(stack: &Stack, options: &Options) -> String {
    let Stack {
        name,
        id,
        services,
        database_url,
        kafka,
        topic,
        port,
        base_url,
        ..
    } = stack;
    format!(
        r#"
[identity_mgt.user_onboarding]
ask_password_from_user = true
ask_password_email_validity = {validity}
min_validity_minutes = 1
max_validity_minutes = 10080
expiry_scan_seconds = {expiry_scan}
resend_cooldown_seconds = {cooldown}

[output_adapter.email]
from_address = "noreply@pickup.example"
from_name = "Pickup"
hostname = "{smtp_host}"
port = {smtp_port}
enable_start_tls = false
enable_authentication = false
max_attempts = 3

[database]
url = "{database_url}"
max_connections = 5

[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
partitions = 4
email_worker_group = "e2e-{name}-{id}"
email_worker_stall_seconds = 10
{kafka_settings}

[intake]
requests_topic = "{topic}.requests"
outcomes_topic = "{topic}.outcomes"
dead_letter_topic = "{topic}.dlq"
group = "e2e-intake-{name}-{id}"
partitions = 2

[gateway]
bind = "127.0.0.1:{port}"
public_base_url = "{base_url}"
max_body_bytes = {max_body}
public_rate_limit_per_minute = {rate}
page_rate_limit_per_minute = {page_rate}
admin_rate_limit_per_minute = {admin_rate}
verify_client_rate_limit_per_minute = {verify_client_rate}
verify_username_rate_limit_per_minute = {verify_username_rate}

[[gateway.admin_tokens]]
id = "e2e-admin"
sha256 = "{token_hash}"
scopes = ["invite", "read", "revoke", "erase"]

[[gateway.admin_tokens]]
id = "e2e-reader"
sha256 = "{reader_hash}"
scopes = ["read"]

[[gateway.admin_tokens]]
id = "e2e-revoked"
sha256 = "{revoked_hash}"
revoked = true

[[gateway.admin_tokens]]
id = "e2e-login-service"
sha256 = "{verifier_hash}"
scopes = ["verify"]

[codes]
active_key = "k1"
[[codes.keys]]
id = "k1"
secret = "{key}"

[password_policy]
common_passwords_file = "{common_passwords}"

[organisation]
name = "Pickup"

{personal_data}
{user_store}
"#,
        validity = options.validity_minutes,
        smtp_host = services.smtp_host,
        smtp_port = options.smtp_port.unwrap_or(services.smtp_port),
        max_body = options.max_body_bytes,
        rate = options.public_rate_limit_per_minute,
        page_rate = options.page_rate_limit_per_minute,
        admin_rate = options.admin_rate_limit_per_minute,
        verify_client_rate = options.verify_client_rate_limit_per_minute,
        verify_username_rate = options.verify_username_rate_limit_per_minute,
        cooldown = options.resend_cooldown_seconds,
        expiry_scan = options.expiry_scan_seconds,
        kafka_settings = options.kafka_settings,
        token_hash = sha256_hex(stack.admin_token),
        reader_hash = sha256_hex(stack.reader_token),
        revoked_hash = sha256_hex(stack.revoked_token),
        verifier_hash = sha256_hex(stack.verifier_token),
        key = base64::engine::general_purpose::STANDARD.encode(stack.code_key),
        common_passwords = COMMON_PASSWORDS,
        user_store = options.user_store.as_deref().unwrap_or_default(),
        personal_data = if options.key_encryption_key {
            format!(
                "[personal_data]\nkey_encryption_key_file = \"{}\"",
                stack.kek_file.display()
            )
        } else {
            String::new()
        },
    )
}

/// The repository's list of 100 000 common passwords (CC BY-SA 3.0, a separate data file; see
/// NOTICE), so that the tests refuse what a deployment that ships it refuses.
pub const COMMON_PASSWORDS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../crates/onboarding-domain/data/common-passwords.txt"
);

/// How the configuration names a token: the hex SHA-256 of its text.
fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
