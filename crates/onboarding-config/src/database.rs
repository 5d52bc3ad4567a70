//! `[database]`: the PostgreSQL that holds the event log and everything derived from it, and
//! how long anything may wait for it.

use std::num::NonZeroU64;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::limits::nonzero_u64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    /// How long a request (or any other user of the pool) waits for a connection, opening one
    /// included, before it gives up: the gateway then answers 503 with `Retry-After`.
    pub acquire_timeout_seconds: NonZeroU64,
    /// PostgreSQL's `statement_timeout` on every connection of the pool. 0: not set by the
    /// engine (the server's or the role's setting applies).
    pub statement_timeout_seconds: u64,
    /// PostgreSQL's `lock_timeout` (row, table and advisory locks, such as the one every append
    /// takes). 0: not set by the engine.
    pub lock_timeout_seconds: u64,
    /// PostgreSQL's `idle_in_transaction_session_timeout`: a session that holds a transaction
    /// open without a statement for this long is ended, and its locks are freed. 0: not set by
    /// the engine.
    pub idle_in_transaction_timeout_seconds: u64,
}

impl DatabaseSettings {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.acquire_timeout_seconds.get())
    }

    /// The session settings every pooled connection of a serving process starts with, as
    /// PostgreSQL names them, in milliseconds; those configured as 0 are left out.
    pub fn session_timeouts(&self) -> Vec<(&'static str, String)> {
        [
            ("statement_timeout", self.statement_timeout_seconds),
            ("lock_timeout", self.lock_timeout_seconds),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_timeout_seconds,
            ),
        ]
        .into_iter()
        .filter(|(_, seconds)| *seconds > 0)
        .map(|(name, seconds)| (name, seconds.saturating_mul(1000).to_string()))
        .collect()
    }
}

/// The keys of `[database]` that have a default; `url` has none.
#[derive(Serialize)]
pub(crate) struct DatabaseDefaults {
    max_connections: u32,
    acquire_timeout_seconds: NonZeroU64,
    statement_timeout_seconds: u64,
    lock_timeout_seconds: u64,
    idle_in_transaction_timeout_seconds: u64,
}

impl Default for DatabaseDefaults {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout_seconds: nonzero_u64(3),
            statement_timeout_seconds: 30,
            lock_timeout_seconds: 10,
            idle_in_transaction_timeout_seconds: 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{load, MINIMAL};

    #[test]
    fn every_connection_gets_the_default_timeouts_unless_configured() {
        let s = load(MINIMAL).unwrap();
        assert_eq!(s.database.acquire_timeout().as_secs(), 3);
        assert_eq!(
            s.database.session_timeouts(),
            [
                ("statement_timeout", "30000".to_owned()),
                ("lock_timeout", "10000".to_owned()),
                ("idle_in_transaction_session_timeout", "60000".to_owned()),
            ]
        );
        let toml = MINIMAL.replacen(
            "[database]",
            "[database]\n        statement_timeout_seconds = 0\n        lock_timeout_seconds = 2",
            1,
        );
        let s = load(&toml).unwrap();
        assert_eq!(
            s.database.session_timeouts(),
            [
                ("lock_timeout", "2000".to_owned()),
                ("idle_in_transaction_session_timeout", "60000".to_owned()),
            ]
        );
    }

    #[test]
    fn a_zero_acquire_timeout_is_refused_and_named() {
        let toml = MINIMAL.replacen(
            "[database]",
            "[database]\n        acquire_timeout_seconds = 0",
            1,
        );
        let err = load(&toml).unwrap_err().to_string();
        assert!(err.contains("acquire_timeout_seconds"), "{err}");
    }
}
