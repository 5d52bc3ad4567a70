//! The JSON Schemas of the intake's records (`schemas/intake/`), generated from their types.

use schemars::JsonSchema;
use serde_json::{json, Value};

use crate::outcome::InvitationOutcome;
use crate::request::InvitationRequested;

/// The JSON Schemas of the intake's records, for `schemas/intake/`.
pub fn schemas() -> Vec<(String, Value)> {
    fn one<T: JsonSchema>(id: &str, title: &str) -> (String, Value) {
        let mut schema = serde_json::to_value(schemars::schema_for!(T)).expect("schema serialises");
        if let Some(obj) = schema.as_object_mut() {
            obj.insert("$id".into(), json!(format!("urn:onboard:schema:{id}")));
            obj.insert("title".into(), json!(title));
        }
        (format!("{id}.json"), schema)
    }
    vec![
        one::<InvitationRequested>(
            "user.invitation.requested",
            "An upstream service's invitation request (CloudEvent, JSON structured mode)",
        ),
        one::<InvitationOutcome>(
            "onboard.user.invitation.outcome.v1",
            "The value of onboard.user.invitation.accepted.v1 and onboard.user.invitation.rejected.v1 records",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AsyncAPI document names every schema file of every topic.
    #[test]
    fn asyncapi_references_every_schema() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let asyncapi = std::fs::read_to_string(root.join("asyncapi.yaml")).unwrap();
        for dir in ["events", "intake"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                assert!(
                    asyncapi.contains(&format!("./{dir}/{name}")),
                    "schemas/asyncapi.yaml does not reference {dir}/{name}"
                );
            }
        }
    }

    /// `schemas/intake/` is generated from these types; regenerate with
    /// `UPDATE_SCHEMAS=1 cargo test -p onboarding-intake`.
    #[test]
    fn committed_schemas_match_the_types() {
        onboarding_events::check_committed_schemas("intake", "onboarding-intake", schemas());
    }
}
