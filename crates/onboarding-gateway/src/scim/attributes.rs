//! `attributes` and `excludedAttributes` (RFC 7644 §3.9): which attributes a User is returned
//! with. Names ignore case and may carry their schema's URN; `name.givenName` selects one
//! sub-attribute. `id` and `schemas` are always returned; an unknown name selects nothing.

use serde_json::{Map, Value};

use super::error::ScimError;
use super::{ENTERPRISE, ONBOARDING, USER};

/// One attribute named by a selection: the top-level key as the resource spells it (in lower
/// case) and, optionally, one of its sub-attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Name {
    attribute: String,
    sub: Option<String>,
}

/// The attributes a reply keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Selection {
    only: Vec<Name>,
    except: Vec<Name>,
}

/// Attributes returned whatever a selection says (RFC 7643 §7 `returned: always`).
const ALWAYS: [&str; 2] = ["id", "schemas"];

fn names(list: Option<&str>) -> Vec<Name> {
    list.into_iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(name)
        .collect()
}

/// A name as written, its URN resolved: the User schema's is dropped, an extension's names
/// the extension's key and the rest its sub-attribute.
fn name(raw: &str) -> Name {
    let lower = raw.to_ascii_lowercase();
    for urn in [ENTERPRISE, ONBOARDING] {
        let urn = urn.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix(&urn) {
            let sub = rest.trim_start_matches(':');
            return Name {
                attribute: urn,
                sub: (!sub.is_empty()).then(|| sub.to_owned()),
            };
        }
    }
    let path = lower
        .strip_prefix(&USER.to_ascii_lowercase())
        .map(|r| r.trim_start_matches(':').to_owned())
        .unwrap_or(lower);
    match path.split_once('.') {
        Some((a, s)) => Name {
            attribute: a.to_owned(),
            sub: Some(s.to_owned()),
        },
        None => Name {
            attribute: path,
            sub: None,
        },
    }
}

impl Selection {
    /// Reads the two parameters; RFC 7644 §3.9 makes them mutually exclusive.
    pub(super) fn parse(only: Option<&str>, except: Option<&str>) -> Result<Self, ScimError> {
        let selection = Self {
            only: names(only),
            except: names(except),
        };
        if !selection.only.is_empty() && !selection.except.is_empty() {
            return Err(ScimError::BothSelections);
        }
        Ok(selection)
    }

    /// Whether the selection changes nothing.
    pub(super) fn is_everything(&self) -> bool {
        self.only.is_empty() && self.except.is_empty()
    }

    /// `resource` (a JSON object) with only the selected attributes.
    pub(super) fn apply(&self, resource: Value) -> Value {
        let Value::Object(map) = resource else {
            return resource;
        };
        if self.is_everything() {
            return Value::Object(map);
        }
        let mut out = Map::new();
        for (key, value) in map {
            let lower = key.to_ascii_lowercase();
            if ALWAYS.contains(&lower.as_str()) {
                out.insert(key, value);
                continue;
            }
            let kept = if self.only.is_empty() {
                exclude(&self.except, &lower, value)
            } else {
                include(&self.only, &lower, value)
            };
            if let Some(v) = kept {
                out.insert(key, v);
            }
        }
        Value::Object(out)
    }
}

/// The part of `value` (the attribute `key`) that `only` names.
fn include(only: &[Name], key: &str, value: Value) -> Option<Value> {
    let named: Vec<&Name> = only.iter().filter(|n| n.attribute == key).collect();
    if named.is_empty() {
        return None;
    }
    if named.iter().any(|n| n.sub.is_none()) {
        return Some(value);
    }
    let subs: Vec<&str> = named.iter().filter_map(|n| n.sub.as_deref()).collect();
    Some(map_subs(value, &|sub| subs.contains(&sub)))
}

/// `value` (the attribute `key`) without what `except` names.
fn exclude(except: &[Name], key: &str, value: Value) -> Option<Value> {
    let named: Vec<&Name> = except.iter().filter(|n| n.attribute == key).collect();
    if named.iter().any(|n| n.sub.is_none()) {
        return None;
    }
    if named.is_empty() {
        return Some(value);
    }
    let subs: Vec<&str> = named.iter().filter_map(|n| n.sub.as_deref()).collect();
    Some(map_subs(value, &|sub| !subs.contains(&sub)))
}

/// A complex attribute (or each element of a multi-valued one) with only the sub-attributes
/// `keep` accepts.
fn map_subs(value: Value, keep: &dyn Fn(&str) -> bool) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| keep(&k.to_ascii_lowercase()))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| map_subs(v, keep)).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn user() -> Value {
        json!({
            "schemas": [USER, ONBOARDING],
            "id": "u1",
            "userName": "jane",
            "name": {"givenName": "Jane", "familyName": "Doe"},
            "emails": [{"value": "jane@pickup.example", "type": "work", "primary": true}],
            "active": false,
            "meta": {"resourceType": "User", "version": "W/\"2\""},
            ONBOARDING: {"state": "CodeIssued", "emailDelivery": "sent"},
        })
    }

    #[test]
    fn attributes_keep_only_what_they_name_and_what_is_always_returned() {
        let s = Selection::parse(Some("userName, name.familyName,EMAILS.value"), None).unwrap();
        assert_eq!(
            s.apply(user()),
            json!({
                "schemas": [USER, ONBOARDING], "id": "u1", "userName": "jane",
                "name": {"familyName": "Doe"}, "emails": [{"value": "jane@pickup.example"}],
            })
        );
        let s =
            Selection::parse(Some(&format!("{USER}:userName,{ONBOARDING}:state")), None).unwrap();
        assert_eq!(
            s.apply(user()),
            json!({
                "schemas": [USER, ONBOARDING], "id": "u1", "userName": "jane",
                ONBOARDING: {"state": "CodeIssued"},
            })
        );
    }

    #[test]
    fn excluded_attributes_drop_what_they_name_but_never_the_id() {
        let s = Selection::parse(None, Some("emails,name.givenName,id,meta")).unwrap();
        let out = s.apply(user());
        assert!(out.get("emails").is_none() && out.get("meta").is_none());
        assert_eq!(out["name"], json!({"familyName": "Doe"}));
        assert_eq!(out["id"], "u1");
        assert_eq!(out["userName"], "jane");
    }

    #[test]
    fn both_selections_at_once_are_refused() {
        let e = Selection::parse(Some("userName"), Some("emails")).unwrap_err();
        assert_eq!(e.scim_type(), Some("invalidValue"));
        assert!(Selection::parse(Some(" , "), None).unwrap().is_everything());
    }
}
