//! `[codes]`: the keys that sign the codes in invitation links.

use secrecy::SecretString;
use serde::Deserialize;

use crate::ConfigError;

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

impl CodeSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.keys.is_empty() {
            return Err(ConfigError::Invalid(
                "codes.keys is empty; add a key with `openssl rand -base64 32` as its secret"
                    .into(),
            ));
        }
        Ok(())
    }
}
