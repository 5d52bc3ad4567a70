//! Value types. Each is parsed once at the edge (`parse`) and trusted afterwards.

use std::fmt;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Why a wire value could not become a value type. The message says what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(msg: impl Into<String>) -> InvalidValue {
    InvalidValue(msg.into())
}

/// A user name as the administrator typed it (`Jane`), Unicode-normalised (NFKC).
/// Uniqueness is decided on [`Username::key`], which ignores case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    /// The longest username accepted, in characters after normalisation.
    pub const MAX_CHARS: usize = 128;

    /// Trims and NFKC-normalises `raw`, then refuses an empty or overlong name, spaces, control
    /// characters and `/` (WSO2's separator between domain and name).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s: String = raw.trim().nfkc().collect();
        if s.is_empty() {
            return Err(invalid("username must not be empty"));
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(invalid(format!(
                "username must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid(
                "username must not contain spaces or control characters",
            ));
        }
        if s.contains('/') {
            return Err(invalid(
                "username must not contain '/' (it separates the user store domain); send the domain in the `domain` field",
            ));
        }
        Ok(Self(s))
    }

    /// The name as given at invitation (normalised, case kept), for display and events.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-insensitive key that makes a username unique within its domain.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user store domain, WSO2 style (`PRIMARY`, `EMPLOYEES`): upper case ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct UserDomain(String);

impl UserDomain {
    /// The domain an invitation gets when the caller names none, as in WSO2.
    pub const PRIMARY: &'static str = "PRIMARY";

    /// The default domain, [`UserDomain::PRIMARY`].
    pub fn primary() -> Self {
        Self(Self::PRIMARY.to_owned())
    }

    /// Trims and upper-cases `raw`, then accepts 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim().to_ascii_uppercase();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if ok {
            Ok(Self(s))
        } else {
            Err(invalid(
                "domain must be 1 to 64 letters, digits, '-', '_' or '.', for example PRIMARY",
            ))
        }
    }

    /// The domain in upper case, as stored and compared.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address (RFC 5322 `addr-spec`, internationalised domains allowed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// The longest address accepted, in bytes (the limit of an SMTP forward path).
    pub const MAX_LEN: usize = 254;

    /// Trims `raw` and accepts a bare `local-part@domain` whose domain is fully qualified (or an
    /// address literal); display names such as `Jane <jane@…>` are refused.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(invalid("email must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(invalid(format!(
                "email must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        let parsed = email_address::EmailAddress::parse_with_options(
            s,
            email_address::Options::default().without_display_text(),
        )
        .map_err(|e| invalid(format!("email is not a valid address ({e}); send it as local-part@domain, for example jane@pickup.example")))?;
        if !parsed.domain().contains('.') && !parsed.domain().starts_with('[') {
            return Err(invalid(
                "email domain must be a fully qualified domain name, for example pickup.example",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The whole address, for sending mail. Personal data: do not log it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the last `@`; the password policy refuses passwords that contain it.
    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map(|(l, _)| l).unwrap_or(&self.0)
    }

    /// The domain alone: safe to log, unlike the whole address.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

/// Shows only the domain: addresses are personal data and do not belong in logs.
impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress(***@{})", self.domain())
    }
}

/// A BCP 47 language tag such as `en`, `en-GB` or `pt-BR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Locale(String);

impl Locale {
    /// Trims `raw`, turns `_` into `-` (`pt_BR` becomes `pt-BR`) and checks the tag's shape: a
    /// 2- or 3-letter language, then subtags of 1 to 8 letters or digits.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim().replace('_', "-");
        let mut parts = s.split('-');
        let lang = parts.next().unwrap_or("");
        let lang_ok =
            (2..=3).contains(&lang.len()) && lang.chars().all(|c| c.is_ascii_alphabetic());
        let rest_ok = parts
            .all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()));
        if lang_ok && rest_ok && s.len() <= 35 {
            Ok(Self(s))
        } else {
            Err(invalid(
                "locale must be a language tag such as en, en-GB or pt-BR",
            ))
        }
    }

    /// The tag with `-` separators, from which the mail templates pick a language.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IANA time zone name such as `Europe/Berlin`, for rendering times in the user's mails.
/// Stored in its canonical spelling (`europe/berlin` is accepted and stored as `Europe/Berlin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct TimeZone(String);

impl TimeZone {
    /// Accepts a name from the IANA database, ignoring case, and keeps its canonical spelling.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let raw = raw.trim();
        let tz: chrono_tz::Tz = raw.parse().or_else(|_| {
            chrono_tz::TZ_VARIANTS
                .iter()
                .find(|tz| tz.name().eq_ignore_ascii_case(raw))
                .copied()
                .ok_or_else(|| {
                    invalid("time_zone must be an IANA time zone name such as Europe/Berlin or America/New_York")
                })
        })?;
        Ok(Self(tz.name().to_owned()))
    }

    /// The canonical IANA name, for `chrono_tz` and for display.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_keep_their_case_but_compare_without_it() {
        let jane = Username::parse("  Jane ").unwrap();
        assert_eq!(jane.as_str(), "Jane");
        assert_eq!(jane.key(), Username::parse("JANE").unwrap().key());
    }

    #[test]
    fn usernames_with_spaces_slashes_or_nothing_are_refused() {
        assert!(Username::parse("").is_err());
        assert!(Username::parse("ja ne").is_err());
        assert!(Username::parse("PRIMARY/Jane").is_err());
        assert!(Username::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn emails_with_special_characters_are_accepted() {
        for ok in [
            "jane@pickup.example",
            "jane+onboarding@pickup.example",
            "ja$ne@pickup.example",
            "o'brien@pickup.example",
            "jane!urgent@pickup.example",
            "\"john doe\"@pickup.example",
            "\"john@doe\"@pickup.example",
            "jane@bücher.example",
            "jörg@bücher.example",
            "jane@xn--bcher-kva.example",
        ] {
            assert!(EmailAddress::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn malformed_emails_are_refused_with_a_hint() {
        for bad in [
            "",
            "jane",
            "jane@",
            "@pickup.example",
            "jane@localhost",
            "Jane <jane@pickup.example>",
            "john doe@pickup.example",
            "jane@@pickup.example",
            "jane..doe@pickup.example",
            "\"unterminated@pickup.example",
            "jane@pick up.example",
        ] {
            let err = EmailAddress::parse(bad).unwrap_err();
            assert!(err.0.contains("email"), "{bad}: {err}");
        }
    }

    #[test]
    fn debug_output_of_an_email_hides_the_local_part() {
        let e = EmailAddress::parse("jane@pickup.example").unwrap();
        assert_eq!(format!("{e:?}"), "EmailAddress(***@pickup.example)");
    }

    #[test]
    fn domains_are_upper_cased_and_checked() {
        assert_eq!(UserDomain::parse("primary").unwrap().as_str(), "PRIMARY");
        assert!(UserDomain::parse("no spaces").is_err());
    }

    #[test]
    fn locales_accept_language_tags() {
        assert_eq!(Locale::parse("pt_BR").unwrap().as_str(), "pt-BR");
        assert!(Locale::parse("english please").is_err());
    }

    #[test]
    fn time_zones_are_iana_names_in_canonical_spelling() {
        assert_eq!(
            TimeZone::parse(" europe/berlin ").unwrap().as_str(),
            "Europe/Berlin"
        );
        assert_eq!(TimeZone::parse("UTC").unwrap().as_str(), "UTC");
        assert!(TimeZone::parse("Mars/Olympus_Mons").is_err());
        assert!(TimeZone::parse("").is_err());
    }
}
