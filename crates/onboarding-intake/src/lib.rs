//! Invitation requests from upstream services (an HR system, a signup service) on Kafka.
//!
//! Upstream services publish JSON CloudEvents (structured mode) whose `type` ends in
//! `user.invitation.requested` on `intake.requests_topic`. For each record the intake:
//! 1. classifies it: a record that is not such a request (not JSON, not a CloudEvent, another
//!    type, `data` not of the schema, a control character in `id`, `source` or `type`) goes to
//!    `intake.dead_letter_topic` unchanged, with the machine-readable reason in the
//!    `onboard_dlq_reason` header;
//! 2. invites through `Store::invite_as` (the one invitation path) with the user id
//!    UUIDv5(source, id), so a redelivered record or an upstream retry with the same id finds
//!    its own invitation and is accepted again with the same user id, never invited twice;
//! 3. publishes the outcome (binary mode: `ce_type` `onboard.user.invitation.accepted.v1` or
//!    `….rejected.v1`, `ce_correlationid` = the request's id, `ce_correlationsource` = its source)
//!    on `intake.outcomes_topic`, keyed by that user id;
//! 4. stores the record's offset only after the outcome (or dead letter) was acknowledged.
//!    A database or broker outage retries the same record; nothing is skipped.
//!
//! Invalid records never block the partition: they are dead-lettered and passed. That includes
//! a request whose values PostgreSQL refuses as data (SQLSTATE class 22), which no retry could
//! store: it is dead-lettered as `unstorable`.
#![forbid(unsafe_code)]

mod consumer;
mod invite;
mod outcome;
mod request;
mod schemas;

pub use consumer::{Intake, IntakeError};
pub use onboarding_kafka::DLQ_REASON_HEADER;
pub use outcome::{InvitationOutcome, RejectReason, ACCEPTED_TYPE, REJECTED_TYPE};
pub use request::{
    classify, request_user_id, DeadLetter, InvitationRequestData, InvitationRequested,
    REQUEST_TYPE_SUFFIX,
};
pub use schemas::schemas;

use onboarding_config::Settings;
use onboarding_kafka::{SetupError, TopicSpec};

/// Creates the requests, outcomes and dead-letter topics if they do not exist
/// (`intake.partitions` each, kept `kafka.retention_hours`: requests name people).
pub async fn create_topics(settings: &Settings) -> Result<(), SetupError> {
    let i = &settings.intake;
    let topics: Vec<TopicSpec> = [&i.requests_topic, &i.outcomes_topic, &i.dead_letter_topic]
        .into_iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions: i.partitions,
            retention_ms: Some(settings.kafka.retention_ms()),
        })
        .collect();
    onboarding_kafka::create_topics(&settings.kafka, &topics).await
}
