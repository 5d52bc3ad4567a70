//! What goes wrong when settings are loaded, and how figment's errors are told without values.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} not found; pass --config or set ONBOARD_CONFIG (see deploy/onboard.example.toml)")]
    Missing { path: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A file that a setting names cannot be read; the I/O error is the cause.
    #[error("invalid configuration: {setting} {}", path.display())]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Figment's errors name the key and what was wrong; keep that, drop values (they may be secrets).
///
/// A section's own checks run while it is read (a limit, an address, a scope) and write
/// messages that start with the section's name and say everything: those are kept as they are.
pub(crate) fn describe(e: figment::Error) -> String {
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
                figment::error::Kind::Message(m)
                    if e.path
                        .first()
                        .is_some_and(|section| m.starts_with(section.as_str())) =>
                {
                    return m.clone();
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
