//! The provisioner: writes each active account into the configured user store (an LDAP
//! directory first), and records the outcome on the account (`UserProvisioned`, or
//! `ProvisioningFailed` with the reason).
//!
//! Architecture invariants:
//! - At least once, effect once: an `activated` record's offset is stored only after its outcome
//!   is recorded. The write is an idempotent upsert, and the aggregate refuses a second
//!   `UserProvisioned`, so a crash between the directory's answer and the event provisions the
//!   account once: the record comes again, the upsert finds its own entry, and the event is
//!   recorded then.
//! - Only active accounts: every attempt reads the account first; a revoked, expired or
//!   unfinished invitation is never written (and the aggregate refuses an outcome for one).
//! - Nothing lost while the directory is down: the record in hand is tried again with backoff
//!   (0.5 s doubling to 15 s) until it succeeds or the process stops; its offset is not stored.
//! - The user store is a trait ([`UserStore`]); the aggregate knows nothing of LDAP.
//! - No secret or personal value in a log line, an error or a failure reason: the password's
//!   hash goes to the directory only, and reasons name codes, attributes and claims, not values
//!   (the entry's DN and the username are replaced before a directory's message is kept).
//!
//! Modules by job: [`user_store`] the interface, [`ldap`] the directory, [`provision`] one
//! account's attempt and its outcome, [`consumer`] the receive loop.
#![forbid(unsafe_code)]

pub mod consumer;
pub mod ldap;
pub mod provision;
pub mod user_store;

pub use consumer::{Provisioner, ProvisionerError};
pub use ldap::{LdapSetupError, LdapUserStore};
pub use provision::{current_password_hash, Outcome, Provision, Trigger};
pub use user_store::{Deleted, Locked, Upserted, UserRecord, UserStore, UserStoreError};
