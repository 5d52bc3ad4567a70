//! The user store interface: what the provisioner needs from wherever accounts are provisioned
//! to. The LDAP directory ([`crate::ldap::LdapUserStore`]) is the first; a SCIM push to an
//! identity provider, a JDBC table or Keycloak's admin API would be others, without any change
//! to the aggregate or the provisioner.

use std::collections::BTreeMap;

use async_trait::async_trait;
use onboarding_domain::password::PasswordHash;
use onboarding_domain::value::{EmailAddress, Username};
use uuid::Uuid;

/// One active account, as a user store receives it: who she is, her claims, and the PHC string
/// of her password's argon2id hash (never the password: it never leaves the gateway's memory).
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// The engine's id of the account: a user store keeps it to know its own entries.
    pub user_id: Uuid,
    pub username: Username,
    pub email: EmailAddress,
    /// The invitation's claims (`name`, `given_name`, …), as given.
    pub claims: BTreeMap<String, serde_json::Value>,
    /// The argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    pub password_hash: PasswordHash,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// The entry was made.
    Added,
    /// The entry existed (an earlier attempt wrote it) and now holds what the engine holds.
    Updated,
}

impl Upserted {
    pub fn label(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Updated => "updated",
        }
    }
}

/// Why an upsert failed. The reason names what went wrong, never a value of the entry (no
/// password hash, no address, no claim value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserStoreError {
    /// The store cannot be reached or did not answer, or refused the engine's own bind: worth
    /// trying again later, and nothing is lost meanwhile.
    #[error("the user store is unavailable: {0}")]
    Unavailable(String),
    /// The store refused this entry (schema, constraints, an entry of the same name that is not
    /// this account's): retrying the same entry cannot help; an operator must act.
    #[error("the user store refused the entry: {0}")]
    Refused(String),
}

impl UserStoreError {
    pub fn permanent(&self) -> bool {
        matches!(self, Self::Refused(_))
    }

    /// The reason without the prefix, as the failure event records it.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// A store that active accounts are provisioned into.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// The kind of store, as configured (`read_write_ldap_unique_id`); recorded on the events.
    fn kind(&self) -> &'static str;

    /// Makes the store hold the account as given: adds it, or brings the entry this engine made
    /// for it up to date. Idempotent: doing it again changes nothing, so an attempt that crashed
    /// before its outcome was recorded can simply be made again.
    async fn upsert(&self, user: &UserRecord) -> Result<Upserted, UserStoreError>;

    /// Makes the entry this engine made for a disabled account unusable for a bind: her password
    /// is removed from it and her other attributes are brought up to date; the entry itself stays
    /// (its DN, its place in groups, and the `entryUUID` by which other systems know it), so that
    /// [`UserStore::upsert`] restores the password when she is enabled (docs/adr/0032).
    /// Idempotent; an account without an entry is done (nothing can bind as her).
    async fn lock(&self, user: &UserRecord) -> Result<Locked, UserStoreError>;

    /// Removes the entry this engine made for the account, found by the account's id (her
    /// username is erased by then), when the user was erased (docs/adr/0030). Idempotent: an
    /// account without an entry is done.
    async fn delete(&self, user_id: Uuid) -> Result<Deleted, UserStoreError>;

    /// Whether the store can be reached and the engine's credentials are accepted (readiness).
    async fn check(&self) -> Result<(), UserStoreError>;
}

/// What a lock did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// The account's entry holds no password now.
    Locked,
    /// The store holds no entry for the account (never provisioned): nothing binds as her.
    Absent,
}

impl Locked {
    pub fn label(self) -> &'static str {
        match self {
            Self::Locked => "locked",
            Self::Absent => "absent",
        }
    }
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The account's entry was removed.
    Removed,
    /// The store held no entry for the account (never provisioned, or removed before).
    Absent,
}

impl Deleted {
    pub fn label(self) -> &'static str {
        match self {
            Self::Removed => "removed",
            Self::Absent => "absent",
        }
    }
}
