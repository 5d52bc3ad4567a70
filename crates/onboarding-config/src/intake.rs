//! `[intake]`: invitation requests that upstream services publish on Kafka (`onboard intake`).

use serde::Deserialize;

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
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            requests_topic: "onboarding.requests".into(),
            outcomes_topic: "onboarding.request-outcomes".into(),
            dead_letter_topic: "onboarding.requests.dlq".into(),
            group: "onboarding-intake".into(),
            partitions: 4,
        }
    }
}
