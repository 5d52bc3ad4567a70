//! Changing a User (`PUT` and `PATCH /Users/{id}`): what the request asks ([`Update`], from a
//! PATCH body here and from a PUT body in `user.rs`) and the commands that do it on the account
//! ([`Update::commands`]), all appended at once.
//!
//! What changes: the address (`emails`), the claims SCIM owns (`name`, `displayName`,
//! `externalId`) and `active`. `userName` cannot change (a request that repeats it is fine).
//! Attributes this service does not keep (`phoneNumbers`, `title`, the enterprise extension's
//! `employeeNumber`, …) are accepted and not stored, as on create. A `password` is refused.

use std::collections::BTreeMap;

use chrono::Utc;
use onboarding_domain::value::{check_text, EmailAddress, RevokeReason, TextKind, Username};
use onboarding_domain::{NewCode, Onboarding, OnboardingCommand, OnboardingState, RevokedBy};
use scim_v2::filter::{AttrExp, AttrPath, CompValue, CompareOp, PatchPath, ValFilter};
use scim_v2::models::others::{OperationTarget, PatchOp, PatchOperation};
use scim_v2::Validate;
use serde_json::{Map, Value};

use super::error::ScimError;
use super::user::{parse_user_name, MAX_CLAIM_CHARS};
use super::USER;

/// The claims SCIM owns, with the attribute each comes from; other claims (given through the
/// API or a bulk file) are left alone.
pub(super) const SCIM_CLAIMS: [(&str, &str); 5] = [
    ("given_name", "name.givenName"),
    ("family_name", "name.familyName"),
    ("name", "name.formatted"),
    ("display_name", "displayName"),
    ("external_id", "externalId"),
];

/// What a `PUT` or `PATCH` asks of an account; `None` leaves an attribute as it is.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Update {
    /// The userName the request asserts; it must name the account.
    pub user_name: Option<String>,
    /// The new address.
    pub email: Option<String>,
    /// SCIM's claims, by claim name: `Some(None)` removes one.
    pub claims: BTreeMap<&'static str, Option<String>>,
    /// `active`: `false` deprovisions, `true` enables a disabled account.
    pub active: Option<bool>,
    /// The request is the whole User (`PUT`): its `active: false` for an open invitation is
    /// the User as read (inactive until the password is set), not a deprovisioning; a client
    /// that reads a User and writes it back must not revoke the invitation.
    pub whole: bool,
}

/// Why a SCIM request revokes an invitation.
const DEPROVISIONED: &str = "deprovisioned through SCIM (active: false)";

impl Update {
    /// The commands that make `account` what the request asks, in the order they must run:
    /// enable, then the address and the claims, then deprovision. `new_code` draws the code an
    /// open invitation is re-issued with when its address changes.
    pub(super) fn commands(
        self,
        account: &Onboarding,
        new_code: impl FnOnce() -> NewCode,
    ) -> Result<Vec<OnboardingCommand>, ScimError> {
        let now = Utc::now();
        if let Some(asserted) = &self.user_name {
            let same = parse_user_name(asserted).is_ok_and(|(domain, name)| {
                Some(&domain) == account.domain.as_ref()
                    && account.username.as_ref().map(Username::key) == Some(name.key())
            });
            if !same {
                return Err(ScimError::UserNameImmutable);
            }
        }
        let mut commands = Vec::new();
        if self.active == Some(true) && account.state == OnboardingState::Disabled {
            commands.push(OnboardingCommand::EnableAccount { now });
        }
        if let Some(raw) = &self.email {
            let email = EmailAddress::parse(raw)
                .map_err(|e| ScimError::InvalidFields(format!("emails: {}", e.0)))?;
            if account.email.as_ref() != Some(&email) {
                commands.push(OnboardingCommand::ChangeEmail {
                    email,
                    code: new_code(),
                    now,
                });
            }
        }
        let claims = self.new_claims(account)?;
        if claims != account.claims {
            commands.push(OnboardingCommand::UpdateClaims { claims, now });
        }
        if self.active == Some(false) {
            match account.state {
                OnboardingState::Invited
                | OnboardingState::CodeIssued
                | OnboardingState::Expired
                | OnboardingState::Locked
                    if !self.whole =>
                {
                    commands.push(OnboardingCommand::RevokeInvitation {
                        by: RevokedBy::Admin,
                        reason: RevokeReason::parse(DEPROVISIONED).ok(),
                        now,
                    })
                }
                OnboardingState::Active | OnboardingState::PasswordSet => {
                    commands.push(OnboardingCommand::DisableAccount { now })
                }
                _ => {}
            }
        }
        Ok(commands)
    }

    /// The account's claims with the request's applied, each checked.
    fn new_claims(&self, account: &Onboarding) -> Result<BTreeMap<String, Value>, ScimError> {
        let mut claims = account.claims.clone();
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        // The formatted name follows the given and family names when it was derived from them
        // (at create, or by an earlier update) and the request does not set it.
        let derived = |given: Option<String>, family: Option<String>| {
            let parts: Vec<String> = [given, family].into_iter().flatten().collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        };
        let was_derived = text("name") == derived(text("given_name"), text("family_name"))
            || text("name").is_none();
        for (claim, value) in &self.claims {
            let attribute = SCIM_CLAIMS
                .iter()
                .find(|(c, _)| c == claim)
                .map_or(*claim, |(_, a)| a);
            match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                Some(v) => {
                    if v.chars().count() > MAX_CLAIM_CHARS {
                        return Err(ScimError::TooLong(attribute));
                    }
                    let kind = if *claim == "external_id" {
                        TextKind::Name
                    } else {
                        TextKind::Prose
                    };
                    check_text(attribute, v, kind).map_err(|e| ScimError::InvalidFields(e.0))?;
                    claims.insert((*claim).to_owned(), Value::String(v.to_owned()));
                }
                None => {
                    claims.remove(*claim);
                }
            }
        }
        let names_changed =
            self.claims.contains_key("given_name") || self.claims.contains_key("family_name");
        if !self.claims.contains_key("name") && names_changed && was_derived {
            let get = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
            match derived(get("given_name"), get("family_name")) {
                Some(name) => claims.insert("name".to_owned(), Value::String(name)),
                None => claims.remove("name"),
            };
        }
        Ok(claims)
    }

    /// Reads a `PATCH` body (RFC 7644 §3.5.2) against `account`: the operations as Entra ID and
    /// Okta send them (`"Replace"`, a path or an object of attributes, `"False"` as a string).
    /// Reads a `PATCH` body as a PatchOp, without the account: a body that is no PatchOp is
    /// refused as such before any version is compared.
    pub(super) fn parse_patch(body: &[u8]) -> Result<PatchOp, ScimError> {
        let value = serde_json::from_slice::<Value>(body).map_err(ScimError::MalformedJson)?;
        let patch: PatchOp = scim_v2::case_insensitive::from_value(value)
            .map_err(|e| ScimError::NotAPatch(e.to_string()))?;
        patch
            .validate()
            .map_err(|e| ScimError::NotAPatch(e.to_string()))?;
        Ok(patch)
    }

    pub(super) fn from_patch(body: &[u8], account: &Onboarding) -> Result<Self, ScimError> {
        let patch = Self::parse_patch(body)?;
        let mut update = Self::default();
        for operation in patch.operations {
            match operation {
                PatchOperation::Add(target) | PatchOperation::Replace(target) => match target {
                    OperationTarget::WithPath { path, value } => {
                        update.set_path(&path, value.unwrap_or(Value::Null), account)?
                    }
                    OperationTarget::WithoutPath { value } => update.set_object(value)?,
                },
                PatchOperation::Remove { path, .. } => update.remove(&path)?,
            }
        }
        Ok(update)
    }

    /// An operation on `path` with `value`.
    fn set_path(
        &mut self,
        path: &PatchPath,
        value: Value,
        account: &Onboarding,
    ) -> Result<(), ScimError> {
        match path {
            PatchPath::Attr(attr) => {
                let Some((name, sub)) = core_name(attr) else {
                    return Ok(()); // an extension's attribute: not kept
                };
                match sub {
                    None => self.set(&name, value),
                    Some(sub) => {
                        let mut object = Map::new();
                        object.insert(sub, value);
                        self.set(&name, Value::Object(object))
                    }
                }
            }
            PatchPath::Value(vp) => {
                let Some((name, None)) = core_name(&vp.attr) else {
                    return Ok(());
                };
                if name != "emails" {
                    return Ok(()); // phoneNumbers[type eq "work"] and the like: not kept
                }
                // The account has one address, of type work and primary: the operation applies
                // to it when the filter selects it.
                if !selects_the_address(&vp.filter, account) {
                    return Ok(());
                }
                let address = match (vp.sub_attr.as_deref(), value) {
                    (Some(sub), value) if sub.eq_ignore_ascii_case("value") => value,
                    (Some(_), _) => return Ok(()), // type, primary, display: not kept
                    (None, Value::Object(element)) => element
                        .into_iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("value"))
                        .map_or(Value::Null, |(_, v)| v),
                    (None, _) => return Err(ScimError::NotAString("emails.value")),
                };
                self.email =
                    Some(string(address, "emails.value")?.ok_or(ScimError::NoEmailAddress)?);
                Ok(())
            }
        }
    }

    /// A pathless operation: an object of attributes (Okta's `{"active": false}`).
    fn set_object(&mut self, value: Map<String, Value>) -> Result<(), ScimError> {
        for (key, value) in value {
            let lower = key.to_ascii_lowercase();
            let user = USER.to_ascii_lowercase();
            if let Some(rest) = lower.strip_prefix(&user) {
                // The core schema's URN: its attributes, by name or as an object.
                match rest.strip_prefix(':') {
                    Some(name) => self.set(name, value)?,
                    None => {
                        if let Value::Object(inner) = value {
                            self.set_object(inner)?;
                        }
                    }
                }
            } else if !lower.starts_with("urn:") {
                self.set(&lower, value)?;
            }
        }
        Ok(())
    }

    /// Sets the core attribute `name` (lower case) to `value`.
    fn set(&mut self, name: &str, value: Value) -> Result<(), ScimError> {
        match name {
            "active" => self.active = Some(flag(&value)?),
            "username" => self.user_name = string(value, "userName")?,
            "externalid" => {
                self.claims
                    .insert("external_id", string(value, "externalId")?);
            }
            "displayname" => {
                self.claims
                    .insert("display_name", string(value, "displayName")?);
            }
            "name" => match value {
                Value::Object(parts) => {
                    for (k, v) in parts {
                        let claim = match k.to_ascii_lowercase().as_str() {
                            "givenname" => "given_name",
                            "familyname" => "family_name",
                            "formatted" => "name",
                            _ => continue, // middleName, honorificPrefix, …: not kept
                        };
                        let attribute = SCIM_CLAIMS.iter().find(|(c, _)| *c == claim).unwrap().1;
                        self.claims.insert(claim, string(v, attribute)?);
                    }
                }
                Value::Null => {
                    for claim in ["given_name", "family_name", "name"] {
                        self.claims.insert(claim, None);
                    }
                }
                _ => return Err(ScimError::NotAnObjectAttribute("name")),
            },
            "emails" => match value {
                Value::Array(items) => {
                    if let Some(address) = super::user::chosen_address(&items) {
                        self.email = Some(address);
                    } else if items.is_empty() {
                        return Err(ScimError::EmailsNotRemoved);
                    }
                }
                Value::Null => return Err(ScimError::EmailsNotRemoved),
                Value::Object(element) => {
                    if let Some(address) = super::user::chosen_address(&[Value::Object(element)]) {
                        self.email = Some(address);
                    }
                }
                _ => return Err(ScimError::EmailsNotAnArray),
            },
            "password" => return Err(ScimError::PasswordGiven),
            _ => {} // not kept by this service
        }
        Ok(())
    }

    /// A `remove` of `path`.
    fn remove(&mut self, path: &PatchPath) -> Result<(), ScimError> {
        let PatchPath::Attr(attr) = path else {
            // emails[type eq "work"]: the one address cannot go.
            return match path {
                PatchPath::Value(vp) if vp.attr.name.eq_ignore_ascii_case("emails") => {
                    Err(ScimError::EmailsNotRemoved)
                }
                _ => Ok(()),
            };
        };
        let Some((name, sub)) = core_name(attr) else {
            return Ok(());
        };
        match (name.as_str(), sub.as_deref()) {
            ("emails", _) => return Err(ScimError::EmailsNotRemoved),
            ("active", _) => return Err(ScimError::ActiveNotRemoved),
            ("username", _) => return Err(ScimError::UserNameImmutable),
            ("externalid", None) => {
                self.claims.insert("external_id", None);
            }
            ("displayname", None) => {
                self.claims.insert("display_name", None);
            }
            ("name", None) => {
                for claim in ["given_name", "family_name", "name"] {
                    self.claims.insert(claim, None);
                }
            }
            ("name", Some("givenname")) => {
                self.claims.insert("given_name", None);
            }
            ("name", Some("familyname")) => {
                self.claims.insert("family_name", None);
            }
            ("name", Some("formatted")) => {
                self.claims.insert("name", None);
            }
            _ => {}
        }
        Ok(())
    }
}

/// A core attribute path as (name, sub-attribute), both lower case; `None` for an extension's.
fn core_name(attr: &AttrPath) -> Option<(String, Option<String>)> {
    if attr
        .uri
        .as_deref()
        .is_some_and(|u| !u.eq_ignore_ascii_case(USER))
    {
        return None;
    }
    Some((
        attr.name.to_ascii_lowercase(),
        attr.sub_attr.as_deref().map(str::to_ascii_lowercase),
    ))
}

/// Whether the filter of `emails[…]` selects the account's one address (type work, primary).
fn selects_the_address(filter: &ValFilter, account: &Onboarding) -> bool {
    match filter {
        ValFilter::Attr(AttrExp::Present(_)) => true,
        ValFilter::Attr(AttrExp::Comparison(path, op, value)) => {
            let actual = match path.name.to_ascii_lowercase().as_str() {
                "type" => CompValue::Str("work".into()),
                "primary" => CompValue::True,
                "value" => match &account.email {
                    Some(e) => CompValue::Str(e.as_str().to_owned()),
                    None => return false,
                },
                _ => return false,
            };
            match (op, &actual, value) {
                (CompareOp::Eq, CompValue::Str(a), CompValue::Str(v)) => a.eq_ignore_ascii_case(v),
                (CompareOp::Ne, CompValue::Str(a), CompValue::Str(v)) => !a.eq_ignore_ascii_case(v),
                (CompareOp::Eq, CompValue::True, v) => is_true(v),
                (CompareOp::Ne, CompValue::True, v) => !is_true(v),
                _ => false,
            }
        }
        ValFilter::Not(inner) => !selects_the_address(inner, account),
        ValFilter::And(all) => all.iter().all(|f| selects_the_address(f, account)),
        ValFilter::Or(all) => all.iter().any(|f| selects_the_address(f, account)),
    }
}

fn is_true(v: &CompValue) -> bool {
    matches!(v, CompValue::True) || matches!(v, CompValue::Str(s) if s.eq_ignore_ascii_case("true"))
}

/// A boolean as Entra ID sends it: `false`, or the string `"False"` in any case.
pub(super) fn flag(value: &Value) -> Result<bool, ScimError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(ScimError::ActiveNotABoolean),
    }
}

/// A string attribute's value; `null` means none.
fn string(value: Value, attribute: &'static str) -> Result<Option<String>, ScimError> {
    match value {
        Value::String(s) => Ok(Some(s)),
        Value::Null => Ok(None),
        _ => Err(ScimError::NotAString(attribute)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

    fn account(state: OnboardingState) -> Onboarding {
        Onboarding {
            state,
            user_id: Some(Uuid::from_u128(7)),
            username: Some(Username::parse("jane").unwrap()),
            email: Some(EmailAddress::parse("jane@pickup.example").unwrap()),
            domain: Some(onboarding_domain::value::UserDomain::primary()),
            claims: BTreeMap::from([
                ("given_name".to_owned(), json!("Jane")),
                ("family_name".to_owned(), json!("Doe")),
                ("name".to_owned(), json!("Jane Doe")),
                ("external_id".to_owned(), json!("hr-1")),
                ("nickname".to_owned(), json!("JJ")),
            ]),
            ..Onboarding::default()
        }
    }

    fn patch(operations: serde_json::Value, account: &Onboarding) -> Result<Update, ScimError> {
        Update::from_patch(
            json!({"schemas": [PATCH_OP], "Operations": operations})
                .to_string()
                .as_bytes(),
            account,
        )
    }

    fn code() -> NewCode {
        NewCode {
            code_id: onboarding_domain::code::CodeId::from_random_bytes([9; 16]),
            key_id: "k1".into(),
            validity: chrono::Duration::minutes(60),
        }
    }

    fn names(commands: &[OnboardingCommand]) -> Vec<&'static str> {
        commands
            .iter()
            .map(|c| match c {
                OnboardingCommand::EnableAccount { .. } => "enable",
                OnboardingCommand::ChangeEmail { .. } => "email",
                OnboardingCommand::UpdateClaims { .. } => "claims",
                OnboardingCommand::RevokeInvitation { .. } => "revoke",
                OnboardingCommand::DisableAccount { .. } => "disable",
                _ => "other",
            })
            .collect()
    }

    #[test]
    fn entras_disable_with_a_capitalised_op_and_a_string_boolean_deprovisions() {
        // https://learn.microsoft.com/en-us/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
        for value in [json!(false), json!("False"), json!("false")] {
            let open = account(OnboardingState::CodeIssued);
            let update = patch(
                json!([{"op": "Replace", "path": "active", "value": value}]),
                &open,
            )
            .unwrap();
            assert_eq!(update.active, Some(false));
            assert_eq!(names(&update.commands(&open, code).unwrap()), ["revoke"]);
        }
        let active = account(OnboardingState::Active);
        let update = patch(
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
            &active,
        )
        .unwrap();
        assert_eq!(names(&update.commands(&active, code).unwrap()), ["disable"]);
    }

    #[test]
    fn oktas_pathless_deactivation_deprovisions_and_reactivation_enables() {
        // https://developer.okta.com/docs/api/openapi/okta-scim/guides/scim-20
        let active = account(OnboardingState::Active);
        let update = patch(
            json!([{"op": "replace", "value": {"active": false}}]),
            &active,
        )
        .unwrap();
        assert_eq!(names(&update.commands(&active, code).unwrap()), ["disable"]);
        let disabled = account(OnboardingState::Disabled);
        let update = patch(
            json!([{"op": "replace", "value": {"active": true}}]),
            &disabled,
        )
        .unwrap();
        assert_eq!(
            names(&update.commands(&disabled, code).unwrap()),
            ["enable"]
        );
        // Deprovisioning what is already deprovisioned changes nothing.
        let update = patch(
            json!([{"op": "replace", "value": {"active": false}}]),
            &disabled,
        )
        .unwrap();
        assert!(update.commands(&disabled, code).unwrap().is_empty());
    }

    #[test]
    fn entras_update_of_the_work_address_and_the_family_name_is_one_change() {
        // https://learn.microsoft.com/en-us/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
        let open = account(OnboardingState::CodeIssued);
        let update = patch(
            json!([
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "updatedEmail@microsoft.com"},
                {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
            ]),
            &open,
        )
        .unwrap();
        assert_eq!(update.email.as_deref(), Some("updatedEmail@microsoft.com"));
        let commands = update.commands(&open, code).unwrap();
        assert_eq!(names(&commands), ["email", "claims"]);
        let OnboardingCommand::UpdateClaims { claims, .. } = &commands[1] else {
            panic!("{commands:?}");
        };
        // The formatted name was derived from the parts, so it follows them; other claims stay.
        assert_eq!(claims["family_name"], "updatedFamilyName");
        assert_eq!(claims["name"], "Jane updatedFamilyName");
        assert_eq!(claims["nickname"], "JJ");
    }

    #[test]
    fn a_put_that_writes_back_an_invitation_as_read_does_not_revoke_it() {
        let open = account(OnboardingState::CodeIssued);
        let update = Update {
            active: Some(false),
            whole: true,
            ..Update::default()
        };
        assert!(update.commands(&open, code).unwrap().is_empty());
        // The same PUT disables an active account.
        let active = account(OnboardingState::Active);
        let update = Update {
            active: Some(false),
            whole: true,
            claims: SCIM_CLAIMS
                .iter()
                .map(|(c, _)| {
                    (
                        *c,
                        active
                            .claims
                            .get(*c)
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    )
                })
                .collect(),
            ..Update::default()
        };
        assert_eq!(names(&update.commands(&active, code).unwrap()), ["disable"]);
    }

    #[test]
    fn a_home_address_is_not_kept_and_the_work_one_cannot_be_removed() {
        let open = account(OnboardingState::CodeIssued);
        let update = patch(
            json!([{"op": "Add", "path": "emails[type eq \"home\"].value", "value": "jane@home.example"}]),
            &open,
        )
        .unwrap();
        assert!(update.commands(&open, code).unwrap().is_empty());
        for op in [
            json!([{"op": "Remove", "path": "emails"}]),
            json!([{"op": "Remove", "path": "emails[type eq \"work\"]"}]),
            json!([{"op": "Replace", "path": "emails", "value": []}]),
        ] {
            let e = patch(op.clone(), &open).unwrap_err();
            assert_eq!(e.scim_type(), Some("mutability"), "{op}");
        }
    }

    #[test]
    fn external_id_and_display_name_are_replaced_and_removed() {
        let open = account(OnboardingState::CodeIssued);
        let update = patch(
            json!([
                {"op": "Add", "path": "externalId", "value": "hr-2"},
                {"op": "replace", "value": {"displayName": "JD", "name": {"givenName": "Janet"}}},
                {"op": "remove", "path": "name.familyName"},
            ]),
            &open,
        )
        .unwrap();
        let commands = update.commands(&open, code).unwrap();
        let OnboardingCommand::UpdateClaims { claims, .. } = &commands[0] else {
            panic!("{commands:?}");
        };
        assert_eq!(claims["external_id"], "hr-2");
        assert_eq!(claims["display_name"], "JD");
        assert_eq!(claims["given_name"], "Janet");
        assert!(!claims.contains_key("family_name"));
        assert_eq!(claims["name"], "Janet");
    }

    #[test]
    fn the_username_stays_and_a_password_is_refused() {
        let open = account(OnboardingState::CodeIssued);
        // Entra's documented single-valued update renames the user: refused, saying why.
        let update = patch(
            json!([{"op": "Replace", "path": "userName", "value": "5b50642d@testuser.com"}]),
            &open,
        )
        .unwrap();
        let e = update.commands(&open, code).unwrap_err();
        assert_eq!(e.scim_type(), Some("mutability"));
        // The same name again, in another case, is no change.
        let update = patch(
            json!([{"op": "replace", "path": "userName", "value": "JANE"}]),
            &open,
        )
        .unwrap();
        assert!(update.commands(&open, code).unwrap().is_empty());
        let e = patch(
            json!([{"op": "replace", "path": "password", "value": "Secret123!"}]),
            &open,
        )
        .unwrap_err();
        assert!(e.to_string().contains("never accepts a password"));
        assert!(!e.to_string().contains("Secret123"));
    }

    #[test]
    fn attributes_not_kept_are_accepted_and_junk_is_refused() {
        let open = account(OnboardingState::CodeIssued);
        let update = patch(
            json!([
                {"op": "Add", "path": "phoneNumbers[type eq \"work\"].value", "value": "+1 555"},
                {"op": "Replace", "path": "title", "value": "Engineer"},
                {"op": "Replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", "value": "7"},
            ]),
            &open,
        )
        .unwrap();
        assert!(update.commands(&open, code).unwrap().is_empty());
        for (body, scim_type) in [
            (json!({"schemas": [PATCH_OP]}), "invalidSyntax"),
            (
                json!({"schemas": [PATCH_OP], "Operations": [{"op": "jump", "path": "active"}]}),
                "invalidSyntax",
            ),
            (
                json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "active", "value": "maybe"}]}),
                "invalidValue",
            ),
            (
                json!({"schemas": [PATCH_OP], "Operations": [{"op": "remove", "path": "active"}]}),
                "mutability",
            ),
        ] {
            let e = Update::from_patch(body.to_string().as_bytes(), &open).unwrap_err();
            assert_eq!(e.scim_type(), Some(scim_type), "{body}: {e}");
        }
    }
}
