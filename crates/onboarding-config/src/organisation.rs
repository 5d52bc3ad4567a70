//! `[organisation]`: who invites.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrganisationSettings {
    /// Shown in mails and on the page ("Pickup invited you…").
    pub name: String,
}

impl Default for OrganisationSettings {
    fn default() -> Self {
        Self {
            name: "Your organisation".into(),
        }
    }
}
