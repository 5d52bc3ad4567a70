//! The password credential of each account (`credentials`, migration 0013): the argon2id PHC
//! string that used to sit in `PasswordSet`'s payload, kept where it can be replaced and erased
//! (docs/adr/0018).
//!
//! Written in the append's transaction by the `credentials_take_the_hash` trigger when
//! `PasswordSet` carries a hash; afterwards only through [`Credentials`]: [`Credentials::replace`]
//! (a rehash at a raised cost) and [`Credentials::erase`]. Readers (the verify endpoint, user
//! store provisioning) take the hash from [`Credentials::current`].

use chrono::{DateTime, Utc};
use onboarding_domain::password::{HashAlgorithm, HashScheme, PasswordHash};
use onboarding_domain::value::Username;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use crate::registry::UsernameRegistry;
use crate::{db, Store, StoreError};

/// One account's password credential. The PHC string is a secret: it is printed nowhere
/// (`Debug` redacts it) and leaves the process only towards a user store that verifies
/// passwords itself (LDAP's `{ARGON2}` `userPassword`).
#[derive(Debug, Clone)]
pub struct Credential {
    /// The account.
    pub user_id: Uuid,
    /// The PHC string (`$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`).
    pub phc: SecretString,
    /// The algorithm and cost it was made with, as stored beside it.
    pub scheme: HashScheme,
    /// When the password was set (or, for hashes moved out of the log, when `PasswordSet` was
    /// recorded).
    pub created_at: DateTime<Utc>,
    /// When the row last changed: the password was set or rehashed.
    pub updated_at: DateTime<Utc>,
}

/// An active account's credential, with its username as invited (`Jane`, whatever case the
/// caller used to find it).
#[derive(Debug, Clone)]
pub struct ActiveCredential {
    /// The credential.
    pub credential: Credential,
    /// The account's username as it was invited.
    pub username: String,
}

/// The `credentials` table, and the username registry to find an account's by name.
#[derive(Debug, Clone)]
pub struct Credentials {
    pool: PgPool,
    registry: UsernameRegistry,
}

/// A stored row the engine cannot read (the table's `CHECK`s allow only argon2id and positive
/// parameters, so this means the schema and the code disagree).
#[derive(Debug, thiserror::Error)]
#[error("credentials: the credential of account {user_id} has {what}")]
struct UnreadableRow {
    user_id: Uuid,
    what: String,
}

type Row = (
    Uuid,
    String,
    String,
    i32,
    i32,
    i32,
    i32,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// A [`Row`] and the account's username.
type ActiveRow = (
    Uuid,
    String,
    String,
    i32,
    i32,
    i32,
    i32,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<String>,
);

impl Credentials {
    /// The table, on this pool; names are found in the registry as `registry` keys them.
    pub fn new(pool: PgPool, registry: UsernameRegistry) -> Self {
        Self { pool, registry }
    }

    /// The account's credential, or `None` when it has none: no password set yet, or erased.
    pub async fn current(&self, user_id: Uuid) -> Result<Option<Credential>, StoreError> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT user_id, phc, algorithm, version, memory_kib, iterations, parallelism, \
             created_at, updated_at FROM credentials WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(credential).transpose()
    }

    /// The credential of the account holding `username` (in any case) in `domain`, if that
    /// account is active, with its username as invited: what a sign-in checks a password
    /// against. `None` alike for a name nobody holds, an account not yet (or no longer) active,
    /// and an account without a credential, so that the caller cannot tell them apart. The
    /// registry's row is found in whichever form it holds the name (docs/adr/0035).
    pub async fn of_active_user(
        &self,
        domain: &str,
        username: &Username,
    ) -> Result<Option<ActiveCredential>, StoreError> {
        let row: Option<(Row, Option<String>)> = sqlx::query_as::<_, ActiveRow>(
            "SELECT c.user_id, c.phc, c.algorithm, c.version, c.memory_kib, c.iterations, \
             c.parallelism, c.created_at, c.updated_at, a.username \
             FROM usernames u \
             JOIN account_states a ON a.user_id = u.user_id AND a.state = 'Active' \
             JOIN credentials c ON c.user_id = u.user_id \
             WHERE u.domain = $1 AND u.username_key = ANY($2) LIMIT 1",
        )
        .bind(domain)
        .bind(self.registry.forms(domain, username))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .map(|(id, phc, alg, v, m, t, p, created, updated, username)| {
            ((id, phc, alg, v, m, t, p, created, updated), username)
        });
        let Some((row, username)) = row else {
            return Ok(None);
        };
        Ok(Some(ActiveCredential {
            credential: credential(row)?,
            // Every invited account has its username in `account_states`.
            username: username.unwrap_or_default(),
        }))
    }

    /// Replaces the credential `old` (as [`Credentials::current`] returned it) with `new`, if
    /// the row still holds `old`'s PHC string: a rehash computed from a password verified against
    /// `old` never overwrites a credential that changed in the meantime (another rehash, a new
    /// password), nor brings back an erased one. Answers whether it replaced.
    pub async fn replace(&self, old: &Credential, new: &PasswordHash) -> Result<bool, StoreError> {
        let scheme = new.scheme();
        let replaced = sqlx::query(
            "UPDATE credentials SET phc = $3, algorithm = $4, version = $5, memory_kib = $6, \
             iterations = $7, parallelism = $8, updated_at = clock_timestamp() \
             WHERE user_id = $1 AND phc = $2",
        )
        .bind(old.user_id)
        .bind(old.phc.expose_secret())
        .bind(new.as_phc())
        .bind(scheme.algorithm.as_str())
        .bind(i64::from(scheme.version))
        .bind(i64::from(scheme.memory_kib))
        .bind(i64::from(scheme.iterations))
        .bind(i64::from(scheme.parallelism))
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(replaced == 1)
    }

    /// Removes the account's credential: its password verifies nowhere in the engine any more.
    /// Answers whether there was one. (The hash of a password set before migration 0013 also
    /// remains in that `PasswordSet` row of the append-only log; docs/adr/0018.)
    pub async fn erase(&self, user_id: Uuid) -> Result<bool, StoreError> {
        let erased = sqlx::query("DELETE FROM credentials WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(erased == 1)
    }
}

impl Store {
    /// The credential table, on the store's pool.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(self.pool().clone(), self.username_registry().clone())
    }
}

fn credential(row: Row) -> Result<Credential, StoreError> {
    let (user_id, phc, algorithm, version, memory_kib, iterations, parallelism, created, updated) =
        row;
    let unreadable =
        |what: String| StoreError::Unexpected(Box::new(UnreadableRow { user_id, what }));
    let algorithm = match algorithm.as_str() {
        "argon2id" => HashAlgorithm::Argon2id,
        other => return Err(unreadable(format!("the unknown algorithm `{other}`"))),
    };
    let unsigned = |name: &str, n: i32| {
        u32::try_from(n).map_err(|_| unreadable(format!("a negative {name} ({n})")))
    };
    Ok(Credential {
        user_id,
        phc: SecretString::from(phc),
        scheme: HashScheme {
            algorithm,
            version: unsigned("version", version)?,
            memory_kib: unsigned("memory_kib", memory_kib)?,
            iterations: unsigned("iterations", iterations)?,
            parallelism: unsigned("parallelism", parallelism)?,
        },
        created_at: created,
        updated_at: updated,
    })
}
