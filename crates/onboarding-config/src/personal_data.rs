//! `[personal_data]`: how personal data in the event log is sealed (docs/adr/0030).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonalDataSettings {
    /// A file holding the key-encryption key (32 random bytes, base64) that wraps each user's
    /// data key in `personal_data_keys`. Unset, data keys are stored unwrapped: erasure works
    /// the same, but whoever reads the database can open what it has not erased.
    #[serde(default)]
    pub key_encryption_key_file: Option<PathBuf>,
}
