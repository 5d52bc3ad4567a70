//! `[password_policy]` and `[password_hashing]`: what a password must be, and what hashing it
//! costs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordPolicySettings {
    pub min_length: usize,
    pub max_length: usize,
    /// Lowest zxcvbn strength score (0 to 4) accepted.
    pub min_strength: u8,
    /// A list of common passwords to refuse, one a line, read once when the store is opened.
    /// Unset: no list check; zxcvbn's score alone judges common passwords.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_passwords_file: Option<PathBuf>,
}

impl Default for PasswordPolicySettings {
    fn default() -> Self {
        Self {
            min_length: 8,
            max_length: 128,
            min_strength: 3,
            common_passwords_file: None,
        }
    }
}

impl PasswordPolicySettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.min_length < 1 || self.max_length < 64 || self.min_length > self.max_length {
            return Err(ConfigError::Invalid(format!(
                "password_policy: min_length ({}) must be at least 1 and max_length ({}) at least 64 (NIST SP 800-63B)",
                self.min_length, self.max_length
            )));
        }
        if self.min_strength > 4 {
            return Err(ConfigError::Invalid(format!(
                "password_policy.min_strength ({}) must be between 0 and 4 (zxcvbn scores)",
                self.min_strength
            )));
        }
        Ok(())
    }
}

/// argon2id cost. The defaults are OWASP's minimum; raise them as hardware allows (hashes record
/// their parameters, so old ones still verify).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordHashingSettings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for PasswordHashingSettings {
    fn default() -> Self {
        Self {
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl PasswordHashingSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_kib > 4_194_304 || self.iterations > 100 || self.parallelism > 64 {
            return Err(ConfigError::Invalid(format!(
                "password_hashing: memory_kib ({}) must be at most 4194304 (4 GiB), iterations ({}) at most 100 and parallelism ({}) at most 64",
                self.memory_kib, self.iterations, self.parallelism
            )));
        }
        if self.memory_kib < 19_456 || self.iterations < 2 || self.parallelism < 1 {
            return Err(ConfigError::Invalid(format!(
                "password_hashing: memory_kib ({}) must be at least 19456, iterations ({}) at least 2 and parallelism ({}) at least 1 (OWASP's argon2id minimum)",
                self.memory_kib, self.iterations, self.parallelism
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::*;

    #[test]
    fn the_common_password_list_is_off_unless_a_file_is_named() {
        let s = load(MINIMAL).unwrap();
        assert_eq!(s.password_policy.common_passwords_file, None);
        let s = load(&format!(
            "{MINIMAL}\n[password_policy]\ncommon_passwords_file = \"/srv/onboard/common-passwords.txt\"\n"
        ))
        .unwrap();
        assert_eq!(
            s.password_policy.common_passwords_file.as_deref(),
            Some(std::path::Path::new("/srv/onboard/common-passwords.txt"))
        );
    }
}
