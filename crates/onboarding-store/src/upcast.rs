//! Upcasting: stored events of older versions take the current shape when they are read, in
//! cqrs-es (`upcasters`) and in readers outside it (`upcast`: the relay, audit, replay).

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster, SerializedEvent};
use onboarding_domain::password::HashScheme;
use onboarding_domain::OnboardingEvent;

/// Turns stored events of older versions into the current shape when they are loaded, oldest
/// version first. To change an event's shape: bump its version in
/// `OnboardingEvent::version_of`, add an upcaster here from the previous version, and add a
/// test on a stored row of the old version (see docs/ARCHITECTURE.md, "Event versions").
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![
        Box::new(SemanticVersionEventUpcaster::new(
            "UserInvited",
            OnboardingEvent::USER_INVITED_VERSION,
            Box::new(|mut payload| {
                // 1.0 → 2.0: `time_zone` did not exist; nobody chose one.
                if let Some(fields) = payload
                    .get_mut("UserInvited")
                    .and_then(serde_json::Value::as_object_mut)
                {
                    fields.entry("time_zone").or_insert(serde_json::Value::Null);
                }
                payload
            }),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            "InvitationMailFailed",
            OnboardingEvent::INVITATION_MAIL_FAILED_VERSION,
            Box::new(|mut payload| {
                // 1.0 → 1.1: attempts were not counted, and no retry was scheduled.
                if let Some(fields) = payload
                    .get_mut("InvitationMailFailed")
                    .and_then(serde_json::Value::as_object_mut)
                {
                    fields.entry("attempt").or_insert(serde_json::json!(0));
                    fields
                        .entry("next_attempt_at")
                        .or_insert(serde_json::Value::Null);
                }
                payload
            }),
        )),
        Box::new(SemanticVersionEventUpcaster::new(
            "PasswordSet",
            OnboardingEvent::PASSWORD_SET_VERSION,
            Box::new(password_set_1_0_to_2_0),
        )),
    ]
}

/// `PasswordSet` 1.0 → 2.0: 1.0 held the hash itself, which stays in the stored row (the log is
/// append-only and hash-chained) but goes no further than this function. The 2.0 shape records
/// the scheme, read from the hash; migration 0013 copied the hash into `credentials`
/// (docs/adr/0018). A hash that cannot be read leaves the payload without a scheme, which fails to
/// load naming the missing field, not the hash.
fn password_set_1_0_to_2_0(mut payload: serde_json::Value) -> serde_json::Value {
    if let Some(fields) = payload
        .get_mut("PasswordSet")
        .and_then(serde_json::Value::as_object_mut)
    {
        let scheme = fields
            .remove("password_hash")
            .and_then(|hash| HashScheme::of_phc(hash.as_str()?).ok())
            .and_then(|scheme| serde_json::to_value(scheme).ok());
        if let Some(scheme) = scheme {
            fields.insert("scheme".into(), scheme);
        }
    }
    payload
}

/// [`upcast`] from the payload's JSON text: events already in the current version are
/// deserialised straight from the text (the replay's fast path).
pub fn upcast_str(
    event_type: &str,
    event_version: &str,
    payload: &str,
) -> Result<OnboardingEvent, serde_json::Error> {
    if event_version == OnboardingEvent::version_of(event_type) {
        serde_json::from_str(payload)
    } else {
        upcast(event_type, event_version, serde_json::from_str(payload)?)
    }
}

/// A stored event in the current shape: runs the upcasters, then deserialises. An event already
/// in its current version is deserialised as it is (no upcaster applies to it).
pub fn upcast(
    event_type: &str,
    event_version: &str,
    payload: serde_json::Value,
) -> Result<OnboardingEvent, serde_json::Error> {
    if event_version == OnboardingEvent::version_of(event_type) {
        return serde_json::from_value(payload);
    }
    let mut event = SerializedEvent {
        aggregate_id: String::new(),
        sequence: 0,
        aggregate_type: String::new(),
        event_type: event_type.to_owned(),
        event_version: event_version.to_owned(),
        payload,
        metadata: serde_json::Value::Null,
    };
    for upcaster in upcasters() {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            event = upcaster.upcast(event);
        }
    }
    serde_json::from_value(event.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `UserInvited` as the first release stored it (1.0: no `time_zone`).
    const V1: &str = r#"{"UserInvited": {"user_id": "0197300e-7a5c-7b3e-9d5a-3c1f2e4d5a6b", "username": "Old", "email": "old@pickup.example", "domain": "PRIMARY", "locale": "de", "claims": {}, "invited_at": "2026-01-05T09:00:00Z"}}"#;

    #[test]
    fn a_version_1_invitation_is_upcast_with_no_time_zone() {
        let payload: serde_json::Value = serde_json::from_str(V1).unwrap();
        let upcaster = &upcasters()[0];
        assert!(upcaster.can_upcast("UserInvited", "1.0"));
        assert!(!upcaster.can_upcast("UserInvited", "2.0"));
        assert!(!upcaster.can_upcast("CodeIssued", "1.0"));
        let event = upcast("UserInvited", "1.0", payload).unwrap();
        match event {
            OnboardingEvent::UserInvited {
                username,
                locale,
                time_zone,
                ..
            } => {
                assert_eq!(username.as_str(), "Old");
                assert_eq!(locale.unwrap().as_str(), "de");
                assert_eq!(time_zone, None);
            }
            other => panic!("not an invitation: {other:?}"),
        }
    }

    #[test]
    fn a_version_1_0_mail_failure_is_upcast_with_no_attempt_count() {
        let stored = serde_json::json!({"InvitationMailFailed": {
            "code_id": "5f2c9a1e-0b7d-e4a3-91c6-2d8f7b3a6e10",
            "reason": "transient: connection refused",
            "permanent": false,
            "failed_at": "2025-06-02T09:14:07.512345678Z"
        }});
        assert!(upcasters()
            .iter()
            .any(|u| u.can_upcast("InvitationMailFailed", "1.0")));
        assert!(!upcasters()
            .iter()
            .any(|u| u.can_upcast("InvitationMailFailed", "1.1")));
        match upcast("InvitationMailFailed", "1.0", stored).unwrap() {
            OnboardingEvent::InvitationMailFailed {
                attempt,
                next_attempt_at,
                permanent,
                ..
            } => {
                assert_eq!(attempt, 0);
                assert_eq!(next_attempt_at, None);
                assert!(!permanent);
            }
            other => panic!("not a mail failure: {other:?}"),
        }
    }

    #[test]
    fn a_version_1_0_password_set_is_upcast_to_its_scheme_without_the_hash() {
        let stored = serde_json::json!({"PasswordSet": {
            "code_id": "5f2c9a1e-0b7d-e4a3-91c6-2d8f7b3a6e10",
            "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
            "set_at": "2026-06-02T09:14:07.512345Z"
        }});
        assert!(upcasters()
            .iter()
            .any(|u| u.can_upcast("PasswordSet", "1.0")));
        assert!(!upcasters()
            .iter()
            .any(|u| u.can_upcast("PasswordSet", "2.0")));
        let event = upcast("PasswordSet", "1.0", stored).unwrap();
        let OnboardingEvent::PasswordSet {
            scheme,
            password_hash,
            ..
        } = &event
        else {
            panic!("not a password: {event:?}")
        };
        assert_eq!(password_hash, &None);
        assert_eq!(
            (
                scheme.memory_kib,
                scheme.iterations,
                scheme.parallelism,
                scheme.version
            ),
            (19456, 2, 1, 19)
        );
        let json = serde_json::to_string(&event).unwrap();
        assert!(!json.contains("aGFzaGhhc2hoYXNo"), "{json}");
    }

    #[test]
    fn a_version_1_0_password_set_whose_hash_cannot_be_read_fails_without_naming_it() {
        let stored = serde_json::json!({"PasswordSet": {
            "code_id": "5f2c9a1e-0b7d-e4a3-91c6-2d8f7b3a6e10",
            "password_hash": "$unknown$sEcReT",
            "set_at": "2026-06-02T09:14:07.512345Z"
        }});
        let err = upcast("PasswordSet", "1.0", stored)
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheme"), "{err}");
        assert!(!err.contains("sEcReT"), "{err}");
    }

    #[test]
    fn the_current_version_is_read_as_stored() {
        let mut payload: serde_json::Value = serde_json::from_str(V1).unwrap();
        payload["UserInvited"]["time_zone"] = "Europe/Berlin".into();
        let event = upcast("UserInvited", "2.0", payload).unwrap();
        assert!(matches!(
            event,
            OnboardingEvent::UserInvited { time_zone: Some(tz), .. } if tz.as_str() == "Europe/Berlin"
        ));
        assert_eq!(
            OnboardingEvent::version_of("UserInvited"),
            OnboardingEvent::USER_INVITED_VERSION
        );
        assert_eq!(OnboardingEvent::version_of("CodeIssued"), "1.0");
    }
}
