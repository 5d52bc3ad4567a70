//! One reading of an invitation for every way in: the REST API, SCIM, Kafka requests, bulk rows
//! and the CLI each take their own wire shape apart, then hand the text fields to
//! [`InvitationFields::validate`], so that the same input is accepted or refused the same way
//! whichever door it came through.

use std::collections::BTreeMap;

use onboarding_config::UserOnboarding;
use onboarding_domain::value::{
    check_claims, check_text, EmailAddress, InvalidValue, Locale, TextKind, TimeZone, UserDomain,
    Username,
};

/// An invitation to record, already parsed.
#[derive(Debug, Clone)]
pub struct Invitation {
    pub username: Username,
    pub email: EmailAddress,
    pub domain: UserDomain,
    pub locale: Option<Locale>,
    pub time_zone: Option<TimeZone>,
    pub claims: BTreeMap<String, serde_json::Value>,
    pub validity_minutes: i64,
}

/// An invitation's fields as they arrived, not yet checked. An optional text field that is
/// absent, empty or only spaces means "not given" (a CSV cell cannot say null, and a form field
/// left empty is not a request for an empty locale).
#[derive(Debug, Clone, Default)]
pub struct InvitationFields<'a> {
    pub username: Option<&'a str>,
    pub email: Option<&'a str>,
    /// The user store domain; `PRIMARY` when not given.
    pub domain: Option<&'a str>,
    pub locale: Option<&'a str>,
    pub time_zone: Option<&'a str>,
    /// Minutes the code stays valid; the configured default when not given.
    pub code_validity_minutes: Option<i64>,
    pub claims: BTreeMap<String, serde_json::Value>,
}

/// What is wrong with an invitation, by field (`username`, `email`, `domain`, `locale`,
/// `time_zone`, `code_validity_minutes`, `claims`). Each message says what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldProblems(pub BTreeMap<&'static str, String>);

impl std::fmt::Display for FieldProblems {
    /// `field: message; field: message`, for channels that answer with one line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (field, message) in &self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{field}: {message}")?;
        }
        Ok(())
    }
}

/// A field's value: `Ok(None)` when not given, `Err(())` when a problem was noted. No field
/// holds a control character ([`TextKind::Name`]), whatever its value type would say.
fn read<T>(
    problems: &mut BTreeMap<&'static str, String>,
    field: &'static str,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
) -> Result<Option<T>, ()> {
    match raw.filter(|s| !s.trim().is_empty()) {
        None => Ok(None),
        Some(s) => check_text(field, s, TextKind::Name)
            .and_then(|()| parse(s))
            .map(Some)
            .map_err(|e| {
                problems.insert(field, e.0);
            }),
    }
}

/// A required field's value, noting "is required" when it is not given.
fn require<T>(
    problems: &mut BTreeMap<&'static str, String>,
    field: &'static str,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
) -> Result<T, ()> {
    read(problems, field, raw, parse)?.ok_or_else(|| {
        problems.insert(field, "is required".to_owned());
    })
}

/// The minutes a new code stays valid: `requested`, when it lies within the configured bounds, or
/// the configured default. Invitations and resends both ask here.
pub fn code_validity(rules: &UserOnboarding, requested: Option<i64>) -> Result<i64, String> {
    let bounds = rules.validity_bounds();
    match requested {
        None => Ok(rules.ask_password_email_validity),
        Some(m) if bounds.contains(&m) => Ok(m),
        Some(_) => Err(format!(
            "must be between {} and {} minutes",
            bounds.start(),
            bounds.end()
        )),
    }
}

impl InvitationFields<'_> {
    /// Checks every field (all problems are reported, not only the first) against the value
    /// types and the configured bounds for the code's validity. No text field may hold a control
    /// character; the claims' keys neither, and their string values only tab, line feed and
    /// carriage return (`check_claims`): PostgreSQL cannot store a NUL, and the rest has no
    /// business in a name.
    pub fn validate(self, rules: &UserOnboarding) -> Result<Invitation, FieldProblems> {
        let mut problems = BTreeMap::new();
        let p = &mut problems;
        let username = require(p, "username", self.username, Username::parse);
        let email = require(p, "email", self.email, EmailAddress::parse);
        let domain = read(p, "domain", self.domain, UserDomain::parse);
        let locale = read(p, "locale", self.locale, Locale::parse);
        let time_zone = read(p, "time_zone", self.time_zone, TimeZone::parse);
        let validity_minutes = code_validity(rules, self.code_validity_minutes)
            .map_err(|message| p.insert("code_validity_minutes", message))
            .unwrap_or_default();
        if let Err(e) = check_claims(&self.claims) {
            p.insert("claims", e.0);
        }
        match (username, email, domain, locale, time_zone) {
            (Ok(username), Ok(email), Ok(domain), Ok(locale), Ok(time_zone))
                if problems.is_empty() =>
            {
                Ok(Invitation {
                    username,
                    email,
                    domain: domain.unwrap_or_else(UserDomain::primary),
                    locale,
                    time_zone,
                    claims: self.claims,
                    validity_minutes,
                })
            }
            _ => Err(FieldProblems(problems)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> UserOnboarding {
        UserOnboarding::default()
    }

    #[test]
    fn blank_optional_fields_mean_not_given_and_the_defaults_apply() {
        let invitation = InvitationFields {
            username: Some("jane"),
            email: Some("jane@example.com"),
            domain: Some(" "),
            locale: Some(""),
            time_zone: Some(""),
            ..Default::default()
        }
        .validate(&rules())
        .unwrap();
        assert_eq!(invitation.domain.as_str(), "PRIMARY");
        assert!(invitation.locale.is_none() && invitation.time_zone.is_none());
        assert_eq!(
            invitation.validity_minutes,
            rules().ask_password_email_validity
        );
    }

    #[test]
    fn every_problem_is_named_by_its_field() {
        let problems = InvitationFields {
            username: Some("   "),
            email: Some("not an address"),
            domain: Some("no spaces"),
            locale: Some("not-a-locale-at-all!"),
            time_zone: Some("Mars/Olympus"),
            code_validity_minutes: Some(0),
            ..Default::default()
        }
        .validate(&rules())
        .unwrap_err();
        let fields: Vec<&str> = problems.0.keys().copied().collect();
        assert_eq!(
            fields,
            [
                "code_validity_minutes",
                "domain",
                "email",
                "locale",
                "time_zone",
                "username"
            ]
        );
        assert_eq!(problems.0["username"], "is required");
        assert!(problems
            .to_string()
            .starts_with("code_validity_minutes: must be between 5 and "));
    }

    #[test]
    fn a_nul_is_refused_in_every_text_field_and_in_the_claims_by_name() {
        let nul = "x\0y";
        let claims = [("note".to_owned(), serde_json::json!({ "k": nul }))].into();
        let problems = InvitationFields {
            username: Some(nul),
            email: Some("ja\0ne@pickup.example"),
            domain: Some(nul),
            locale: Some(nul),
            time_zone: Some(nul),
            claims,
            ..Default::default()
        }
        .validate(&rules())
        .unwrap_err();
        for field in ["username", "email", "domain", "locale", "time_zone"] {
            assert!(
                problems.0[field].starts_with(&format!(
                    "{field} must not contain control characters such as NUL (U+0000)"
                )),
                "{field}: {}",
                problems.0[field]
            );
        }
        assert!(problems.0["claims"].starts_with("claims.note.k must not contain"));
        // A line break in a claim's text is fine; in a key it is not.
        let text = [("address".to_owned(), serde_json::json!("Main St 1\nBerlin"))].into();
        assert!(InvitationFields {
            username: Some("jane"),
            email: Some("jane@pickup.example"),
            claims: text,
            ..Default::default()
        }
        .validate(&rules())
        .is_ok());
        let key = [("add\nress".to_owned(), serde_json::json!("x"))].into();
        let problems = InvitationFields {
            username: Some("jane"),
            email: Some("jane@pickup.example"),
            claims: key,
            ..Default::default()
        }
        .validate(&rules())
        .unwrap_err();
        assert_eq!(problems.0.keys().copied().collect::<Vec<_>>(), ["claims"]);
    }

    #[test]
    fn a_missing_email_is_required_and_a_given_domain_is_kept() {
        let problems = InvitationFields {
            username: Some("jane"),
            domain: Some("hr"),
            ..Default::default()
        }
        .validate(&rules())
        .unwrap_err();
        assert_eq!(problems.to_string(), "email: is required");
        let invitation = InvitationFields {
            username: Some("jane"),
            email: Some("jane@example.com"),
            domain: Some("hr"),
            code_validity_minutes: Some(30),
            ..Default::default()
        }
        .validate(&rules())
        .unwrap();
        assert_eq!(invitation.domain.as_str(), "HR");
        assert_eq!(invitation.validity_minutes, 30);
    }
}
