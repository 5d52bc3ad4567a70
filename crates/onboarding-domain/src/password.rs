//! Passwords: the secret wrapper, the policy that decides what is acceptable, and the hash.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::value::{EmailAddress, Username};

/// A password as the user typed it, NFKC-normalised (NIST SP 800-63B §5.1.1.2). Never printed.
pub struct Password(SecretString);

impl Password {
    /// Wraps what the user typed, normalised so that the same password typed on another
    /// keyboard is the same password.
    pub fn new(raw: &str) -> Self {
        Self(SecretString::from(raw.nfkc().collect::<String>()))
    }

    /// The password's text, for the policy's checks and the hasher only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The password-hashing algorithm a hash was made with. The engine makes argon2id hashes only
/// (RFC 9106's recommendation); a PHC string naming another algorithm is refused as unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// argon2id (RFC 9106).
    Argon2id,
}

impl HashAlgorithm {
    /// The algorithm's name in a PHC string and in the `credentials` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Argon2id => "argon2id",
        }
    }
}

/// How a password hash was made: the algorithm and its cost parameters, never the salt or the
/// hash. `PasswordSet` records this; a verifier compares it with the configured cost to decide
/// whether a correct password should be hashed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HashScheme {
    /// The algorithm.
    pub algorithm: HashAlgorithm,
    /// The algorithm's version (argon2: 19, i.e. 0x13).
    pub version: u32,
    /// Memory cost in KiB (argon2's `m`).
    pub memory_kib: u32,
    /// Number of passes (argon2's `t`).
    pub iterations: u32,
    /// Degree of parallelism (argon2's `p`).
    pub parallelism: u32,
}

impl HashScheme {
    /// Whether a hash made this way costs less than `target` in any parameter, or was made with
    /// an older version: a correct password verified against it should be hashed again with
    /// `target`.
    pub fn is_weaker_than(&self, target: &HashScheme) -> bool {
        self.algorithm != target.algorithm
            || self.version < target.version
            || self.memory_kib < target.memory_kib
            || self.iterations < target.iterations
            || self.parallelism < target.parallelism
    }

    /// Reads the algorithm and parameters out of a PHC string
    /// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
    pub fn of_phc(phc: &str) -> Result<Self, UnreadableHash> {
        let parsed = password_hash::PasswordHash::new(phc).map_err(|_| UnreadableHash::NotPhc)?;
        let algorithm = match parsed.algorithm.as_str() {
            "argon2id" => HashAlgorithm::Argon2id,
            other => return Err(UnreadableHash::Algorithm(other.to_owned())),
        };
        let param = |name: &'static str| {
            parsed
                .params
                .get_decimal(name)
                .ok_or(UnreadableHash::MissingParameter(name))
        };
        Ok(Self {
            algorithm,
            // argon2 writes `v=19`; a PHC string without it means version 16 (0x10).
            version: parsed.version.unwrap_or(0x10),
            memory_kib: param("m")?,
            iterations: param("t")?,
            parallelism: param("p")?,
        })
    }
}

impl fmt::Display for HashScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v={} m={} t={} p={}",
            self.algorithm.as_str(),
            self.version,
            self.memory_kib,
            self.iterations,
            self.parallelism
        )
    }
}

/// A string that is not a PHC string of a known algorithm with its cost parameters. The message
/// never repeats the string (it may be a hash).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnreadableHash {
    /// Not in PHC string format at all.
    #[error("not a PHC string")]
    NotPhc,
    /// A PHC string of an algorithm the engine does not use.
    #[error("the hash's algorithm `{0}` is not argon2id")]
    Algorithm(String),
    /// A cost parameter is missing.
    #[error("the hash has no `{0}` parameter")]
    MissingParameter(&'static str),
}

/// A password hash in PHC string format (`$argon2id$v=19$m=…`), read once into its
/// [`HashScheme`]. It records its own parameters, so they can be raised later. It travels from
/// the hasher to the `credentials` table and goes into no event payload, no outbox row and no
/// Kafka record (docs/adr/0018).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct PasswordHash {
    phc: String,
    scheme: HashScheme,
}

impl PasswordHash {
    /// Reads the PHC string a hasher produced (or the `credentials` table holds).
    pub fn parse(phc: String) -> Result<Self, UnreadableHash> {
        let scheme = HashScheme::of_phc(&phc)?;
        Ok(Self { phc, scheme })
    }

    /// The PHC string, which a verifier parses (algorithm, parameters, salt and hash).
    pub fn as_phc(&self) -> &str {
        &self.phc
    }

    /// The algorithm and cost the hash was made with.
    pub fn scheme(&self) -> HashScheme {
        self.scheme
    }
}

impl From<PasswordHash> for String {
    fn from(hash: PasswordHash) -> Self {
        hash.phc
    }
}

impl TryFrom<String> for PasswordHash {
    type Error = UnreadableHash;

    fn try_from(phc: String) -> Result<Self, UnreadableHash> {
        Self::parse(phc)
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash({})", self.scheme)
    }
}

/// The rule a refused password broke, with a message the page and the API show as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum PasswordRuleViolation {
    /// Fewer characters than the policy's minimum.
    #[error("The password is too short: use at least {min} characters.")]
    TooShort {
        /// The minimum, in characters.
        min: usize,
    },
    /// More characters than the policy's maximum.
    #[error("The password is too long: use at most {max} characters.")]
    TooLong {
        /// The maximum, in characters.
        max: usize,
    },
    /// The password contains the username, ignoring case.
    #[error("The password contains your username; choose one that does not.")]
    ContainsUsername,
    /// The password contains the email address's local part, ignoring case.
    #[error(
        "The password contains the first part of your email address; choose one that does not."
    )]
    ContainsEmail,
    /// The password is on the shipped list of common passwords.
    #[error("The password is one of the most common passwords, which attackers try first; choose a less predictable one.")]
    Common,
    /// The password contains a word of the user's name claims.
    #[error("The password contains your name; choose one that does not.")]
    ContainsName,
    /// zxcvbn estimates the password easy to guess.
    #[error("The password is too easy to guess ({hint}). Longer passphrases of unrelated words are strong and easy to remember.")]
    TooWeak {
        /// zxcvbn's score for the password (0 to 4).
        score: u8,
        /// The lowest score the policy accepts.
        min: u8,
        /// zxcvbn's warning, telling the user what made it guessable.
        hint: String,
    },
}

/// A list of common passwords the policy refuses, compared in lower case after NFKC
/// normalisation. The domain reads no file: whoever configures the policy reads the list (the
/// repository's `data/common-passwords.txt` is one, CC BY-SA 3.0, see its README) and parses it
/// here. Cloning shares the set.
#[derive(Clone, Default)]
pub struct CommonPasswords(Arc<HashSet<String>>);

impl CommonPasswords {
    /// One password a line; surrounding white space and blank lines are ignored, case is not
    /// significant.
    pub fn from_lines(text: &str) -> Self {
        Self(Arc::new(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| l.nfkc().collect::<String>().to_lowercase())
                .collect(),
        ))
    }

    /// How many distinct passwords the list holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// An empty list refuses nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, lower: &str) -> bool {
        self.0.contains(lower)
    }
}

impl fmt::Debug for CommonPasswords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommonPasswords({} entries)", self.len())
    }
}

impl PartialEq for CommonPasswords {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for CommonPasswords {}

/// What a password must satisfy. No composition rules: length, context and a blocklist (NIST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Fewest characters accepted (NIST asks for at least 8).
    pub min_length: usize,
    /// Most characters accepted: long passphrases are welcome, unbounded input is not.
    pub max_length: usize,
    /// Lowest zxcvbn score (0 = guessable in seconds … 4 = very hard) accepted.
    pub min_strength: u8,
    /// Passwords refused as `Common`. Empty (the default): no list check, and only zxcvbn's
    /// score, whose own dictionaries rate the most common passwords 0 or 1, stands in for it.
    pub common_passwords: CommonPasswords,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 8,
            max_length: 128,
            min_strength: 3,
            common_passwords: CommonPasswords::default(),
        }
    }
}

/// Who the password must not be built from.
pub struct PasswordContext<'a> {
    /// The account's username.
    pub username: &'a Username,
    /// The account's address; its local part is checked.
    pub email: &'a EmailAddress,
    /// Display name parts (from claims such as `name`, `given_name`, `family_name`).
    pub names: Vec<&'a str>,
}

impl PasswordPolicy {
    /// Contexts shorter than this are not checked for containment: every password would match.
    const MIN_CONTEXT: usize = 3;

    /// Checks a password against every rule, cheapest first, and names the first one it breaks.
    pub fn check(
        &self,
        password: &Password,
        ctx: &PasswordContext<'_>,
    ) -> Result<(), PasswordRuleViolation> {
        let (username, email) = (ctx.username, ctx.email);
        let pw = password.expose();
        let len = pw.chars().count();
        if len < self.min_length {
            return Err(PasswordRuleViolation::TooShort {
                min: self.min_length,
            });
        }
        if len > self.max_length {
            return Err(PasswordRuleViolation::TooLong {
                max: self.max_length,
            });
        }
        let lower = pw.to_lowercase();
        let name = username.as_str().to_lowercase();
        if name.chars().count() >= Self::MIN_CONTEXT && lower.contains(&name) {
            return Err(PasswordRuleViolation::ContainsUsername);
        }
        let local = email.local_part().to_lowercase();
        if local.chars().count() >= Self::MIN_CONTEXT && lower.contains(&local) {
            return Err(PasswordRuleViolation::ContainsEmail);
        }
        if self.common_passwords.contains(&lower) {
            return Err(PasswordRuleViolation::Common);
        }
        let names: Vec<String> = ctx
            .names
            .iter()
            .flat_map(|n| n.split_whitespace())
            .map(|n| n.nfkc().collect::<String>().to_lowercase())
            .filter(|n| n.chars().count() >= Self::MIN_CONTEXT)
            .collect();
        if names.iter().any(|n| lower.contains(n.as_str())) {
            return Err(PasswordRuleViolation::ContainsName);
        }
        if self.min_strength > 0 {
            let mut inputs: Vec<&str> = vec![username.as_str(), email.local_part()];
            inputs.extend(names.iter().map(String::as_str));
            // zxcvbn's cost grows with length; the first 100 characters decide well enough.
            let head: String = pw.chars().take(100).collect();
            let estimate = zxcvbn::zxcvbn(&head, &inputs);
            let score = u8::from(estimate.score());
            if score < self.min_strength {
                let hint = estimate
                    .feedback()
                    .and_then(|f| f.warning())
                    .map(|w| w.to_string())
                    .unwrap_or_else(|| "it follows a common pattern".to_owned());
                return Err(PasswordRuleViolation::TooWeak {
                    score,
                    min: self.min_strength,
                    hint: hint.trim_end_matches('.').to_owned(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default policy with a small list of its own, as a deployment's file would give it.
    fn policy() -> PasswordPolicy {
        PasswordPolicy {
            common_passwords: CommonPasswords::from_lines("password1\n  ILoveYou \n\nqwertyuiop\n"),
            ..PasswordPolicy::default()
        }
    }

    fn check(pw: &str) -> Result<(), PasswordRuleViolation> {
        let username = Username::parse("Jane").unwrap();
        let email = EmailAddress::parse("jane.doe@pickup.example").unwrap();
        policy().check(
            &Password::new(pw),
            &PasswordContext {
                username: &username,
                email: &email,
                names: vec!["Jane Lindqvist"],
            },
        )
    }

    #[test]
    fn passwords_with_the_display_name_are_refused() {
        assert_eq!(
            check("lindqvist-rides-cabs-9"),
            Err(PasswordRuleViolation::ContainsName)
        );
    }

    #[test]
    fn guessable_passwords_are_refused_with_a_hint_and_strong_ones_pass() {
        match check("zzzzzzzzzzzzzzzz") {
            Err(PasswordRuleViolation::TooWeak {
                score,
                min: 3,
                hint,
            }) => {
                assert!(score < 3);
                assert!(!hint.is_empty());
            }
            other => panic!("expected TooWeak, got {other:?}"),
        }
        for strong in [
            "correct horse battery staple",
            "a quiet cab at midnight",
            "Pickup rides at dawn 42",
            "another fine passphrase",
        ] {
            assert_eq!(check(strong), Ok(()), "{strong}");
        }
    }

    #[test]
    fn a_long_unusual_password_is_accepted() {
        assert_eq!(check("correct horse battery staple"), Ok(()));
        let long = "Seven taxis wait by the harbour; four of them are green, three blue!!";
        assert_eq!(long.chars().count(), 69);
        assert_eq!(
            check(long),
            Ok(()),
            "more than 64 characters must be allowed"
        );
    }

    #[test]
    fn short_and_overlong_passwords_are_refused() {
        assert_eq!(
            check("Zq3!x"),
            Err(PasswordRuleViolation::TooShort { min: 8 })
        );
        assert_eq!(
            check(&"a9".repeat(65)),
            Err(PasswordRuleViolation::TooLong { max: 128 })
        );
    }

    #[test]
    fn passwords_built_from_the_username_or_email_are_refused() {
        assert_eq!(
            check("xxJANExx2024"),
            Err(PasswordRuleViolation::ContainsUsername)
        );
        assert_eq!(
            check("my-jane.doe-pw"),
            Err(PasswordRuleViolation::ContainsUsername)
        );
        let (js, smith) = (
            Username::parse("js").unwrap(),
            EmailAddress::parse("mrs.smith@pickup.example").unwrap(),
        );
        assert_eq!(
            PasswordPolicy::default().check(
                &Password::new("mrs.smith.rules"),
                &PasswordContext {
                    username: &js,
                    email: &smith,
                    names: vec![]
                }
            ),
            Err(PasswordRuleViolation::ContainsEmail)
        );
    }

    #[test]
    fn common_passwords_are_refused_whatever_their_case() {
        assert_eq!(policy().common_passwords.len(), 3);
        assert_eq!(check("password1"), Err(PasswordRuleViolation::Common));
        assert_eq!(check("Iloveyou"), Err(PasswordRuleViolation::Common));
        assert_eq!(check("QWERTYUIOP"), Err(PasswordRuleViolation::Common));
    }

    #[test]
    fn without_a_list_zxcvbn_still_refuses_the_most_common_passwords() {
        let username = Username::parse("Jane").unwrap();
        let email = EmailAddress::parse("jane.doe@pickup.example").unwrap();
        let ctx = PasswordContext {
            username: &username,
            email: &email,
            names: vec![],
        };
        let policy = PasswordPolicy::default();
        assert!(policy.common_passwords.is_empty());
        for pw in ["password1", "iloveyou", "qwertyuiop", "1234567890"] {
            match policy.check(&Password::new(pw), &ctx) {
                Err(PasswordRuleViolation::TooWeak { score, .. }) => assert!(score <= 1, "{pw}"),
                other => panic!("{pw}: expected TooWeak, got {other:?}"),
            }
        }
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert_eq!(
            check("ééééééé"),
            Err(PasswordRuleViolation::TooShort { min: 8 })
        );
    }

    #[test]
    fn passwords_and_hashes_are_never_printed() {
        assert!(!format!("{:?}", Password::new("hunter2hunter2")).contains("hunter2"));
        let h = PasswordHash::parse(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
        )
        .unwrap();
        assert_eq!(
            format!("{h:?}"),
            "PasswordHash(argon2id v=19 m=19456 t=2 p=1)"
        );
    }

    #[test]
    fn a_hash_is_read_once_into_its_algorithm_and_cost() {
        let h = PasswordHash::parse(
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
        )
        .unwrap();
        let scheme = h.scheme();
        assert_eq!(
            scheme,
            HashScheme {
                algorithm: HashAlgorithm::Argon2id,
                version: 19,
                memory_kib: 65536,
                iterations: 3,
                parallelism: 4,
            }
        );
        assert_eq!(
            PasswordHash::parse("$scrypt$ln=16,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into()),
            Err(UnreadableHash::Algorithm("scrypt".into()))
        );
        for junk in ["not a hash", "$2b$12$abcdefghijklmnopqrstuv"] {
            assert_eq!(
                PasswordHash::parse(junk.into()),
                Err(UnreadableHash::NotPhc)
            );
        }
        assert_eq!(
            PasswordHash::parse("$argon2id$v=19$t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into()),
            Err(UnreadableHash::MissingParameter("m"))
        );
    }

    #[test]
    fn a_hash_is_weaker_when_any_cost_is_below_the_target() {
        let base = HashScheme {
            algorithm: HashAlgorithm::Argon2id,
            version: 19,
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
        };
        assert!(!base.is_weaker_than(&base));
        for raised in [
            HashScheme {
                memory_kib: 65536,
                ..base
            },
            HashScheme {
                iterations: 3,
                ..base
            },
            HashScheme {
                parallelism: 2,
                ..base
            },
        ] {
            assert!(base.is_weaker_than(&raised), "{raised}");
            // Lowering the configured cost never rehashes a stronger hash.
            assert!(!raised.is_weaker_than(&base), "{raised}");
        }
        assert!(HashScheme {
            version: 16,
            ..base
        }
        .is_weaker_than(&base));
    }
}
