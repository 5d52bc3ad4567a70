//! `[database]`: the PostgreSQL that holds the event log and everything derived from it.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
}

/// The keys of `[database]` that have a default; `url` has none.
#[derive(Serialize)]
pub(crate) struct DatabaseDefaults {
    max_connections: u32,
}

impl Default for DatabaseDefaults {
    fn default() -> Self {
        Self {
            max_connections: 10,
        }
    }
}
