//! The LDAP directory as a user store (`read_write_ldap_unique_id`), through the `ldap3` client.
//!
//! The entry of an account is `<UserNameAttribute>=<username>,<UserSearchBase>`, of class
//! `UserEntryObjectClass` (`inetOrgPerson`), with the username, `mail`, `cn` and `sn`, the mapped
//! claims, the engine's user id in `UserIDAttribute` (`employeeNumber`), and `userPassword:
//! {ARGON2}<PHC string>`, which OpenLDAP's argon2 module verifies at bind.
//!
//! Upsert: read the entry; none, add it; one that carries this account's id, replace its
//! attributes; one without it (somebody else's, or made by hand) is never overwritten, and the
//! attempt is refused for an operator to look at. One connection per attempt: activations come
//! at human speed, and a fresh connection needs no repair after the directory restarted.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ldap3::{dn_escape, Ldap, LdapConnAsync, LdapConnSettings, LdapError, Mod, Scope, SearchEntry};
use onboarding_config::UserStoreSettings;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::user_store::{Deleted, Locked, Upserted, UserRecord, UserStore, UserStoreError};

/// Result codes (RFC 4511) that mean "not now": busy, unavailable, unwilling to perform, loop
/// detected, other; and the engine's own bind refused (a wrong or expired service password that
/// an operator will fix: nothing is lost meanwhile).
const TRANSIENT_CODES: [u32; 6] = [51, 52, 53, 54, 80, 49];
const NO_SUCH_OBJECT: u32 = 32;
const ENTRY_ALREADY_EXISTS: u32 = 68;

/// Why the engine cannot talk to the directory with these settings.
#[derive(Debug, thiserror::Error)]
pub enum LdapSetupError {
    #[error("user_store.ca_file {}: {reason}", path.display())]
    CaFile {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// An LDAP directory the engine writes accounts to.
pub struct LdapUserStore {
    url: String,
    connection: LdapConnSettings,
    bind_dn: String,
    bind_password: SecretString,
    users_dn: String,
    name_attribute: String,
    object_class: String,
    id_attribute: String,
    /// Claim → attribute.
    claim_mapping: BTreeMap<String, String>,
    read_timeout: Duration,
    kind: &'static str,
}

impl LdapUserStore {
    pub fn new(settings: &UserStoreSettings) -> Result<Self, LdapSetupError> {
        let mut connection = LdapConnSettings::new()
            .set_conn_timeout(settings.connection_timeout())
            .set_starttls(settings.properties.start_tls_enabled);
        if let Some(ca) = &settings.ca_file {
            connection = connection.set_config(Arc::new(tls_config(ca)?));
        }
        Ok(Self {
            url: settings.connection_url.as_str().to_owned(),
            connection,
            bind_dn: settings.connection_name.clone(),
            bind_password: settings
                .connection_password
                .clone()
                .unwrap_or_else(|| SecretString::from(String::new())),
            users_dn: settings.users_dn().to_owned(),
            name_attribute: settings.properties.user_name_attribute.clone(),
            object_class: settings.properties.user_entry_object_class.clone(),
            id_attribute: settings.properties.user_id_attribute.clone(),
            claim_mapping: settings.claim_mapping.clone(),
            read_timeout: settings.read_timeout(),
            kind: settings.kind.as_str(),
        })
    }

    /// The DN of an account's entry.
    pub fn dn_of(&self, username: &str) -> String {
        format!(
            "{}={},{}",
            self.name_attribute,
            dn_escape(username),
            self.users_dn
        )
    }

    /// Connects and binds as `connection_name`.
    async fn connect(&self) -> Result<Ldap, UserStoreError> {
        let (conn, mut ldap) = LdapConnAsync::with_settings(self.connection.clone(), &self.url)
            .await
            .map_err(|e| classify(&e, None))?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.read_timeout)
            .simple_bind(&self.bind_dn, self.bind_password.expose_secret())
            .await
            .and_then(|r| r.success())
            .map_err(|e| match classify(&e, None) {
                UserStoreError::Unavailable(reason) | UserStoreError::Refused(reason) => {
                    UserStoreError::Unavailable(format!(
                        "cannot bind as user_store.connection_name: {reason}"
                    ))
                }
            })?;
        Ok(ldap)
    }

    /// The entry's attributes, every value a set (LDAP attributes are multi-valued).
    pub fn attributes(
        &self,
        user: &UserRecord,
    ) -> Result<Vec<(String, HashSet<String>)>, UserStoreError> {
        let mut attrs: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        let one = |v: &str| HashSet::from([v.to_owned()]);
        let mut classes = HashSet::from([self.object_class.clone()]);
        if self.object_class.eq_ignore_ascii_case("inetOrgPerson") {
            classes.extend(["top", "person", "organizationalPerson"].map(str::to_owned));
        }
        attrs.insert("objectClass".into(), classes);
        for (claim, attribute) in &self.claim_mapping {
            let Some(value) = user.claims.get(claim) else {
                continue;
            };
            let values = claim_values(value).ok_or_else(|| {
                UserStoreError::Refused(format!(
                    "the claim `{claim}` (mapped to `{attribute}`) is not a string, number, \
                     boolean or list of them; map it to no attribute or change the invitation"
                ))
            })?;
            if !values.is_empty() {
                attrs.insert(attribute.clone(), values);
            }
        }
        let username = user.username.as_str();
        // inetOrgPerson (person) requires cn and sn: the username stands in for missing names.
        for required in ["cn", "sn"] {
            if !attrs.keys().any(|a| a.eq_ignore_ascii_case(required)) {
                attrs.insert(required.into(), one(username));
            }
        }
        attrs.insert(self.name_attribute.clone(), one(username));
        attrs.insert("mail".into(), one(user.email.as_str()));
        attrs.insert(self.id_attribute.clone(), one(&user.user_id.to_string()));
        attrs.insert(
            "userPassword".into(),
            one(&format!("{{ARGON2}}{}", user.password_hash.as_phc())),
        );
        Ok(attrs.into_iter().collect())
    }

    async fn upsert_with(
        &self,
        ldap: &mut Ldap,
        user: &UserRecord,
    ) -> Result<Upserted, UserStoreError> {
        let dn = self.dn_of(user.username.as_str());
        let attrs = self.attributes(user)?;
        let redact = Redact {
            dn: &dn,
            username: user.username.as_str(),
        };
        let id = user.user_id.to_string();
        // An add that lost a race with another provisioner finds the entry on the next turn.
        for _ in 0..3 {
            match self.entry_at(ldap, &dn, &redact).await? {
                None => {
                    let added = ldap
                        .with_timeout(self.read_timeout)
                        .add(&dn, attrs.clone())
                        .await
                        .map_err(|e| classify(&e, Some(&redact)))?;
                    match added.rc {
                        0 => return Ok(Upserted::Added),
                        ENTRY_ALREADY_EXISTS => continue,
                        _ => return Err(classify(&LdapError::from(added), Some(&redact))),
                    }
                }
                Some(found) => {
                    self.ours(found, &id)?;
                    let mods = attrs
                        .iter()
                        .filter(|(a, _)| !a.eq_ignore_ascii_case(&self.name_attribute))
                        .map(|(a, v)| Mod::Replace(a.clone(), v.clone()))
                        .collect();
                    ldap.with_timeout(self.read_timeout)
                        .modify(&dn, mods)
                        .await
                        .and_then(|r| r.success())
                        .map_err(|e| classify(&e, Some(&redact)))?;
                    return Ok(Upserted::Updated);
                }
            }
        }
        Err(UserStoreError::Unavailable(
            "the entry was added and removed concurrently three times; will try again".into(),
        ))
    }
}

impl LdapUserStore {
    /// The entry at `dn` (with its `UserIDAttribute`), or `None` when there is none.
    async fn entry_at(
        &self,
        ldap: &mut Ldap,
        dn: &str,
        redact: &Redact<'_>,
    ) -> Result<Option<Vec<ldap3::ResultEntry>>, UserStoreError> {
        let ldap3::SearchResult(entries, result) = ldap
            .with_timeout(self.read_timeout)
            .search(
                dn,
                Scope::Base,
                "(objectClass=*)",
                vec![self.id_attribute.as_str()],
            )
            .await
            .map_err(|e| classify(&e, Some(redact)))?;
        match result.rc {
            0 => Ok(Some(entries)),
            NO_SUCH_OBJECT => Ok(None),
            _ => Err(classify(&LdapError::from(result), Some(redact))),
        }
    }

    /// Refuses an entry found under the account's DN that does not carry the account's id in
    /// `UserIDAttribute`: it was not made by this engine for this account, and is left alone.
    fn ours(&self, found: Vec<ldap3::ResultEntry>, id: &str) -> Result<(), UserStoreError> {
        let entry = found.into_iter().next().map(SearchEntry::construct);
        let ours = entry.as_ref().is_some_and(|e| {
            e.attrs
                .iter()
                .find(|(a, _)| a.eq_ignore_ascii_case(&self.id_attribute))
                .is_some_and(|(_, values)| values.iter().any(|v| v == id))
        });
        if ours {
            return Ok(());
        }
        Err(UserStoreError::Refused(format!(
            "an entry with this username exists in {} and its {} is not this account's id: it \
             was not made by this engine for this account, so it is left alone; remove or rename \
             it, or set {} on it to the account's id",
            self.users_dn, self.id_attribute, self.id_attribute
        )))
    }

    /// Removes `userPassword` from the account's entry (a replace with no values: RFC 4511 §4.6,
    /// no error when there is none) and brings her other attributes up to date.
    async fn lock_with(
        &self,
        ldap: &mut Ldap,
        user: &UserRecord,
    ) -> Result<Locked, UserStoreError> {
        let dn = self.dn_of(user.username.as_str());
        let redact = Redact {
            dn: &dn,
            username: user.username.as_str(),
        };
        let Some(found) = self.entry_at(ldap, &dn, &redact).await? else {
            return Ok(Locked::Absent);
        };
        self.ours(found, &user.user_id.to_string())?;
        let mods = self
            .attributes(user)?
            .into_iter()
            .filter(|(a, _)| !a.eq_ignore_ascii_case(&self.name_attribute))
            .map(|(a, v)| {
                if a.eq_ignore_ascii_case("userPassword") {
                    Mod::Replace(a, HashSet::new())
                } else {
                    Mod::Replace(a, v)
                }
            })
            .collect();
        let done = ldap
            .with_timeout(self.read_timeout)
            .modify(&dn, mods)
            .await
            .map_err(|e| classify(&e, Some(&redact)))?;
        match done.rc {
            0 => Ok(Locked::Locked),
            // Removed meanwhile (by an operator): nothing binds as her.
            NO_SUCH_OBJECT => Ok(Locked::Absent),
            _ => Err(classify(&LdapError::from(done), Some(&redact))),
        }
    }

    /// Removes every entry under the users' base whose `UserIDAttribute` is the account's id: the
    /// entries this engine made for it (a rename never happens, so there is one).
    async fn delete_with(&self, ldap: &mut Ldap, user_id: Uuid) -> Result<Deleted, UserStoreError> {
        let filter = format!(
            "({}={})",
            self.id_attribute,
            ldap3::ldap_escape(user_id.to_string())
        );
        let found = ldap
            .with_timeout(self.read_timeout)
            .search(&self.users_dn, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .map_err(|e| classify(&e, None))?;
        match found.1.rc {
            0 => {}
            // No users' base: no entry of hers either.
            NO_SUCH_OBJECT => return Ok(Deleted::Absent),
            _ => return Err(classify(&LdapError::from(found.1), None)),
        }
        let dns: Vec<String> = found
            .0
            .into_iter()
            .map(|e| SearchEntry::construct(e).dn)
            .collect();
        if dns.is_empty() {
            return Ok(Deleted::Absent);
        }
        for dn in &dns {
            // The DN holds her username: the directory's text is not repeated with it.
            let redact = Redact { dn, username: "" };
            let done = ldap
                .with_timeout(self.read_timeout)
                .delete(dn)
                .await
                .map_err(|e| classify(&e, Some(&redact)))?;
            // Removed meanwhile (another provisioner, a redelivered record): as good as done.
            if done.rc != 0 && done.rc != NO_SUCH_OBJECT {
                return Err(classify(&LdapError::from(done), Some(&redact)));
            }
        }
        Ok(Deleted::Removed)
    }
}

#[async_trait]
impl UserStore for LdapUserStore {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn upsert(&self, user: &UserRecord) -> Result<Upserted, UserStoreError> {
        let mut ldap = self.connect().await?;
        let result = self.upsert_with(&mut ldap, user).await;
        let _ = ldap.unbind().await;
        result
    }

    async fn lock(&self, user: &UserRecord) -> Result<Locked, UserStoreError> {
        let mut ldap = self.connect().await?;
        let result = self.lock_with(&mut ldap, user).await;
        let _ = ldap.unbind().await;
        result
    }

    async fn delete(&self, user_id: Uuid) -> Result<Deleted, UserStoreError> {
        let mut ldap = self.connect().await?;
        let result = self.delete_with(&mut ldap, user_id).await;
        let _ = ldap.unbind().await;
        result
    }

    async fn check(&self) -> Result<(), UserStoreError> {
        let mut ldap = self.connect().await?;
        let found = ldap
            .with_timeout(self.read_timeout)
            .search(&self.users_dn, Scope::Base, "(objectClass=*)", vec!["1.1"])
            .await
            .map_err(|e| classify(&e, None))?;
        let _ = ldap.unbind().await;
        match found.1.rc {
            0 => Ok(()),
            NO_SUCH_OBJECT => Err(UserStoreError::Unavailable(format!(
                "the users' base {} does not exist in the directory; create it or correct \
                 user_store.base_dn",
                self.users_dn
            ))),
            _ => Err(classify(&LdapError::from(found.1), None)),
        }
    }
}

/// A claim's values as attribute values: a string, number or boolean is one value, a list of
/// them several; `None` for anything else (an object, a list of objects).
fn claim_values(value: &serde_json::Value) -> Option<HashSet<String>> {
    use serde_json::Value as V;
    let scalar = |v: &V| match v {
        V::String(s) => Some(s.clone()),
        V::Number(n) => Some(n.to_string()),
        V::Bool(b) => Some(if *b { "TRUE" } else { "FALSE" }.to_owned()),
        _ => None,
    };
    match value {
        V::Null => Some(HashSet::new()),
        V::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Option<HashSet<String>>>()
            .map(|set| set.into_iter().filter(|v| !v.is_empty()).collect()),
        other => scalar(other).map(|v| {
            if v.is_empty() {
                HashSet::new()
            } else {
                HashSet::from([v])
            }
        }),
    }
}

/// What must not reach a reason string: the entry's DN and the username (personal data that the
/// failure event would keep for good).
struct Redact<'a> {
    dn: &'a str,
    username: &'a str,
}

impl Redact<'_> {
    fn apply(&self, text: &str) -> String {
        let text = text.replace(self.dn, "<entry>");
        if self.username.is_empty() {
            text
        } else {
            text.replace(self.username, "<username>")
        }
    }
}

/// Sorts an ldap3 error into "try again" and "refused", with a reason that says which.
fn classify(e: &LdapError, redact: Option<&Redact>) -> UserStoreError {
    match e {
        LdapError::LdapResult { result } => {
            let text = redact.map_or_else(|| result.text.clone(), |r| r.apply(&result.text));
            let reason = if text.is_empty() {
                format!("{} ({})", result_name(result.rc), result.rc)
            } else {
                format!("{} ({}): {text}", result_name(result.rc), result.rc)
            };
            if TRANSIENT_CODES.contains(&result.rc) {
                UserStoreError::Unavailable(reason)
            } else {
                UserStoreError::Refused(reason)
            }
        }
        // Transport: refused connections, timeouts, TLS handshakes, a closed connection.
        other => UserStoreError::Unavailable(other.to_string()),
    }
}

/// RFC 4511's name of a result code.
fn result_name(rc: u32) -> &'static str {
    match rc {
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        8 => "strongerAuthRequired",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        18 => "inappropriateMatching",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        54 => "loopDetect",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        68 => "entryAlreadyExists",
        69 => "objectClassModsProhibited",
        _ => "other",
    }
}

/// A rustls configuration that trusts the certificates of `ca_file` (PEM).
fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, LdapSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |reason: String| LdapSetupError::CaFile {
        path: ca_file.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(format!("cannot be read: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(format!("is not a PEM certificate file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("holds a certificate rustls refuses: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use onboarding_domain::password::PasswordHash;
    use onboarding_domain::value::{EmailAddress, Username};
    use serde_json::json;
    use uuid::Uuid;

    fn store(extra: &str) -> LdapUserStore {
        let toml = format!(
            r#"
            [output_adapter.email]
            from_address = "noreply@pickup.example"
            hostname = "smtp.pickup.example"
            [database]
            url = "postgres://127.0.0.1/onboarding"
            [kafka]
            bootstrap_servers = "127.0.0.1:9092"
            [gateway]
            public_base_url = "https://id.pickup.example"
            [codes]
            active_key = "k1"
            [[codes.keys]]
            id = "k1"
            secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
            [user_store]
            type = "read_write_ldap_unique_id"
            connection_url = "ldap://127.0.0.1:1"
            connection_name = "cn=admin,dc=pickup,dc=example"
            connection_password = "secret"
            base_dn = "ou=Users,dc=pickup,dc=example"
            {extra}
            "#
        );
        let settings = onboarding_config::Settings::from_toml_str(&toml).unwrap();
        LdapUserStore::new(settings.user_store.as_ref().unwrap()).unwrap()
    }

    fn jane(claims: serde_json::Value) -> UserRecord {
        UserRecord {
            user_id: Uuid::from_u128(7),
            username: Username::parse("Jane").unwrap(),
            email: EmailAddress::parse("jane@pickup.example").unwrap(),
            claims: serde_json::from_value(claims).unwrap(),
            password_hash: PasswordHash::parse(
                "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g".into(),
            )
            .unwrap(),
        }
    }

    fn attr<'a>(attrs: &'a [(String, HashSet<String>)], name: &str) -> Vec<&'a str> {
        let mut v: Vec<&str> = attrs
            .iter()
            .find(|(a, _)| a == name)
            .map(|(_, v)| v.iter().map(String::as_str).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn the_entry_is_an_inet_org_person_with_the_argon2_hash_and_mapped_claims() {
        let store = store("[user_store.claim_mapping]\nphone_number = \"telephoneNumber\"\n");
        let attrs = store
            .attributes(&jane(json!({
                "given_name": "Jane", "family_name": "Doe", "name": "Jane Doe",
                "phone_number": "+44 20 7946 0000", "unmapped": "x"
            })))
            .unwrap();
        assert_eq!(
            store.dn_of("Jane"),
            "uid=Jane,ou=Users,dc=pickup,dc=example"
        );
        assert_eq!(
            attr(&attrs, "objectClass"),
            ["inetOrgPerson", "organizationalPerson", "person", "top"]
        );
        assert_eq!(attr(&attrs, "uid"), ["Jane"]);
        assert_eq!(attr(&attrs, "mail"), ["jane@pickup.example"]);
        assert_eq!(attr(&attrs, "cn"), ["Jane Doe"]);
        assert_eq!(attr(&attrs, "sn"), ["Doe"]);
        assert_eq!(attr(&attrs, "givenName"), ["Jane"]);
        assert_eq!(attr(&attrs, "telephoneNumber"), ["+44 20 7946 0000"]);
        assert_eq!(
            attr(&attrs, "employeeNumber"),
            ["00000000-0000-0000-0000-000000000007"]
        );
        assert_eq!(
            attr(&attrs, "userPassword"),
            ["{ARGON2}$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"]
        );
        assert!(attrs.iter().all(|(a, _)| a != "unmapped"));
    }

    #[test]
    fn without_names_the_username_stands_in_for_cn_and_sn() {
        let attrs = store("").attributes(&jane(json!({}))).unwrap();
        assert_eq!(attr(&attrs, "cn"), ["Jane"]);
        assert_eq!(attr(&attrs, "sn"), ["Jane"]);
    }

    #[test]
    fn a_claim_that_is_an_object_is_refused_naming_the_claim_not_its_value() {
        let err = store("")
            .attributes(&jane(json!({"name": {"secret": "Jane Doe"}})))
            .unwrap_err();
        assert!(err.permanent());
        let text = err.to_string();
        assert!(text.contains("`name`"), "{text}");
        assert!(!text.contains("Jane Doe"), "{text}");
    }

    #[test]
    fn special_characters_in_a_username_are_escaped_in_the_dn() {
        assert_eq!(
            store("").dn_of("a,b+c"),
            "uid=a\\2cb\\2bc,ou=Users,dc=pickup,dc=example"
        );
    }

    #[test]
    fn busy_and_unreachable_directories_are_retried_and_schema_refusals_are_not() {
        let result = |rc: u32, text: &str| LdapError::LdapResult {
            result: ldap3::LdapResult {
                rc,
                matched: String::new(),
                text: text.into(),
                refs: vec![],
                ctrls: vec![],
            },
        };
        assert!(!classify(&result(52, ""), None).permanent());
        assert!(!classify(&result(49, ""), None).permanent());
        let refused = classify(
            &result(
                65,
                "object class 'x' requires attribute 'sn' for uid=Jane,ou=Users",
            ),
            Some(&Redact {
                dn: "uid=Jane,ou=Users",
                username: "Jane",
            }),
        );
        assert!(refused.permanent());
        assert!(refused.to_string().contains("objectClassViolation (65)"));
        assert!(!refused.to_string().contains("Jane"), "{refused}");
        let io = LdapError::Io {
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(!classify(&io, None).permanent());
    }
}
