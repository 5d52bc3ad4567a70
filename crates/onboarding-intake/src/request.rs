//! What an upstream service sends: an invitation request (a CloudEvent), told apart from records
//! that are not one, and the user id a request invites.

use std::collections::BTreeMap;

use onboarding_domain::value::{check_text, printable, TextKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A request's `type` must end with this (e.g. `com.pickup.hr.user.invitation.requested`),
/// optionally followed by a version suffix (`.v1`).
pub const REQUEST_TYPE_SUFFIX: &str = "user.invitation.requested";

/// Namespace of the user ids derived from a request's (source, id).
const INTAKE_NAMESPACE: Uuid = Uuid::from_u128(0x6f6e_626f_6172_642d_696e_7461_6b65_7631);

/// The user id a request invites: the same for every delivery of the same (source, id).
pub fn request_user_id(source: &str, id: &str) -> Uuid {
    Uuid::new_v5(&INTAKE_NAMESPACE, format!("{source}\n{id}").as_bytes())
}

/// An invitation request: a CloudEvent (JSON, structured mode). Extension attributes are
/// allowed and ignored.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct InvitationRequested {
    /// Must be `1.0`.
    pub specversion: String,
    /// Unique per request within `source`: a retry of the same request reuses it.
    pub id: String,
    /// The upstream service, e.g. `urn:pickup:hr`.
    pub source: String,
    /// Ends with `user.invitation.requested`, e.g. `com.pickup.hr.user.invitation.requested`.
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `application/json` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    pub data: InvitationRequestData,
}

/// What to invite. Unknown fields (and any `password`) are refused.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationRequestData {
    pub username: String,
    pub email: String,
    /// User store domain; `PRIMARY` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Language of the user's mails, e.g. `de-AT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// IANA time zone (`Europe/Berlin`): the mail states the link's expiry in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Claims kept with the invitation (`name`, `given_name`, `family_name`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<BTreeMap<String, Value>>,
    /// Minutes the mailed code stays valid (within the configured bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_validity_minutes: Option<i64>,
}

/// Why a record went to the dead-letter topic (the `onboard_dlq_reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetter {
    /// The value is not JSON (or is empty).
    NotJson,
    /// JSON, but not a CloudEvent 1.0 with string `id`, `source`, `type`.
    NotCloudEvent,
    /// A CloudEvent of another type.
    UnsupportedType,
    /// A `data` that is not an object of the request schema (e.g. a missing email, a password).
    InvalidData,
    /// A request that PostgreSQL refused as data (SQLSTATE class 22) although every field passed
    /// the checks: the same record would be refused again, so it is set aside, not retried.
    Unstorable,
}

impl DeadLetter {
    /// The machine-readable reason, as the `onboard_dlq_reason` header and the metrics label.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::NotCloudEvent => "not_a_cloudevent",
            Self::UnsupportedType => "unsupported_type",
            Self::InvalidData => "invalid_data",
            Self::Unstorable => "unstorable",
        }
    }
}

/// Reads a record's value as an invitation request, or says why it is a dead letter (with a
/// detail that names fields, never their values).
pub fn classify(value: Option<&[u8]>) -> Result<InvitationRequested, (DeadLetter, String)> {
    let value = value.unwrap_or_default();
    let json: Value = serde_json::from_slice(value).map_err(|e| {
        (
            DeadLetter::NotJson,
            format!(
                "the value is not JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let Value::Object(map) = &json else {
        return Err((
            DeadLetter::NotCloudEvent,
            "the value is not a JSON object".into(),
        ));
    };
    let attr = |k: &str| map.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    if attr("specversion") != Some("1.0") {
        return Err((
            DeadLetter::NotCloudEvent,
            "specversion must be \"1.0\" (CloudEvents JSON, structured mode)".into(),
        ));
    }
    for k in ["id", "source", "type"] {
        match attr(k) {
            None => {
                return Err((
                    DeadLetter::NotCloudEvent,
                    format!("the CloudEvents attribute `{k}` must be a non-empty string"),
                ))
            }
            Some(v) if v.chars().count() > 255 => {
                return Err((
                    DeadLetter::NotCloudEvent,
                    format!("the CloudEvents attribute `{k}` must be at most 255 characters"),
                ))
            }
            // `id` and `source` are recorded with the invitation: a NUL could not be stored.
            Some(v) => check_text(
                &format!("the CloudEvents attribute `{k}`"),
                v,
                TextKind::Name,
            )
            .map_err(|e| (DeadLetter::NotCloudEvent, e.0))?,
        }
    }
    let ty = attr("type").unwrap_or_default();
    let base = ty
        .rsplit_once('.')
        .filter(|(_, v)| {
            v.len() > 1 && v.starts_with('v') && v[1..].chars().all(|c| c.is_ascii_digit())
        })
        .map_or(ty, |(b, _)| b);
    if !(base == REQUEST_TYPE_SUFFIX || base.ends_with(&format!(".{REQUEST_TYPE_SUFFIX}"))) {
        return Err((
            DeadLetter::UnsupportedType,
            format!("type must end with `{REQUEST_TYPE_SUFFIX}`"),
        ));
    }
    // The optional attributes, when given, are strings (null counts as not given).
    for k in ["time", "datacontenttype"] {
        if map.get(k).is_some_and(|v| !v.is_string() && !v.is_null()) {
            return Err((
                DeadLetter::NotCloudEvent,
                format!("the CloudEvents attribute `{k}` must be a string"),
            ));
        }
    }
    if let Some(ct) = attr("datacontenttype") {
        if !ct.starts_with("application/json") {
            return Err((
                DeadLetter::InvalidData,
                "datacontenttype must be application/json".into(),
            ));
        }
    }
    let Some(data) = map.get("data").and_then(Value::as_object) else {
        return Err((
            DeadLetter::InvalidData,
            "data must be a JSON object with string username and email, and optionally domain, \
             locale, time_zone, claims (object), code_validity_minutes (integer)"
                .into(),
        ));
    };
    if data.contains_key("password") {
        return Err((
            DeadLetter::InvalidData,
            "data.password is not accepted: the user chooses a password from the mailed link"
                .into(),
        ));
    }
    serde_json::from_value::<InvitationRequested>(json.clone()).map_err(|e| {
        // serde's messages can quote values; keep only the shape of the problem.
        let msg = e.to_string();
        let detail = if let Some(field) = msg.strip_prefix("missing field ") {
            format!("data is missing the field {field}")
        } else if msg.starts_with("unknown field") {
            // The key as sent, control characters escaped (a header carries this detail).
            printable(msg.split(", expected").next().unwrap_or(&msg), 200).replace("unknown field", "data has an unknown field")
        } else {
            "data must be an object with string username and email, and optionally domain, locale, time_zone, claims (object), code_validity_minutes (integer)".to_owned()
        };
        (DeadLetter::InvalidData, detail)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(data: Value) -> Vec<u8> {
        json!({
            "specversion": "1.0", "id": "req-1", "source": "urn:pickup:hr",
            "type": "com.pickup.hr.user.invitation.requested", "data": data,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn requests_are_told_from_dead_letters_with_a_reason() {
        let ok = classify(Some(&request(
            json!({"username": "jane", "email": "jane@pickup.example"}),
        )))
        .unwrap();
        assert_eq!(ok.data.username, "jane");
        let reason = |v: &[u8]| classify(Some(v)).unwrap_err().0;
        assert_eq!(reason(b"not json"), DeadLetter::NotJson);
        assert_eq!(reason(b""), DeadLetter::NotJson);
        assert_eq!(reason(b"[1]"), DeadLetter::NotCloudEvent);
        assert_eq!(
            reason(br#"{"specversion":"1.0","id":"x","type":"a.user.invitation.requested"}"#),
            DeadLetter::NotCloudEvent
        );
        assert_eq!(
            reason(br#"{"specversion":"1.0","id":"x","source":"s","type":"com.x.user.deleted","data":{}}"#),
            DeadLetter::UnsupportedType
        );
        assert_eq!(
            reason(&request(json!({"username": "jane"}))),
            DeadLetter::InvalidData
        );
        let (r, detail) = classify(Some(&request(
            json!({"username": "j", "email": "j@x.example", "password": "Hunter2!"}),
        )))
        .unwrap_err();
        assert_eq!(r, DeadLetter::InvalidData);
        assert!(!detail.contains("Hunter2"), "{detail}");
        let (_, detail) =
            classify(Some(&request(json!({"username": "j", "email": 42})))).unwrap_err();
        assert!(!detail.contains("42"), "{detail}");
        // A version suffix is allowed; a type that merely contains the words is not.
        let v1 = br#"{"specversion":"1.0","id":"x","source":"s","type":"com.x.user.invitation.requested.v1","data":{"username":"a","email":"a@x.example"}}"#;
        assert!(classify(Some(v1)).is_ok());
        let fake = br#"{"specversion":"1.0","id":"x","source":"s","type":"com.x.notuser.invitation.requested","data":{"username":"a","email":"a@x.example"}}"#;
        assert_eq!(reason(fake), DeadLetter::UnsupportedType);
    }

    #[test]
    fn a_control_character_in_id_source_or_type_makes_a_dead_letter_that_says_so() {
        for (attribute, nul) in [
            ("id", json!("req\u{0}1")),
            ("source", json!("urn:pickup:\u{0}hr")),
            ("type", json!("com.x\u{0}.user.invitation.requested")),
        ] {
            let mut request: Value = serde_json::from_slice(&request(
                json!({"username": "jane", "email": "jane@pickup.example"}),
            ))
            .unwrap();
            request[attribute] = nul;
            let (reason, detail) =
                classify(Some(&serde_json::to_vec(&request).unwrap())).unwrap_err();
            assert_eq!(reason, DeadLetter::NotCloudEvent, "{attribute}");
            assert!(
                detail.starts_with(&format!(
                    "the CloudEvents attribute `{attribute}` must not contain control characters such as NUL (U+0000)"
                )),
                "{detail}"
            );
        }
        // An unknown key is named, escaped.
        let (reason, detail) = classify(Some(&request(
            json!({"username": "j", "email": "j@x.example", "x\u{0}": 1}),
        )))
        .unwrap_err();
        assert_eq!(reason, DeadLetter::InvalidData);
        assert!(
            detail.contains("x\\0") && !detail.contains('\0'),
            "{detail}"
        );
    }

    #[test]
    fn a_refusal_names_the_attribute_that_is_wrong() {
        let event = |extra: Value| {
            let mut e = json!({
                "specversion": "1.0", "id": "req-1", "source": "urn:pickup:hr",
                "type": "com.pickup.hr.user.invitation.requested",
                "data": {"username": "jane", "email": "jane@pickup.example"},
            });
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    e.as_object_mut().unwrap().remove(k);
                } else {
                    e[k] = v.clone();
                }
            }
            classify(Some(e.to_string().as_bytes()))
        };
        let (reason, detail) = event(json!({"time": 5})).unwrap_err();
        assert_eq!(reason, DeadLetter::NotCloudEvent);
        assert_eq!(detail, "the CloudEvents attribute `time` must be a string");
        let (_, detail) = event(json!({"datacontenttype": ["application/json"]})).unwrap_err();
        assert_eq!(
            detail,
            "the CloudEvents attribute `datacontenttype` must be a string"
        );
        for data in [Value::Null, json!("jane"), json!([1])] {
            let (reason, detail) = event(json!({"data": data})).unwrap_err();
            assert_eq!(reason, DeadLetter::InvalidData);
            assert!(detail.starts_with("data must be a JSON object"), "{detail}");
        }
        assert!(event(json!({"time": null, "datacontenttype": null})).is_ok());
    }

    #[test]
    fn the_user_id_depends_on_source_and_id_only() {
        assert_eq!(
            request_user_id("urn:hr", "1"),
            request_user_id("urn:hr", "1")
        );
        assert_ne!(
            request_user_id("urn:hr", "1"),
            request_user_id("urn:signup", "1")
        );
        assert_ne!(
            request_user_id("urn:hr", "1"),
            request_user_id("urn:hr", "2")
        );
    }
}

/// Properties of [`classify`], the parser of every record on the requests topic.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// A JSON value of any shape, small.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "zq[a-z]{6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A request with some attributes and data fields replaced by arbitrary values or removed.
    fn mutated_request() -> impl Strategy<Value = Value> {
        let keys = prop::sample::select(vec![
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "datacontenttype",
            "data",
            "data.username",
            "data.email",
            "data.domain",
            "data.claims",
            "data.code_validity_minutes",
            "data.password",
            "data.extra",
        ]);
        prop::collection::vec((keys, prop::option::of(value())), 0..4).prop_map(|changes| {
            let mut request = json!({
                "specversion": "1.0", "id": "zqidentity", "source": "zqsourceurn",
                "type": "com.pickup.hr.user.invitation.requested",
                "data": {"username": "zqjanedoe", "email": "zqjane@pickup.example"},
            });
            for (key, v) in changes {
                let (object, key) = match key.strip_prefix("data.") {
                    Some(k) => (&mut request["data"], k),
                    None => (&mut request, key),
                };
                if let Some(object) = object.as_object_mut() {
                    match v {
                        Some(v) => object.insert(key.to_owned(), v),
                        None => object.remove(key),
                    };
                }
            }
            request
        })
    }

    /// Every string value in `v`, at any depth.
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
            Value::Object(m) => m.values().for_each(|i| strings(i, out)),
            _ => {}
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_a_request_or_a_dead_letter_with_a_reason(
            bytes in prop::option::of(prop::collection::vec(any::<u8>(), 0..200)),
        ) {
            if let Err((_, detail)) = classify(bytes.as_deref()) {
                prop_assert!(!detail.is_empty());
            }
        }

        #[test]
        fn an_accepted_request_meets_the_contract_and_a_refusal_never_quotes_a_value(
            request in mutated_request(),
        ) {
            let bytes = serde_json::to_vec(&request).unwrap();
            match classify(Some(&bytes)) {
                Ok(r) => {
                    prop_assert_eq!(r.specversion.as_str(), "1.0");
                    for attr in [&r.id, &r.source, &r.ty] {
                        prop_assert!(!attr.is_empty() && attr.chars().count() <= 255);
                        prop_assert!(!attr.chars().any(char::is_control));
                    }
                    prop_assert!(r.ty.contains(REQUEST_TYPE_SUFFIX));
                    prop_assert!(request["data"].get("password").is_none());
                    prop_assert_eq!(Some(r.data.username.as_str()), request["data"]["username"].as_str());
                    prop_assert_eq!(Some(r.data.email.as_str()), request["data"]["email"].as_str());
                }
                Err((reason, detail)) => {
                    prop_assert!(reason != DeadLetter::NotJson, "it is JSON: {detail}");
                    let mut values = Vec::new();
                    strings(&request, &mut values);
                    for v in values.iter().filter(|v| v.starts_with("zq")) {
                        prop_assert!(!detail.contains(v.as_str()), "{detail} quotes {v}");
                    }
                    // The detail names what is wrong: a CloudEvents attribute, `data` or a field.
                    prop_assert!(
                        ["specversion", "`id`", "`source`", "`type`", "type must", "`time`",
                         "datacontenttype", "data"].iter().any(|w| detail.contains(w)),
                        "{detail}"
                    );
                }
            }
        }

        #[test]
        fn a_request_prints_and_reads_back_the_same(
            id in "[!-~]{1,40}",
            source in "[!-~]{1,40}",
            nul in prop::option::of(0usize..40),
            prefix in "([a-z]{1,8}\\.){0,3}",
            version in prop::option::of(1u8..20),
            username in "[A-Za-z0-9._-]{1,20}",
            validity in prop::option::of(1i64..10_000),
        ) {
            let ty = format!(
                "{prefix}{REQUEST_TYPE_SUFFIX}{}",
                version.map(|v| format!(".v{v}")).unwrap_or_default()
            );
            let request = InvitationRequested {
                specversion: "1.0".into(),
                id,
                source,
                ty,
                time: None,
                datacontenttype: Some("application/json".into()),
                data: InvitationRequestData {
                    email: format!("{username}@pickup.example"),
                    username,
                    domain: None,
                    locale: None,
                    time_zone: None,
                    claims: None,
                    code_validity_minutes: validity,
                },
            };
            let printed = serde_json::to_vec(&request).unwrap();
            let read = classify(Some(&printed)).unwrap();
            prop_assert_eq!(serde_json::to_vec(&read).unwrap(), printed);
            // The same request with a NUL in its id is a dead letter that names the id.
            if let Some(at) = nul {
                let mut id: Vec<char> = request.id.chars().collect();
                id.insert(at.min(id.len()), '\0');
                let forged = InvitationRequested { id: id.into_iter().collect(), ..request };
                let (reason, detail) = classify(Some(&serde_json::to_vec(&forged).unwrap())).unwrap_err();
                prop_assert_eq!(reason, DeadLetter::NotCloudEvent);
                prop_assert!(detail.contains("`id`") && !detail.contains('\0'), "{detail}");
            }
        }
    }
}
