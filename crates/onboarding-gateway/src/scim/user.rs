//! The SCIM User resource: what `POST /Users` may send ([`UserRequest`], read into the engine's
//! [`InvitationFields`]) and what a read answers ([`UserResource`], from the engine's account).
//!
//! SCIM attribute names are case-insensitive, so a body's keys are folded to lower case before
//! serde reads them. Each attribute reads leniently (a [`Field`]): a value of the wrong type is
//! refused afterwards, by its name and in a fixed order, not by serde's first complaint.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use onboarding_config::UserOnboarding;
use onboarding_domain::value::{check_text, InvalidValue, TextKind, UserDomain, Username};
use onboarding_domain::Onboarding;
use onboarding_store::{Invitation, InvitationFields};
use serde::de::{DeserializeOwned, Error as _, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::error::ScimError;
use super::update::{flag, Update, SCIM_CLAIMS};
use super::{ONBOARDING, USER};

/// Folds every object key to lower case, at every depth. Two keys that fold to the same name
/// are refused (`{"Password": "x", "password": null}` must not slip a password past the check),
/// named as the body spelled the second one.
fn fold_keys(value: Value) -> Result<Value, ScimError> {
    Ok(match value {
        Value::Object(map) => {
            let mut folded = Map::with_capacity(map.len());
            for (key, v) in map {
                let name = key.to_ascii_lowercase();
                if folded.contains_key(&name) {
                    return Err(ScimError::DuplicateAttribute(key));
                }
                folded.insert(name, fold_keys(v)?);
            }
            Value::Object(folded)
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(fold_keys).collect::<Result<_, _>>()?)
        }
        other => other,
    })
}

/// An attribute as sent: absent or `null`, a value of the expected shape, or something else.
/// Reading one never fails.
#[derive(Debug, Default)]
enum Field<T> {
    #[default]
    Missing,
    Given(T),
    Wrong,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(deserializer)? {
            Value::Null => Self::Missing,
            value => T::deserialize(value).map_or(Self::Wrong, Self::Given),
        })
    }
}

impl<T> Field<T> {
    fn given(self) -> Option<T> {
        match self {
            Self::Given(v) => Some(v),
            Self::Missing | Self::Wrong => None,
        }
    }
}

impl Field<String> {
    /// The text, trimmed; `None` when absent, `null` or blank; a value that is not a string is
    /// refused by its (case-folded) `attribute` name.
    fn text(self, attribute: &'static str) -> Result<Option<String>, ScimError> {
        match self {
            Self::Given(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
            Self::Given(_) | Self::Missing => Ok(None),
            Self::Wrong => Err(ScimError::NotAString(attribute)),
        }
    }
}

/// A JSON object read as `T` (a derived struct would also read an array field by field, which
/// SCIM never means).
#[derive(Debug)]
struct Object<T>(T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        T::deserialize(Value::Object(map))
            .map(Object)
            .map_err(D::Error::custom)
    }
}

/// A boolean as WSO2 sends it: `true` or `"true"` in any case; anything else is false.
#[derive(Debug, Default, Clone, Copy)]
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Flag(match Value::deserialize(deserializer)? {
            Value::Bool(b) => b,
            Value::String(s) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }))
    }
}

/// A `POST /Users` body, keys case-folded.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UserRequest {
    schemas: Field<Vec<Field<String>>>,
    /// Only whether one was sent: its value is never kept.
    password: Option<IgnoredAny>,
    #[serde(rename = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user")]
    enterprise: Field<Object<Enterprise>>,
    #[serde(rename = "username")]
    user_name: Field<String>,
    emails: Field<Vec<Field<Object<Email>>>>,
    locale: Field<String>,
    #[serde(rename = "preferredlanguage")]
    preferred_language: Field<String>,
    timezone: Field<String>,
    #[serde(rename = "externalid")]
    external_id: Field<String>,
    name: Field<Object<Name>>,
    #[serde(rename = "displayname")]
    display_name: Field<String>,
    /// Read by `PUT` only (a create's `active` is ignored: an invitation is inactive until
    /// the user sets a password).
    active: Field<Value>,
}

/// The enterprise extension, as far as this service reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Enterprise {
    #[serde(rename = "askpassword")]
    ask_password: Flag,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Email {
    value: Field<String>,
    #[serde(rename = "type")]
    kind: Field<String>,
    primary: Flag,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Name {
    #[serde(rename = "givenname")]
    given: Field<String>,
    #[serde(rename = "familyname")]
    family: Field<String>,
    formatted: Field<String>,
}

/// The parsed `POST /Users` body.
#[derive(Debug)]
pub(super) struct NewUser {
    pub invitation: Invitation,
    pub external_id: Option<String>,
}

impl NewUser {
    /// Reads a `POST /Users` body into an invitation checked against `rules`.
    pub(super) fn parse(body: &[u8], rules: &UserOnboarding) -> Result<Self, ScimError> {
        let value = serde_json::from_slice::<Value>(body).map_err(ScimError::MalformedJson)?;
        if !value.is_object() {
            return Err(ScimError::NotAnObject);
        }
        UserRequest::deserialize(fold_keys(value)?)
            .map_err(|_| ScimError::NotAnObject)?
            .into_new_user(rules)
    }
}

/// The most characters a name or the externalId may have.
pub(super) const MAX_CLAIM_CHARS: usize = 255;

impl Update {
    /// Reads a `PUT /Users/{id}` body: the User as it should be from now on. `name`,
    /// `displayName` and `externalId` are replaced (absent means removed); `emails` and
    /// `active` change only when given; `userName` must name the account.
    pub(super) fn from_put(body: &[u8]) -> Result<Self, ScimError> {
        let value = serde_json::from_slice::<Value>(body).map_err(ScimError::MalformedJson)?;
        if !value.is_object() {
            return Err(ScimError::NotAnObject);
        }
        UserRequest::deserialize(fold_keys(value)?)
            .map_err(|_| ScimError::NotAnObject)?
            .into_update()
    }
}

impl UserRequest {
    fn into_update(self) -> Result<Update, ScimError> {
        let schemas = self.schemas.given().unwrap_or_default();
        if !schemas
            .into_iter()
            .filter_map(Field::given)
            .any(|s| s.eq_ignore_ascii_case(USER))
        {
            return Err(ScimError::NotAUser);
        }
        if self.password.is_some() {
            return Err(ScimError::PasswordGiven);
        }
        let email = match self.emails {
            Field::Missing => None,
            Field::Given(emails) => {
                let emails: Vec<Email> = emails
                    .into_iter()
                    .filter_map(|e| e.given().map(|Object(e)| e))
                    .collect();
                Some(primary_address(emails).ok_or(ScimError::EmailsNotRemoved)?)
            }
            Field::Wrong => return Err(ScimError::EmailsNotAnArray),
        };
        let active = match self.active {
            Field::Missing => None,
            Field::Given(v) => Some(flag(&v)?),
            Field::Wrong => return Err(ScimError::ActiveNotABoolean),
        };
        let user_name = self.user_name.text("username")?;
        let external_id = self.external_id.text("externalid")?;
        let given = claims(self.name, self.display_name, external_id.as_deref())?;
        let claims = SCIM_CLAIMS
            .iter()
            .map(|(claim, _)| {
                let value = given.get(*claim).and_then(Value::as_str).map(str::to_owned);
                (*claim, value)
            })
            .collect();
        Ok(Update {
            user_name,
            email,
            claims,
            active,
            whole: true,
        })
    }

    fn into_new_user(self, rules: &UserOnboarding) -> Result<NewUser, ScimError> {
        let schemas = self.schemas.given().unwrap_or_default();
        if !schemas
            .into_iter()
            .filter_map(Field::given)
            .any(|s| s.eq_ignore_ascii_case(USER))
        {
            return Err(ScimError::NotAUser);
        }
        if self.password.is_some() {
            return Err(ScimError::PasswordGiven);
        }
        // Entra ID and Okta never send WSO2's askPassword: without a password, a create is an
        // invitation, unless the operator wants askPassword as WSO2 does.
        if rules.scim_require_ask_password
            && !self
                .enterprise
                .given()
                .is_some_and(|Object(e)| e.ask_password.0)
        {
            return Err(ScimError::NoAskPassword);
        }
        let user_name = self
            .user_name
            .text("username")?
            .ok_or(ScimError::NoUserName)?;
        let (domain, name) = split_user_name(&user_name);
        let emails: Vec<Email> = match self.emails {
            Field::Missing => Vec::new(),
            Field::Given(emails) => emails
                .into_iter()
                .filter_map(|e| e.given().map(|Object(e)| e))
                .collect(),
            Field::Wrong => return Err(ScimError::EmailsNotAnArray),
        };
        let address = primary_address(emails).ok_or(ScimError::NoEmailAddress)?;
        let locale = self.locale.text("locale")?;
        let locale = locale.or(self.preferred_language.text("preferredlanguage")?);
        let time_zone = self.timezone.text("timezone")?;
        let external_id = self.external_id.text("externalid")?;
        if external_id
            .as_ref()
            .is_some_and(|e| e.chars().count() > MAX_CLAIM_CHARS)
        {
            return Err(ScimError::TooLong("externalId"));
        }
        if let Some(e) = &external_id {
            check_text("externalId", e, TextKind::Name)
                .map_err(|e| ScimError::InvalidFields(e.0))?;
        }
        let claims = claims(self.name, self.display_name, external_id.as_deref())?;
        let invitation = InvitationFields {
            username: Some(name),
            email: Some(&address),
            domain,
            locale: locale.as_deref(),
            time_zone: time_zone.as_deref(),
            code_validity_minutes: None,
            claims,
        }
        .validate(rules)
        .map_err(|problems| {
            let detail: Vec<String> = problems
                .0
                .iter()
                .map(|(field, message)| format!("{}: {message}", scim_attribute(field)))
                .collect();
            ScimError::InvalidFields(detail.join("; "))
        })?;
        Ok(NewUser {
            invitation,
            external_id,
        })
    }
}

/// The invitation's claims: the name's parts (`name` is the formatted name, or else the given and
/// family names joined), the display name and the externalId.
fn claims(
    name: Field<Object<Name>>,
    display_name: Field<String>,
    external_id: Option<&str>,
) -> Result<BTreeMap<String, Value>, ScimError> {
    let mut claims = BTreeMap::new();
    // A name that is not an object is passed over.
    if let Some(Object(name)) = name.given() {
        let given = name.given.text("givenname")?;
        let family = name.family.text("familyname")?;
        let formatted = name.formatted.text("formatted")?.or_else(|| {
            let parts: Vec<&str> = [given.as_deref(), family.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        });
        claims.extend([
            ("given_name", given),
            ("family_name", family),
            ("name", formatted),
        ]);
    }
    claims.insert("display_name", display_name.text("displayname")?);
    claims.insert("external_id", external_id.map(str::to_owned));
    let claims: BTreeMap<&'static str, String> = claims
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    if let Some((k, _)) = claims
        .iter()
        .find(|(_, v)| v.chars().count() > MAX_CLAIM_CHARS)
    {
        return Err(ScimError::TooLong(k));
    }
    // Named by their SCIM attributes, before `InvitationFields` would name them as claims.
    for (k, v) in &claims {
        check_text(claim_attribute(k), v, TextKind::Prose)
            .map_err(|e| ScimError::InvalidFields(e.0))?;
    }
    Ok(claims
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect())
}

/// The SCIM attribute a claim comes from, for error details.
fn claim_attribute(claim: &str) -> &str {
    match claim {
        "given_name" => "name.givenName",
        "family_name" => "name.familyName",
        "name" => "name.formatted",
        "display_name" => "displayName",
        "external_id" => "externalId",
        other => other,
    }
}

/// The address `emails` (as a PATCH gives them) names: see [`primary_address`]; `None` when
/// no element has a value.
pub(super) fn chosen_address(items: &[Value]) -> Option<String> {
    let emails: Vec<Email> = items
        .iter()
        .filter_map(|item| fold_keys(item.clone()).ok())
        .filter_map(|item| Object::<Email>::deserialize(item).ok())
        .map(|Object(e)| e)
        .collect();
    primary_address(emails)
}

/// The address the invitation goes to: the primary one, else the first `work` one, else the
/// first one given.
fn primary_address(emails: Vec<Email>) -> Option<String> {
    let chosen = emails
        .iter()
        .position(|e| e.primary.0)
        .or_else(|| {
            emails
                .iter()
                .position(|e| matches!(&e.kind, Field::Given(k) if k == "work"))
        })
        .unwrap_or(0);
    emails.into_iter().nth(chosen)?.value.given()
}

/// SCIM's names for the fields of an invitation, for error details.
fn scim_attribute(field: &str) -> &str {
    match field {
        "username" | "domain" => "userName",
        "email" => "emails",
        "time_zone" => "timezone",
        other => other,
    }
}

/// WSO2 writes a secondary user store's user as `DOMAIN/name`, a PRIMARY user by name alone:
/// the domain, if one is written, and the name.
fn split_user_name(user_name: &str) -> (Option<&str>, &str) {
    match user_name.split_once('/') {
        Some((domain, name)) => (Some(domain), name),
        None => (None, user_name),
    }
}

/// A SCIM `userName` as the account it names: `DOMAIN/name`, or `name` in PRIMARY.
pub(super) fn parse_user_name(user_name: &str) -> Result<(UserDomain, Username), InvalidValue> {
    let (domain, name) = split_user_name(user_name);
    let domain = domain.map_or_else(|| Ok(UserDomain::primary()), UserDomain::parse)?;
    Ok((domain, Username::parse(name)?))
}

/// An account's `userName`: its name, prefixed with its domain unless that is PRIMARY.
fn scim_user_name(username: &Username, domain: Option<&UserDomain>) -> String {
    match domain {
        Some(d) if d.as_str() != UserDomain::PRIMARY => {
            format!("{}/{}", d.as_str(), username.as_str())
        }
        _ => username.as_str().to_owned(),
    }
}

/// A resource's version, as `meta.version` and the `ETag` header give it.
pub(super) fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// The SCIM representation of an account.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UserResource {
    schemas: [&'static str; 2],
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<NameOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    emails: Option<[EmailOut; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    locale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    active: bool,
    meta: Meta,
    #[serde(rename = "urn:onboard:params:scim:schemas:extension:onboarding:2.0:User")]
    onboarding: OnboardingOut,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NameOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    given_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    family_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    formatted: Option<String>,
}

#[derive(Debug, Serialize)]
struct EmailOut {
    value: String,
    #[serde(rename = "type")]
    kind: &'static str,
    primary: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    resource_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_modified: Option<DateTime<Utc>>,
    location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

/// The onboarding extension: where the invitation stands.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OnboardingOut {
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code_expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_delivery: Option<String>,
}

impl UserResource {
    /// `account` as a User under `base` (`…/scim2`), at `version` (its number and time).
    pub(super) fn new(
        base: &str,
        account: &Onboarding,
        version: Option<(i64, DateTime<Utc>)>,
    ) -> Self {
        let id = account.user_id.map(|i| i.to_string()).unwrap_or_default();
        let now = Utc::now();
        let claim = |k: &str| {
            account
                .claims
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let name = NameOut {
            given_name: claim("given_name"),
            family_name: claim("family_name"),
            formatted: claim("name"),
        };
        let has_name =
            name.given_name.is_some() || name.family_name.is_some() || name.formatted.is_some();
        Self {
            schemas: [USER, ONBOARDING],
            external_id: claim("external_id"),
            user_name: account
                .username
                .as_ref()
                .map(|u| scim_user_name(u, account.domain.as_ref())),
            name: has_name.then_some(name),
            display_name: claim("display_name"),
            emails: account.email.as_ref().map(|e| {
                [EmailOut {
                    value: e.as_str().to_owned(),
                    kind: "work",
                    primary: true,
                }]
            }),
            locale: account.locale.as_ref().map(|l| l.as_str().to_owned()),
            timezone: account.time_zone.as_ref().map(|t| t.as_str().to_owned()),
            active: account.state == onboarding_domain::OnboardingState::Active,
            meta: Meta {
                resource_type: "User",
                created: account.created_at,
                last_modified: version.map(|(_, at)| at).or(account.created_at),
                location: format!("{base}/Users/{id}"),
                version: version.map(|(v, _)| etag(v)),
            },
            onboarding: OnboardingOut {
                state: account.state_at(now).as_str(),
                code_expires_at: account.live_code_at(now).map(|c| c.expires_at),
                // The mail's status as the event contract names it (its serde tag).
                email_delivery: account
                    .delivery
                    .as_ref()
                    .and_then(|d| serde_json::to_value(d).ok())
                    .and_then(|d| d.get("status")?.as_str().map(str::to_owned)),
            },
            id,
        }
    }

    /// Where the User is read: `meta.location`, and the `Location` of a `201`.
    pub(super) fn location(&self) -> &str {
        &self.meta.location
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::ENTERPRISE;
    use super::*;

    fn parse(v: Value) -> Result<NewUser, ScimError> {
        NewUser::parse(v.to_string().as_bytes(), &UserOnboarding::default())
    }

    #[test]
    fn an_attribute_given_twice_in_different_cases_is_refused() {
        for body in [
            json!({"schemas": [USER, ENTERPRISE], "userName": "Jane", "Password": "x", "password": null,
                   "emails": [{"value": "jane@pickup.example"}], ENTERPRISE: {"askPassword": true}}),
            json!({"schemas": [USER], "userName": "Jane", "name": {"givenName": "A", "GivenName": "B"}}),
        ] {
            let e = parse(body).unwrap_err();
            assert!(matches!(e, ScimError::DuplicateAttribute(_)), "{e:?}");
            assert_eq!(e.scim_type(), Some("invalidSyntax"));
            assert!(e.to_string().contains("more than once"), "{e}");
        }
    }

    #[test]
    fn a_control_character_is_refused_by_the_scim_attribute_it_came_in() {
        let with = |extra: Value| {
            let mut body = json!({
                "schemas": [USER, ENTERPRISE], "userName": "jane",
                "emails": [{"value": "jane@pickup.example"}], ENTERPRISE: {"askPassword": true},
            });
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            parse(body)
        };
        for (extra, attribute) in [
            (json!({"userName": "ja\u{0}ne"}), "userName: username"),
            (json!({"userName": "EMP\u{0}/jane"}), "userName: domain"),
            (
                json!({"emails": [{"value": "ja\u{0}ne@pickup.example"}]}),
                "emails: email",
            ),
            (json!({"externalId": "hr\u{0}1"}), "externalId"),
            (json!({"externalId": "hr\n1"}), "externalId"),
            (json!({"displayName": "J\u{0}D"}), "displayName"),
            (
                json!({"name": {"givenName": "Ja\u{1b}ne"}}),
                "name.givenName",
            ),
            (
                json!({"name": {"familyName": "D\u{0}oe"}}),
                "name.familyName",
            ),
            (
                json!({"name": {"formatted": "Jane\u{0}Doe"}}),
                "name.formatted",
            ),
        ] {
            let err = with(extra.clone()).unwrap_err();
            assert_eq!(err.scim_type(), Some("invalidValue"), "{extra}");
            let detail = err.to_string();
            assert!(
                detail.starts_with(&format!(
                    "{attribute} must not contain control characters such as NUL (U+0000)"
                )),
                "{extra}: {detail}"
            );
        }
        // A name is free text: a tab in it is kept.
        let user = with(json!({"displayName": "Jane\tDoe"})).unwrap();
        assert_eq!(user.invitation.claims["display_name"], "Jane\tDoe");
    }

    #[test]
    fn the_enterprise_key_is_its_urn_case_folded() {
        let request: UserRequest = serde_json::from_value(
            json!({ ENTERPRISE.to_ascii_lowercase(): {"askpassword": true} }),
        )
        .unwrap();
        assert!(request.enterprise.given().unwrap().0.ask_password.0);
    }

    #[test]
    fn wso2s_ask_password_request_is_understood() {
        let user = parse(json!({
            "schemas": [USER, ENTERPRISE],
            "name": {"familyName": "Doe", "givenName": "Jane"},
            "userName": "EMPLOYEES/Jane",
            "emails": [{"type": "home", "value": "jane@home.example"}, {"primary": true, "value": "jane@pickup.example", "type": "work"}],
            ENTERPRISE: {"askPassword": "true"},
        }))
        .unwrap();
        let invitation = user.invitation;
        assert_eq!(invitation.domain.as_str(), "EMPLOYEES");
        assert_eq!(invitation.username.as_str(), "Jane");
        assert_eq!(invitation.email.as_str(), "jane@pickup.example");
        assert_eq!(invitation.claims["name"], "Jane Doe");
    }

    #[test]
    fn attribute_names_are_read_in_any_case_at_every_depth() {
        let user = parse(json!({
            "SCHEMAS": [USER.to_ascii_uppercase()],
            "USERNAME": "jane",
            "ExternalID": "hr-1",
            "DisplayName": "JD",
            "TimeZone": "Europe/Berlin",
            "PreferredLanguage": "de",
            "Name": {"GIVENNAME": "Jane", "familyname": "Doe", "Formatted": "Dr. Jane Doe"},
            "Emails": [{"VALUE": "jane@home.example"}, {"Value": "jane@work.example", "TYPE": "work"}],
            ENTERPRISE.to_ascii_uppercase(): {"ASKPASSWORD": "TRUE"},
        }))
        .unwrap();
        assert_eq!(user.external_id.as_deref(), Some("hr-1"));
        let invitation = user.invitation;
        assert_eq!(invitation.username.as_str(), "jane");
        assert_eq!(invitation.email.as_str(), "jane@work.example");
        assert_eq!(invitation.locale.unwrap().as_str(), "de");
        assert_eq!(invitation.time_zone.unwrap().as_str(), "Europe/Berlin");
        assert_eq!(
            invitation.claims,
            BTreeMap::from([
                ("display_name".to_owned(), json!("JD")),
                ("external_id".to_owned(), json!("hr-1")),
                ("family_name".to_owned(), json!("Doe")),
                ("given_name".to_owned(), json!("Jane")),
                ("name".to_owned(), json!("Dr. Jane Doe")),
            ])
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_or_passed_over_as_before() {
        let base = || {
            json!({
                "schemas": [USER], "userName": "jane",
                "emails": [{"value": "jane@pickup.example"}], ENTERPRISE: {"askPassword": true},
            })
        };
        let with = |key: &str, value: Value| {
            let mut body = base();
            body[key] = value;
            parse(body)
        };
        // A string attribute that is not a string is named, as the body's folded key.
        let e = with("userName", json!(7)).unwrap_err();
        assert_eq!(e.to_string(), "username must be a string");
        assert_eq!(e.scim_type(), Some("invalidValue"));
        let e = with("externalId", json!(["x"])).unwrap_err();
        assert_eq!(e.to_string(), "externalid must be a string");
        let e = with("emails", json!({"value": "jane@pickup.example"})).unwrap_err();
        assert!(e.to_string().starts_with("emails must be an array"), "{e}");
        // Blank strings mean "not given"; a name that is not an object, and emails that are
        // not objects, are passed over.
        let user = with("displayName", json!("  ")).unwrap();
        assert!(!user.invitation.claims.contains_key("display_name"));
        assert!(with("name", json!(["Jane", "Doe"]))
            .unwrap()
            .invitation
            .claims
            .is_empty());
        let user = with(
            "emails",
            json!(["junk@pickup.example", null, {"value": "jane@pickup.example"}]),
        )
        .unwrap();
        assert_eq!(user.invitation.email.as_str(), "jane@pickup.example");
        // A non-object enterprise extension has no askPassword, which only a service that
        // requires it refuses; a non-array `schemas` lists nothing.
        assert!(with(ENTERPRISE, json!([true])).is_ok());
        let mut body = base();
        body[ENTERPRISE] = json!([true]);
        let e = NewUser::parse(body.to_string().as_bytes(), &requiring()).unwrap_err();
        assert!(
            e.to_string()
                .contains("only users sent with WSO2's askPassword"),
            "{e}"
        );
        let e = with("schemas", json!(USER)).unwrap_err();
        assert_eq!(e.scim_type(), Some("invalidSyntax"));
        // Even `"password": false` is a password sent; `null` is none.
        assert!(with("password", json!(null)).is_ok());
        let e = with("password", json!(false)).unwrap_err();
        assert!(e.to_string().contains("never accepts a password"), "{e}");
    }

    /// The rules of a service that requires WSO2's askPassword.
    fn requiring() -> UserOnboarding {
        UserOnboarding {
            scim_require_ask_password: true,
            ..UserOnboarding::default()
        }
    }

    #[test]
    fn a_create_without_a_password_is_an_invitation_as_entra_and_okta_send_it() {
        // Entra ID's documented create (no askPassword, `active: true`, roles), see
        // https://learn.microsoft.com/en-us/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
        let entra = json!({
            "schemas": [USER, ENTERPRISE],
            "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
            "userName": "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1@testuser.com",
            "active": true,
            "emails": [{"primary": true, "type": "work", "value": "Test_User_fd0ea13b-3c7e-4d5c-a8cf-4a7b8a0bbd63@testuser.com"}],
            "meta": {"resourceType": "User"},
            "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
            "roles": [],
        });
        let user = parse(entra.clone()).unwrap();
        assert_eq!(
            user.external_id.as_deref(),
            Some("0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef")
        );
        assert_eq!(
            user.invitation.email.as_str(),
            "Test_User_fd0ea13b-3c7e-4d5c-a8cf-4a7b8a0bbd63@testuser.com"
        );
        // A service that requires askPassword refuses it, saying how to send it.
        let e = NewUser::parse(entra.to_string().as_bytes(), &requiring()).unwrap_err();
        assert_eq!(e.scim_type(), Some("invalidValue"));
        assert!(e.to_string().contains("askPassword"), "{e}");
    }

    #[test]
    fn a_password_or_no_ask_password_is_refused_clearly() {
        let e = parse(json!({
            "schemas": [USER], "userName": "jane", "password": "Secret123!",
            "emails": [{"value": "jane@pickup.example"}],
        }))
        .unwrap_err();
        assert_eq!(e.scim_type(), Some("invalidValue"));
        let detail = e.to_string();
        assert!(detail.contains("never accepts a password"), "{detail}");
        assert!(!detail.contains("Secret123"));
        let e = NewUser::parse(
            json!({
                "schemas": [USER], "userName": "jane", "emails": [{"value": "jane@pickup.example"}],
            })
            .to_string()
            .as_bytes(),
            &requiring(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("askPassword"), "{e}");
        let e = parse(json!({
            "schemas": [USER, ENTERPRISE], "userName": "jane", ENTERPRISE: {"askPassword": true},
        }))
        .unwrap_err();
        assert!(e.to_string().starts_with("emails"), "{e}");
    }

    #[test]
    fn bodies_that_are_not_users_are_syntax_errors() {
        for body in [&b"{"[..], b"\"a string\"", b"[]"] {
            let e = NewUser::parse(body, &UserOnboarding::default()).unwrap_err();
            assert_eq!(e.scim_type(), Some("invalidSyntax"));
        }
    }
}

/// Properties of [`NewUser::parse`], the reader of every `POST /scim2/Users` body.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::ENTERPRISE;
    use super::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "zq[a-z]{6}".prop_map(Value::String),
            "\\PC{0,300}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A WSO2-shaped body with some attributes replaced by arbitrary values, dropped, or sent
    /// again in another case.
    fn mutated_body() -> impl Strategy<Value = Value> {
        let attributes = prop::sample::select(vec![
            "schemas",
            "userName",
            "USERNAME",
            "emails",
            "name",
            "displayName",
            "externalId",
            "locale",
            "preferredLanguage",
            "timezone",
            "active",
            "id",
            "password",
            "Password",
            ENTERPRISE,
        ]);
        prop::collection::vec((attributes, prop::option::of(value())), 0..4).prop_map(|changes| {
            let mut body = json!({
                "schemas": [USER, ENTERPRISE],
                "userName": "zqjanedoe",
                "name": {"givenName": "zqjane", "familyName": "zqdoe"},
                "emails": [{"value": "zqjane@pickup.example", "primary": true, "type": "work"}],
                ENTERPRISE: {"askPassword": true},
            });
            let object = body.as_object_mut().unwrap();
            for (attribute, v) in changes {
                match v {
                    Some(v) => object.insert(attribute.to_owned(), v),
                    None => object.remove(attribute),
                };
            }
            body
        })
    }

    proptest! {
        #[test]
        fn any_bytes_are_a_user_or_a_scim_error(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Err(e) = NewUser::parse(&bytes, &UserOnboarding::default()) {
                prop_assert!(e.scim_type().is_some(), "{e}");
            }
        }

        #[test]
        fn an_accepted_body_has_no_password_and_a_refusal_never_repeats_one(
            body in mutated_body(),
            secret in "zqsecret[a-z]{8}",
        ) {
            let mut body = body;
            let with_password = body.as_object().unwrap().keys().any(|k| k.eq_ignore_ascii_case("password"));
            if with_password {
                for (k, v) in body.as_object_mut().unwrap().iter_mut() {
                    if k.eq_ignore_ascii_case("password") {
                        *v = Value::String(secret.clone());
                    }
                }
            }
            let text = body.to_string();
            // By default a body without a password is an invitation; a service that requires
            // WSO2's askPassword accepts only the bodies that carry it.
            let requiring = UserOnboarding {
                scim_require_ask_password: true,
                ..UserOnboarding::default()
            };
            for rules in [UserOnboarding::default(), requiring] {
                match NewUser::parse(text.as_bytes(), &rules) {
                    Ok(user) => {
                        prop_assert!(!with_password, "a password was accepted");
                        if rules.scim_require_ask_password {
                            prop_assert_eq!(&body[ENTERPRISE]["askPassword"], &json!(true));
                        }
                        prop_assert!(user.external_id.is_none_or(|e| e.chars().count() <= MAX_CLAIM_CHARS));
                        let claims = &user.invitation.claims;
                        prop_assert!(claims.values().all(|v| v.as_str().is_some_and(|s| s.chars().count() <= MAX_CLAIM_CHARS)));
                    }
                    Err(e) => {
                        let detail = e.to_string();
                        prop_assert!(e.scim_type().is_some(), "{detail}");
                        prop_assert!(!detail.contains(&secret), "{detail}");
                    }
                }
            }
        }
    }
}
