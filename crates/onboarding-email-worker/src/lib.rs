//! The email worker: consumes the public event topic and mails each issued code's link.
//!
//! Architecture invariants:
//! - At least once: a record's offset is stored only after its outcome was recorded on the
//!   aggregate (`InvitationMailSent`; or `InvitationMailFailed` plus a row in the delayed store
//!   or `InvitationMailAbandoned`), after it was found to need nothing, or after it was copied
//!   to the dead-letter topic. Auto-commit then commits stored offsets only.
//! - Never blocked by a failing mail: one SMTP attempt per record; later attempts come from the
//!   delayed store (`mail_retries`), claimed under a lease by the retry task ([`retry::run`]).
//! - Mail once per code: before sending, the worker reads the aggregate and skips a code that
//!   was already mailed, superseded, expired or used; the aggregate refuses a second "sent" for
//!   the same code. What remains is the window between the SMTP server's acceptance and the
//!   append of `InvitationMailSent` (milliseconds), documented in docs/ARCHITECTURE.md; a mail
//!   sent again there carries the same Message-ID (`Mailer::message_id_for`).
//! - In order per user, users side by side: each user's records are handled one after another
//!   in the user's lane ([`onboarding_kafka::lanes`]); up to `kafka.email_worker_concurrency` records are in
//!   flight at once, and a partition's offset is stored only once every record up to it on the
//!   partition was handled (docs/adr/0022).
//! - Never silent: the watchdog rejoins the group when records wait on a partition nobody reads
//!   (docs/adr/0004).
//! - The welcome mail after activation is best effort: it is sent once (the aggregate refuses a
//!   second `WelcomeMailSent`); a transient failure waits in the delayed store like an
//!   invitation's, and giving up is only logged and counted, not recorded.
//! - The link token is minted here from the event's public fields and the code key; it exists
//!   only in the mail.
//!
//! Modules by job: [`consumer`] receives records, hands each to its user's lane
//! (`onboarding_kafka::lanes`) and stores offsets; `records` reads one record (setting aside what cannot be read) and hands
//! it to [`delivery`], which decides, renders, sends and records one mail; [`retry`] decides when
//! a failed mail is tried again and runs the task that tries the due ones; [`mail`] renders and
//! sends a mail over [`smtp`]'s pooled connections.
#![forbid(unsafe_code)]

pub mod consumer;
pub mod delivery;
pub mod mail;
mod records;
pub mod retry;
pub mod smtp;
pub mod templates;

use onboarding_store::StoreError;

pub use consumer::EmailWorker;
pub use delivery::{Delivery, Outcome};
pub use mail::{Invitation, MailError, Mailer};
pub use retry::{Decision, RetryPolicy};

/// Why a record was left unhandled (its offset is not stored; it will be seen again).
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write to the dead-letter topic: {0}")]
    DeadLetter(#[source] rdkafka::error::KafkaError),
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Setup(#[from] mail::SetupError),
    #[error("a mail handler failed: {0}; its record will be seen again after a restart")]
    Lane(#[from] tokio::task::JoinError),
}
