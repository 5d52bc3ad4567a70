//! `[intake]`: invitation requests that upstream services publish on Kafka (`onboard intake`).

use std::num::NonZeroUsize;

use serde::{de, Deserialize, Deserializer};

/// Invitation requests that upstream services publish on Kafka (`onboard intake`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeSettings {
    /// Where upstream services publish `…user.invitation.requested` CloudEvents.
    pub requests_topic: String,
    /// Where each request's outcome (accepted with the user id, or rejected) is published.
    pub outcomes_topic: String,
    /// Where messages that are not invitation requests go, with the reason in a header.
    pub dead_letter_topic: String,
    /// Consumer group of the intake processes.
    pub group: String,
    /// Partitions of the three topics when `onboard migrate` creates them.
    pub partitions: i32,
    /// Requests handled at once by one intake process (1 to 256); requests for the same username
    /// are handled one after another whatever this is.
    #[serde(deserialize_with = "concurrency")]
    pub concurrency: NonZeroUsize,
}

fn concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroUsize, D::Error> {
    let n = usize::deserialize(d)?;
    NonZeroUsize::new(n)
        .filter(|n| n.get() <= 256)
        .ok_or_else(|| {
            de::Error::custom(format!(
            "intake.concurrency ({n}) must be between 1 and 256; 1 handles one request at a time"
        ))
        })
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            requests_topic: "onboarding.requests".into(),
            outcomes_topic: "onboarding.request-outcomes".into(),
            dead_letter_topic: "onboarding.requests.dlq".into(),
            group: "onboarding-intake".into(),
            partitions: 4,
            concurrency: NonZeroUsize::new(64).expect("64 is not zero"),
        }
    }
}
