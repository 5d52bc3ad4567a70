//! `[user_store]`: the directory that active accounts are provisioned into, with WSO2's
//! `deployment.toml` keys (`type`, `connection_url`, `connection_name`, `connection_password`,
//! `base_dn`, and `[user_store.properties]`). Absent, nothing is provisioned.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{de, Deserialize, Deserializer};

use crate::ConfigError;

/// The user store, as WSO2's primary `[user_store]` of type `read_write_ldap_unique_id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserStoreSettings {
    /// The user store manager; `read_write_ldap_unique_id` (an LDAP directory the engine writes
    /// to) is the one supported.
    #[serde(rename = "type")]
    pub kind: UserStoreType,
    /// `ldap://host:port` or `ldaps://host:port` (TLS from the first byte); StartTLS on an
    /// `ldap://` URL with `properties.StartTLSEnabled`.
    pub connection_url: LdapUrl,
    /// The DN the engine binds as to write entries (WSO2's `ConnectionName`).
    pub connection_name: String,
    /// Its password; or `connection_password_file`, or `ONBOARD__USER_STORE__CONNECTION_PASSWORD`.
    /// After loading it holds the file's contents.
    #[serde(default)]
    pub connection_password: Option<SecretString>,
    /// A file holding the password (a mounted secret); one trailing newline is ignored.
    #[serde(default)]
    pub connection_password_file: Option<PathBuf>,
    /// The DN under which user entries are made (WSO2's "User Search Base" for
    /// `read_write_ldap_unique_id`), e.g. `ou=Users,dc=pickup,dc=example`.
    pub base_dn: String,
    /// A PEM file of the certificates (a private CA) trusted for the directory's TLS
    /// certificate (`ldaps://` or StartTLS). Unset: the system's trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The provisioner's Kafka consumer group.
    #[serde(default = "default_group")]
    pub consumer_group: String,
    /// WSO2's user store properties, by their WSO2 names.
    #[serde(default)]
    pub properties: UserStoreProperties,
    /// Invitation claims written as directory attributes: claim name → attribute name. Merged
    /// with the defaults `name = "cn"`, `given_name = "givenName"`, `family_name = "sn"`.
    #[serde(default)]
    pub claim_mapping: BTreeMap<String, String>,
}

fn default_group() -> String {
    "onboard-provisioner".to_owned()
}

fn default_claim_mapping() -> BTreeMap<String, String> {
    [
        ("name", "cn"),
        ("given_name", "givenName"),
        ("family_name", "sn"),
    ]
    .into_iter()
    .map(|(c, a)| (c.to_owned(), a.to_owned()))
    .collect()
}

/// The user store managers the engine can provision into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UserStoreType {
    /// An LDAP directory (OpenLDAP, 389 DS, …), written through its unique user id.
    #[serde(rename = "read_write_ldap_unique_id")]
    ReadWriteLdapUniqueId,
}

impl UserStoreType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWriteLdapUniqueId => "read_write_ldap_unique_id",
        }
    }
}

/// `[user_store.properties]`, named as WSO2 names them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserStoreProperties {
    /// The attribute that holds the username and names the entry (its RDN).
    #[serde(rename = "UserNameAttribute", default = "uid")]
    pub user_name_attribute: String,
    /// The entry's structural object class.
    #[serde(rename = "UserEntryObjectClass", default = "inet_org_person")]
    pub user_entry_object_class: String,
    /// Where entries are made, when it differs from `base_dn`.
    #[serde(rename = "UserSearchBase", default)]
    pub user_search_base: Option<String>,
    /// The attribute that holds the engine's user id: an entry that exists without this id is
    /// somebody else's and is never overwritten.
    #[serde(rename = "UserIDAttribute", default = "employee_number")]
    pub user_id_attribute: String,
    /// Upgrade an `ldap://` connection to TLS with StartTLS before binding.
    #[serde(rename = "StartTLSEnabled", default)]
    pub start_tls_enabled: bool,
    /// How long to wait for the TCP (and TLS) connection, in milliseconds.
    #[serde(
        rename = "LDAPConnectionTimeout",
        default = "five_seconds",
        deserialize_with = "positive_millis"
    )]
    pub connection_timeout_ms: NonZeroU64,
    /// How long to wait for the answer to one operation, in milliseconds.
    #[serde(
        rename = "ReadTimeout",
        default = "five_seconds",
        deserialize_with = "positive_millis"
    )]
    pub read_timeout_ms: NonZeroU64,
}

impl Default for UserStoreProperties {
    fn default() -> Self {
        Self {
            user_name_attribute: uid(),
            user_entry_object_class: inet_org_person(),
            user_search_base: None,
            user_id_attribute: employee_number(),
            start_tls_enabled: false,
            connection_timeout_ms: five_seconds(),
            read_timeout_ms: five_seconds(),
        }
    }
}

fn uid() -> String {
    "uid".to_owned()
}
fn inet_org_person() -> String {
    "inetOrgPerson".to_owned()
}
fn employee_number() -> String {
    "employeeNumber".to_owned()
}
fn five_seconds() -> NonZeroU64 {
    crate::limits::nonzero_u64(5000)
}

fn positive_millis<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU64, D::Error> {
    NonZeroU64::new(u64::deserialize(d)?).ok_or_else(|| {
        de::Error::custom("user_store.properties: a timeout must be at least 1 millisecond")
    })
}

/// An LDAP URL, checked when read: `ldap://` or `ldaps://`, and a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapUrl(String);

impl LdapUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("ldaps://")
            .or_else(|| s.strip_prefix("ldap://"))
            .ok_or("user_store.connection_url must start with ldap:// or ldaps://")?;
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() {
            return Err("user_store.connection_url names no host (ldap://host:port)".into());
        }
        Ok(Self(s.trim_end_matches('/').to_owned()))
    }

    /// Whether the connection is TLS from the first byte.
    pub fn is_ldaps(&self) -> bool {
        self.0.starts_with("ldaps://")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for LdapUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl UserStoreSettings {
    /// Where entries are made: `UserSearchBase` if given, else `base_dn`.
    pub fn users_dn(&self) -> &str {
        self.properties
            .user_search_base
            .as_deref()
            .unwrap_or(&self.base_dn)
    }

    pub fn connection_timeout(&self) -> Duration {
        Duration::from_millis(self.properties.connection_timeout_ms.get())
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.properties.read_timeout_ms.get())
    }

    /// Reads `connection_password_file` and checks what spans several keys.
    pub(crate) fn resolve(&mut self) -> Result<(), ConfigError> {
        let naming = self.properties.user_name_attribute.clone();
        for (claim, attribute) in default_claim_mapping() {
            // A default that names the username's own attribute (`UserNameAttribute = "cn"`)
            // is left out; a mapping given in the file is checked below.
            if !attribute.eq_ignore_ascii_case(&naming) {
                self.claim_mapping.entry(claim).or_insert(attribute);
            }
        }
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(path) = &self.connection_password_file {
            if self.connection_password.is_some() {
                return bad("user_store: connection_password and connection_password_file are both set (ONBOARD__USER_STORE__CONNECTION_PASSWORD counts as connection_password); keep one".into());
            }
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
                setting: "user_store.connection_password_file",
                path: path.clone(),
                source,
            })?;
            let password = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            self.connection_password = Some(SecretString::from(password.to_owned()));
        }
        if self
            .connection_password
            .as_ref()
            .is_none_or(|p| p.expose_secret().is_empty())
        {
            return bad("user_store.connection_password (or connection_password_file) is missing or empty; the engine binds as user_store.connection_name with it".into());
        }
        if self.connection_name.trim().is_empty() {
            return bad(
                "user_store.connection_name is empty; give the DN the engine binds as".into(),
            );
        }
        if self.users_dn().trim().is_empty() {
            return bad("user_store.base_dn is empty; give the DN under which user entries are made (e.g. ou=Users,dc=example,dc=com)".into());
        }
        if self.properties.start_tls_enabled && self.connection_url.is_ldaps() {
            return bad("user_store.properties.StartTLSEnabled is true but user_store.connection_url is ldaps:// (already TLS); use ldap:// with StartTLS, or ldaps:// without it".into());
        }
        if let Some(ca) = &self.ca_file {
            if !self.connection_url.is_ldaps() && !self.properties.start_tls_enabled {
                return bad("user_store.ca_file is set but the connection is not TLS; use an ldaps:// URL or StartTLSEnabled = true".into());
            }
            if let Err(source) = std::fs::metadata(ca) {
                return Err(ConfigError::Unreadable {
                    setting: "user_store.ca_file",
                    path: ca.clone(),
                    source,
                });
            }
        }
        let p = &self.properties;
        for (key, attribute) in [
            ("UserNameAttribute", &p.user_name_attribute),
            ("UserEntryObjectClass", &p.user_entry_object_class),
            ("UserIDAttribute", &p.user_id_attribute),
        ] {
            if !is_attribute_name(attribute) {
                return bad(format!("user_store.properties.{key} must be an attribute or object class name (letters, digits, hyphens, starting with a letter)"));
            }
        }
        for (claim, attribute) in &self.claim_mapping {
            if !is_attribute_name(attribute) {
                return bad(format!("user_store.claim_mapping.{claim} must name an LDAP attribute (letters, digits, hyphens, starting with a letter)"));
            }
            let reserved = [
                "objectClass",
                "userPassword",
                "mail",
                &p.user_name_attribute,
                &p.user_id_attribute,
            ];
            if reserved.iter().any(|r| r.eq_ignore_ascii_case(attribute)) {
                return bad(format!("user_store.claim_mapping.{claim}: the attribute `{attribute}` is written by the engine itself (object class, password, mail, username, user id); map the claim to another attribute"));
            }
        }
        Ok(())
    }
}

/// An LDAP attribute description's name (RFC 4512 `keystring`).
fn is_attribute_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use crate::test_support::*;

    fn with_store(lines: &str) -> String {
        format!("{MINIMAL}\n[user_store]\n{lines}")
    }

    const STORE: &str = r#"
        type = "read_write_ldap_unique_id"
        connection_url = "ldap://127.0.0.1:389"
        connection_name = "cn=admin,dc=pickup,dc=example"
        connection_password = "ldap-secret-value"
        base_dn = "ou=Users,dc=pickup,dc=example"
    "#;

    #[test]
    fn no_user_store_means_no_provisioning() {
        assert!(load(MINIMAL).unwrap().user_store.is_none());
    }

    #[test]
    fn a_wso2_style_user_store_is_read_with_defaults() {
        let s = load(&with_store(STORE)).unwrap();
        let store = s.user_store.unwrap();
        assert_eq!(store.users_dn(), "ou=Users,dc=pickup,dc=example");
        assert_eq!(store.properties.user_name_attribute, "uid");
        assert_eq!(store.properties.user_entry_object_class, "inetOrgPerson");
        assert_eq!(store.claim_mapping["given_name"], "givenName");
        assert!(!store.connection_url.is_ldaps());
        assert!(!format!("{store:?}").contains("ldap-secret-value"));
    }

    #[test]
    fn properties_and_claims_are_read_by_their_wso2_names() {
        let toml = with_store(&format!(
            "{STORE}\n[user_store.properties]\nUserNameAttribute = \"cn\"\nUserSearchBase = \"ou=People,dc=x\"\nStartTLSEnabled = true\n[user_store.claim_mapping]\nphone_number = \"telephoneNumber\"\n"
        ));
        let store = load(&toml).unwrap().user_store.unwrap();
        assert_eq!(store.properties.user_name_attribute, "cn");
        assert_eq!(store.users_dn(), "ou=People,dc=x");
        assert!(store.properties.start_tls_enabled);
        assert_eq!(store.claim_mapping["phone_number"], "telephoneNumber");
        assert_eq!(store.claim_mapping["family_name"], "sn");
        assert!(
            !store.claim_mapping.contains_key("name"),
            "cn names the entry"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named_without_the_secret() {
        let err = load(&with_store(&format!(
            "{STORE}\n[user_store.properties]\nUserNameAttrib = \"uid\"\n"
        )))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("unknown key `user_store.properties.UserNameAttrib`"),
            "{err}"
        );
        let err = load(&with_store(
            &STORE.replace("ldap://127.0.0.1:389", "http://127.0.0.1"),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("ldap:// or ldaps://"), "{err}");
        let err = load(&with_store(
            &STORE.replace("read_write_ldap_unique_id", "jdbc"),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("user_store.type"), "{err}");
        let err = load(&with_store(
            &STORE.replace("\"ldap-secret-value\"", "123456789"),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("user_store.connection_password"), "{err}");
        assert!(!err.contains("123456789"), "{err}");
        let err = load(&with_store(
            &STORE.replace("connection_password = \"ldap-secret-value\"", ""),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("user_store.connection_password"), "{err}");
        let err = load(&with_store(&format!(
            "{STORE}\n[user_store.claim_mapping]\nrole = \"userPassword\"\n"
        )))
        .unwrap_err()
        .to_string();
        assert!(err.contains("user_store.claim_mapping.role"), "{err}");
        let err = load(&with_store(&format!(
            "{}\n[user_store.properties]\nStartTLSEnabled = true\n",
            STORE.replace("ldap://", "ldaps://")
        )))
        .unwrap_err()
        .to_string();
        assert!(err.contains("StartTLSEnabled"), "{err}");
    }

    #[test]
    fn the_password_may_come_from_a_file() {
        let path = std::env::temp_dir().join(format!("onboard-ldap-pw-{}.txt", std::process::id()));
        std::fs::write(&path, "from-a-file\n").unwrap();
        let toml = with_store(&STORE.replace(
            "connection_password = \"ldap-secret-value\"",
            &format!(
                "connection_password_file = {:?}",
                path.display().to_string()
            ),
        ));
        let loaded = load(&toml);
        std::fs::remove_file(&path).unwrap();
        let store = loaded.unwrap().user_store.unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(
            store.connection_password.unwrap().expose_secret(),
            "from-a-file"
        );
    }
}
