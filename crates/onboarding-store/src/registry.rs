//! The username registry (`usernames`): one row per name held in a domain, whose primary key
//! keeps names unique (docs/adr/0002, docs/adr/0035).
//!
//! With a key-encryption key (`personal_data.key_encryption_key_file`), a row keeps only what
//! uniqueness needs: an HMAC-SHA-256 of the domain and the name's key ([`Username::key`], the
//! lower-case form of the NFKC-normalised name), under a key that HKDF derives from the
//! key-encryption key with a label of its own, so there is no other secret to keep. The stored
//! form is `hmac-sha256:<key id>/<hex>`; the key id names the registry key without revealing
//! it. Without a key-encryption key, names are stored by their key in clear, as before: whoever
//! reads such a database reads every sealed field anyway (the data keys are unwrapped), and a
//! hash with a key the database also held, or none, would hide nothing from a guess.
//!
//! Rows written in clear before the registry was keyed stay until `onboard migrate` rewrites
//! them ([`key_the_registry`]); meanwhile lookups try both forms ([`UsernameRegistry::forms`]),
//! and the appender refuses a name that a row in clear holds (`refuse_names_held_in_clear`,
//! migration 0020).

use std::sync::Arc;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use onboarding_domain::value::Username;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{db, Store, StoreError};

/// HKDF's `info` for the registry's key: no other key derived from the key-encryption key can
/// equal it.
const INFO: &[u8] = b"onboard username registry: HMAC-SHA-256 of DOMAIN/name-key, v1";

/// The scheme a keyed row's key id starts with.
const SCHEME: &str = "hmac-sha256";

/// What separates a keyed row's key id from its hash. [`Username::parse`] refuses it (WSO2's
/// separator between domain and name), so no name in clear holds it.
const SEPARATOR: char = '/';

/// The transaction-scoped advisory lock that serialises appends (the `events_chain_head` trigger
/// at each `INSERT`, migration 0023; `events_append` before, migration 0008). The rewrite of rows in clear takes it too, so that it never interleaves
/// with an append.
pub(crate) const APPEND_LOCK: i64 = 8029185077895312386;

/// Rows in clear rewritten per transaction by [`key_the_registry`].
const REWRITE_BATCH: i64 = 1000;

/// How the registry stores the names it holds: keyed (with a key-encryption key) or in clear.
#[derive(Clone, Default)]
pub struct UsernameRegistry {
    key: Option<Arc<RegistryKey>>,
}

/// The registry's HMAC key, derived from the key-encryption key.
struct RegistryKey {
    /// `hmac-sha256:` and the first 8 bytes of the key's SHA-256, in hex.
    id: String,
    /// HMAC-SHA-256, keyed; cloned for each name.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for UsernameRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsernameRegistry")
            .field("keyed_by", &self.keyed_by())
            .finish()
    }
}

impl UsernameRegistry {
    /// Names by their key in clear: no key-encryption key is configured.
    pub fn in_clear() -> Self {
        Self::default()
    }

    /// Names keyed by HMAC-SHA-256 under the key HKDF-SHA-256 derives from `kek` (no salt, the
    /// registry's own `info`).
    pub fn keyed(kek: &[u8]) -> Self {
        let mut okm = zeroize::Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, kek)
            .expand(INFO, okm.as_mut())
            .expect("32 bytes is a valid length for HKDF-SHA-256");
        let id = format!(
            "{SCHEME}:{}",
            hex::encode(&Sha256::digest(okm.as_ref())[..8])
        );
        let mac =
            Hmac::<Sha256>::new_from_slice(okm.as_ref()).expect("HMAC takes a key of any length");
        Self {
            key: Some(Arc::new(RegistryKey { id, mac })),
        }
    }

    /// The key names are hashed with (`hmac-sha256:<key id>`), or `None` for names in clear.
    pub fn keyed_by(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.id.as_str())
    }

    /// Whether a stored `username_key` is keyed rather than a name in clear.
    pub fn is_keyed(stored: &str) -> bool {
        stored.contains(SEPARATOR)
    }

    /// What the registry stores for the name whose [`Username::key`] is `name_key` in `domain`.
    pub fn stored_key(&self, domain: &str, name_key: &str) -> String {
        match &self.key {
            None => name_key.to_owned(),
            Some(key) => {
                let mut mac = key.mac.clone();
                mac.update(domain.as_bytes());
                mac.update(SEPARATOR.to_string().as_bytes());
                mac.update(name_key.as_bytes());
                format!(
                    "{}{SEPARATOR}{}",
                    key.id,
                    hex::encode(mac.finalize().into_bytes())
                )
            }
        }
    }

    /// Every form in which a row may hold `username` in `domain`: its stored form and, when
    /// names are keyed, its key in clear too, for rows written before the registry was keyed
    /// that `onboard migrate` has not rewritten yet.
    pub fn forms(&self, domain: &str, username: &Username) -> Vec<String> {
        let name_key = username.key();
        let stored = self.stored_key(domain, &name_key);
        if stored == name_key {
            vec![stored]
        } else {
            vec![stored, name_key]
        }
    }
}

/// The registry is keyed with another key than the configured one, or the configuration has
/// none: names would be looked up and registered under a key the rows are not under.
#[derive(Debug, thiserror::Error)]
pub enum RegistryKeyError {
    #[error(
        "the username registry is keyed by {recorded}, but the configured key-encryption key \
         gives {configured}; set personal_data.key_encryption_key_file to the key the registry \
         was keyed with (docs/adr/0035)"
    )]
    OtherKey {
        recorded: String,
        configured: String,
    },
    #[error(
        "the username registry is keyed by {recorded}, but no key-encryption key is configured; \
         set personal_data.key_encryption_key_file to the key the registry was keyed with \
         (docs/adr/0035)"
    )]
    NoKey { recorded: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`key_the_registry`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryKeying {
    /// The key names are hashed with now, `None` when they stay in clear (no key-encryption key).
    pub keyed_by: Option<String>,
    /// Rows in clear rewritten into their keyed form by this run.
    pub rewritten: u64,
    /// Rows left in clear because their keyed form is held by another account: the same name
    /// was registered twice (only possible through rows written by hand). An operator decides
    /// which account to revoke; meanwhile the name stays held.
    pub left_in_clear: Vec<HeldTwice>,
}

/// A row in clear whose keyed form another account already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldTwice {
    pub domain: String,
    /// The account of the row left in clear.
    pub user_id: Uuid,
    /// The account holding the keyed row.
    pub holder: Uuid,
}

/// The key the registry's keyed rows are under, if any row was ever keyed.
async fn recorded_key(pool: &PgPool) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar("SELECT keyed_by FROM username_registry_key")
        .fetch_optional(pool)
        .await
        .map_err(db)
}

/// Checks that the configured key is the one the registry is keyed by (a registry whose names
/// were never keyed takes any). A process that registers or looks up names checks this when it
/// starts, so that a wrong key-encryption key stops it instead of making every name unknown.
pub async fn check_registry_key(
    pool: &PgPool,
    registry: &UsernameRegistry,
) -> Result<(), RegistryKeyError> {
    let Some(recorded) = recorded_key(pool).await? else {
        return Ok(());
    };
    match registry.keyed_by() {
        Some(configured) if configured == recorded => Ok(()),
        Some(configured) => Err(RegistryKeyError::OtherKey {
            recorded,
            configured: configured.to_owned(),
        }),
        None => Err(RegistryKeyError::NoKey { recorded }),
    }
}

/// Rewrites the registry's rows in clear into their keyed form (`onboard migrate`, after the
/// schema migrations), in batches of [`REWRITE_BATCH`], each in a transaction that holds the
/// append lock, so that it is safe while the engine runs: an append waits for a batch, and
/// sees each of its rows either in clear or keyed. Idempotent: a run after a complete one finds
/// nothing to rewrite. Without a key-encryption key there is nothing to key with, and the rows
/// stay in clear.
pub async fn key_the_registry(
    pool: &PgPool,
    registry: &UsernameRegistry,
) -> Result<RegistryKeying, RegistryKeyError> {
    check_registry_key(pool, registry).await?;
    let Some(keyed_by) = registry.keyed_by() else {
        return Ok(RegistryKeying::default());
    };
    let mut done = RegistryKeying {
        keyed_by: Some(keyed_by.to_owned()),
        ..RegistryKeying::default()
    };
    // Keyset pagination over the primary key: rows left in clear are not read again.
    let mut after: (String, String) = (String::new(), String::new());
    loop {
        let mut tx = pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let rows: Vec<(String, String, Uuid)> = sqlx::query_as(
            "SELECT domain, username_key, user_id FROM usernames \
             WHERE (domain, username_key) > ($1, $2) AND strpos(username_key, '/') = 0 \
             ORDER BY domain, username_key LIMIT $3 FOR UPDATE",
        )
        .bind(&after.0)
        .bind(&after.1)
        .bind(REWRITE_BATCH)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let Some(last) = rows.last() else {
            break;
        };
        after = (last.0.clone(), last.1.clone());
        let keyed: Vec<String> = rows
            .iter()
            .map(|(domain, name_key, _)| registry.stored_key(domain, name_key))
            .collect();
        let domains: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        // Keyed forms another account holds already: those rows stay in clear.
        let held: Vec<(String, String, Uuid)> = sqlx::query_as(
            "SELECT u.domain, u.username_key, u.user_id FROM usernames u \
             JOIN unnest($1::text[], $2::text[]) AS k(domain, username_key) \
             ON u.domain = k.domain AND u.username_key = k.username_key",
        )
        .bind(&domains)
        .bind(&keyed)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let (mut olds, mut news, mut in_domains) = (Vec::new(), Vec::new(), Vec::new());
        for ((domain, old, user_id), new) in rows.iter().zip(&keyed) {
            match held.iter().find(|h| &h.0 == domain && &h.1 == new) {
                Some((_, _, holder)) => done.left_in_clear.push(HeldTwice {
                    domain: domain.clone(),
                    user_id: *user_id,
                    holder: *holder,
                }),
                None => {
                    in_domains.push(domain.as_str());
                    olds.push(old.as_str());
                    news.push(new.as_str());
                }
            }
        }
        let rewritten = sqlx::query(
            "UPDATE usernames u SET username_key = r.new \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS r(domain, old, new) \
             WHERE u.domain = r.domain AND u.username_key = r.old",
        )
        .bind(&in_domains)
        .bind(&olds)
        .bind(&news)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        tx.commit().await.map_err(db)?;
        done.rewritten += rewritten;
    }
    Ok(done)
}

/// The migration that brings the keyed registry (`crates/onboarding-store/migrations/0020_*`).
const KEYED_REGISTRY_MIGRATION: i64 = 20;

/// Whether the keyed registry's schema (migration 0020) is applied. `onboard migrate` asks before
/// it migrates: a run that applies it is the one before a release of this version rolls out,
/// while processes of the release before, which look names up in clear only, may still serve;
/// it leaves the rows in clear for a later run (docs/adr/0035).
pub async fn keyed_registry_schema_applied(pool: &PgPool) -> Result<bool, StoreError> {
    let migrations: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(pool)
            .await
            .map_err(db)?;
    if migrations.is_none() {
        return Ok(false);
    }
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)",
    )
    .bind(KEYED_REGISTRY_MIGRATION)
    .fetch_one(pool)
    .await
    .map_err(db)
}

/// How many rows of the registry hold a name in clear.
pub async fn names_in_clear(pool: &PgPool) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT count(*) FROM usernames WHERE strpos(username_key, '/') = 0")
        .fetch_one(pool)
        .await
        .map_err(db)
}

impl Store {
    /// How the store's registry keys names.
    pub fn username_registry(&self) -> &UsernameRegistry {
        self.personal_keys().registry()
    }

    /// The id of the account holding `username` in `domain`, if any, in whichever form its row
    /// holds the name.
    pub async fn user_id_by_username(
        &self,
        domain: &str,
        username: &Username,
    ) -> Result<Option<Uuid>, StoreError> {
        sqlx::query_scalar(
            "SELECT user_id FROM usernames WHERE domain = $1 AND username_key = ANY($2) LIMIT 1",
        )
        .bind(domain)
        .bind(self.username_registry().forms(domain, username))
        .fetch_optional(self.pool())
        .await
        .map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEK: [u8; 32] = [1; 32];

    fn stored(registry: &UsernameRegistry, domain: &str, name: &str) -> String {
        registry.stored_key(domain, &Username::parse(name).unwrap().key())
    }

    #[test]
    fn a_name_in_any_case_or_normalisation_has_one_keyed_form() {
        let registry = UsernameRegistry::keyed(&KEK);
        let jane = stored(&registry, "PRIMARY", "Jane");
        for same in ["jane", "JANE", "  jAnE ", "Ｊａｎｅ"] {
            assert_eq!(stored(&registry, "PRIMARY", same), jane, "{same}");
        }
        // Unicode's full lower-case mapping, as migration 0009 keys names: final sigma, dotted İ.
        assert_eq!(
            stored(&registry, "PRIMARY", "ΟΔΥΣΣΕΥΣ"),
            stored(&registry, "PRIMARY", "οδυσσευς")
        );
        assert_eq!(
            stored(&registry, "PRIMARY", "İlkay"),
            stored(&registry, "PRIMARY", "i\u{307}lkay")
        );
        assert_ne!(stored(&registry, "PRIMARY", "Jan"), jane);
        assert_ne!(stored(&registry, "EMPLOYEES", "Jane"), jane);
    }

    #[test]
    fn a_keyed_form_holds_the_key_id_and_a_hash_never_the_name() {
        let registry = UsernameRegistry::keyed(&KEK);
        let keyed_by = registry.keyed_by().unwrap().to_owned();
        let jane = stored(&registry, "PRIMARY", "Jane");
        let (id, hash) = jane.split_once('/').unwrap();
        assert_eq!(id, keyed_by);
        assert!(id.starts_with("hmac-sha256:") && id.len() == "hmac-sha256:".len() + 16);
        assert_eq!(hash.len(), 64);
        assert!(hash
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase()));
        assert!(!jane.to_lowercase().contains("jane"), "{jane}");
        assert!(UsernameRegistry::is_keyed(&jane));
        // The key id names the derived key, not the key-encryption key's fingerprint.
        assert!(!keyed_by.contains(&hex::encode(&Sha256::digest(KEK)[..8])));
        let forms = registry.forms("PRIMARY", &Username::parse("JANE").unwrap());
        assert_eq!(forms, vec![jane, "jane".to_owned()]);
    }

    #[test]
    fn another_key_encryption_key_keys_names_otherwise() {
        let one = UsernameRegistry::keyed(&KEK);
        let other = UsernameRegistry::keyed(&[2; 32]);
        assert_ne!(one.keyed_by(), other.keyed_by());
        assert_ne!(
            stored(&one, "PRIMARY", "Jane"),
            stored(&other, "PRIMARY", "Jane")
        );
        // The same key-encryption key, the same forms, in every process.
        assert_eq!(
            stored(&one, "PRIMARY", "Jane"),
            stored(&UsernameRegistry::keyed(&KEK), "PRIMARY", "Jane")
        );
    }

    #[test]
    fn without_a_key_encryption_key_names_stay_in_clear() {
        let registry = UsernameRegistry::in_clear();
        assert_eq!(registry.keyed_by(), None);
        assert_eq!(stored(&registry, "PRIMARY", "Jane"), "jane");
        assert!(!UsernameRegistry::is_keyed("jane"));
        let forms = registry.forms("PRIMARY", &Username::parse("Jane").unwrap());
        assert_eq!(forms, vec!["jane".to_owned()]);
        assert!(format!("{registry:?}").contains("None"));
    }

    #[test]
    fn no_name_in_clear_looks_keyed() {
        // `/` tells the forms apart, and no username may hold it.
        assert!(Username::parse("hmac-sha256:0011223344556677/00").is_err());
        assert!(Username::parse("hmac-sha256:0011223344556677").is_ok());
        assert!(!UsernameRegistry::is_keyed(
            &Username::parse("hmac-sha256:0011223344556677")
                .unwrap()
                .key()
        ));
    }
}
