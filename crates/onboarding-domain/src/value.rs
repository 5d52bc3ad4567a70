//! Value types. Each is parsed once at the edge (`parse`) and trusted afterwards.

use std::collections::BTreeMap;
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

/// Which control characters (Unicode category Cc: U+0000 to U+001F, U+007F to U+009F) a text may
/// hold. None of them is ever needed in a name or an identifier, and PostgreSQL cannot store NUL
/// (U+0000) at all, neither in `text` nor in `jsonb`; free text may hold line breaks and tabs, as
/// any JSON text may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// A name, an identifier or a key: no control character at all.
    Name,
    /// Free text (a reason, a claim's value): tab, line feed and carriage return are allowed;
    /// every other control character is refused.
    Prose,
}

impl TextKind {
    fn allows(self, c: char) -> bool {
        !c.is_control() || (self == Self::Prose && matches!(c, '\t' | '\n' | '\r'))
    }
}

/// Refuses a `text` that holds a control character `kind` does not allow. The message names
/// `field`, the character and where it is (1-based, in characters), and says what to send.
pub fn check_text(field: &str, text: &str, kind: TextKind) -> Result<(), InvalidValue> {
    let Some((at, c)) = text.chars().enumerate().find(|(_, c)| !kind.allows(*c)) else {
        return Ok(());
    };
    let found = format!("found U+{:04X} at character {}", u32::from(c), at + 1);
    Err(invalid(match kind {
        TextKind::Name => format!(
            "{field} must not contain control characters such as NUL (U+0000) ({found}); send it without them"
        ),
        TextKind::Prose => format!(
            "{field} must not contain control characters such as NUL (U+0000), other than tab, \
             line feed and carriage return ({found}); send the text without them"
        ),
    }))
}

/// Refuses claims that hold a control character anywhere, at any depth: in a key (none allowed,
/// as in a [`TextKind::Name`]) or in a string value (only tab, line feed and carriage return,
/// as in [`TextKind::Prose`]). The message names the claim by its path, e.g.
/// `claims.address.lines[1]`.
pub fn check_claims(claims: &BTreeMap<String, serde_json::Value>) -> Result<(), InvalidValue> {
    use serde_json::Value;
    // Depth-first, in key order, so that the first problem named is always the same one.
    let mut stack: Vec<(String, &Value)> = claims
        .iter()
        .rev()
        .map(|(k, v)| {
            let path = format!("claims.{}", printable(k, 40));
            check_text(&format!("the key of {path}"), k, TextKind::Name).map(|()| (path, v))
        })
        .collect::<Result<_, _>>()?;
    while let Some((path, value)) = stack.pop() {
        match value {
            Value::String(s) => check_text(&path, s, TextKind::Prose)?,
            Value::Array(items) => stack.extend(
                items
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(i, v)| (format!("{path}[{i}]"), v)),
            ),
            Value::Object(map) => {
                let mut children = Vec::with_capacity(map.len());
                for (k, v) in map {
                    let child = format!("{path}.{}", printable(k, 40));
                    check_text(&format!("the key of {child}"), k, TextKind::Name)?;
                    children.push((child, v));
                }
                stack.extend(children.into_iter().rev());
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    Ok(())
}

/// `text` as a message may repeat it: control characters escaped (`\0`, `\n`, `\u{1b}`), so
/// the message itself can be stored, logged and read; longer than `max_chars`, it is cut there
/// and ends in `…`.
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut shown = String::with_capacity(text.len().min(max_chars * 4));
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            shown.push('…');
            break;
        }
        if c.is_control() {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Why an invitation was revoked, as an administrator wrote it: free text ([`TextKind::Prose`])
/// of at most [`RevokeReason::MAX_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeReason(String);

impl RevokeReason {
    /// The longest reason accepted, in characters.
    pub const MAX_CHARS: usize = 500;

    /// Accepts `raw` as it is, unless it is longer than [`RevokeReason::MAX_CHARS`] or holds a
    /// control character other than tab, line feed and carriage return.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(invalid(format!(
                "reason must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        check_text("reason", raw, TextKind::Prose)?;
        Ok(Self(raw.to_owned()))
    }

    /// The reason's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The reason's text, for the event that records it.
    pub fn into_string(self) -> String {
        self.0
    }
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
        check_text("username", &s, TextKind::Name)?;
        if s.chars().any(char::is_whitespace) {
            return Err(invalid("username must not contain spaces"));
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
    fn a_nul_or_another_control_character_in_a_username_is_refused_by_name() {
        for bad in ["ja\0ne", "jane\u{1}", "ja\u{7f}ne", "ja\u{85}ne", "ja\tne"] {
            let err = Username::parse(bad).unwrap_err();
            assert!(
                err.0.starts_with(
                    "username must not contain control characters such as NUL (U+0000)"
                ),
                "{bad:?}: {err}"
            );
        }
        assert!(Username::parse("ja\0ne")
            .unwrap_err()
            .0
            .contains("found U+0000 at character 3"));
    }

    #[test]
    fn names_refuse_every_control_character_and_prose_keeps_line_breaks_and_tabs() {
        assert!(check_text("f", "plain text, ünïcödé", TextKind::Name).is_ok());
        for c in ['\0', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{9f}'] {
            assert!(
                check_text("f", &format!("a{c}b"), TextKind::Name).is_err(),
                "{c:?}"
            );
        }
        assert!(check_text("f", "line one\r\nline two\tend", TextKind::Prose).is_ok());
        for c in ['\0', '\u{8}', '\u{1b}', '\u{7f}', '\u{85}'] {
            let err = check_text("reason", &format!("a{c}b"), TextKind::Prose).unwrap_err();
            assert!(err
                .0
                .starts_with("reason must not contain control characters such as NUL"));
            assert!(
                err.0
                    .contains("other than tab, line feed and carriage return"),
                "{err}"
            );
        }
    }

    #[test]
    fn claims_are_checked_at_every_depth_and_name_the_bad_claim_by_its_path() {
        let claims = |v: serde_json::Value| -> BTreeMap<String, serde_json::Value> {
            serde_json::from_value(v).unwrap()
        };
        let ok = claims(serde_json::json!({
            "name": "Jane Doe", "address": {"lines": ["Main St 1\nFlat 2", null, 3, true]}
        }));
        assert!(check_claims(&ok).is_ok());
        let err = |v| check_claims(&claims(v)).unwrap_err().0;
        assert!(err(serde_json::json!({"name": "Ja\0ne"}))
            .starts_with("claims.name must not contain control characters such as NUL (U+0000)"));
        assert!(err(serde_json::json!({"a": {"lines": ["ok", "b\0"]}}))
            .starts_with("claims.a.lines[1] must not contain"));
        // Keys too, where no control character is allowed; the key is shown escaped.
        let key = err(serde_json::json!({"a": [{"x\0y": 1}]}));
        assert!(
            key.starts_with("the key of claims.a[0].x\\0y must not contain control characters"),
            "{key}"
        );
        assert!(!key.contains('\0'));
        assert!(
            err(serde_json::json!({"bad\nkey": "v"})).starts_with("the key of claims.bad\\nkey")
        );
    }

    #[test]
    fn printable_text_has_its_control_characters_escaped_and_is_cut_to_length() {
        assert_eq!(printable("a\0b\nc\u{1b}'\"ü", 40), "a\\0b\\nc\\u{1b}'\"ü");
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(printable("abc", 3), "abc");
    }

    #[test]
    fn a_revoke_reason_keeps_line_breaks_but_not_a_nul_nor_more_than_500_characters() {
        let reason = RevokeReason::parse("left the company\nticket 42").unwrap();
        assert_eq!(reason.as_str(), "left the company\nticket 42");
        assert!(RevokeReason::parse("a\0b")
            .unwrap_err()
            .0
            .starts_with("reason must not contain control characters such as NUL (U+0000)"));
        assert!(RevokeReason::parse(&"x".repeat(500)).is_ok());
        assert_eq!(
            RevokeReason::parse(&"x".repeat(501)).unwrap_err().0,
            "reason must be at most 500 characters"
        );
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
            "ja\0ne@pickup.example",
            "jane@pick\0up.example",
            "\"ja\0ne\"@pickup.example",
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
