//! One-time confirmation codes that never exist in clear outside the mail.
//!
//! A code is identified by a random 128-bit `code_id` (from the OS's CSPRNG, chosen by the adapter).
//! The event log records only `code_id`, the `key_id` and `expires_at`. The token in the link is
//! `base64url(user_id ‖ code_id ‖ tag)` where `tag = HMAC-SHA256(key[key_id], "onboard-code-v1" ‖
//! key_id ‖ user_id ‖ code_id ‖ expires_at)` truncated to 128 bits. Whoever holds the keys (the
//! email worker, the gateway) can mint or check a token; whoever reads the log or the Kafka topic
//! cannot. See `docs/security.md` for the threat model.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

const TAG_LEN: usize = 16;
const TOKEN_LEN: usize = 16 + 16 + TAG_LEN;
const DOMAIN_SEPARATOR: &[u8] = b"onboard-code-v1";

/// The public identifier of one issued code. Knowing it does not let anyone use the code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct CodeId(Uuid);

impl CodeId {
    /// Wraps 16 random bytes. The caller must take them from a CSPRNG.
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// The id as a UUID, as it appears in public events, database rows and the link token.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for CodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for CodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CodeId({})", self.0)
    }
}

/// Everything a tag is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeBinding {
    /// The account: a tag minted for one user does not verify for another.
    pub user_id: Uuid,
    /// The code: each code has its own tag.
    pub code_id: CodeId,
    /// The expiry: a token cannot be replayed with a later expiry.
    pub expires_at: DateTime<Utc>,
}

/// The token that travels in the link: the only place a usable code exists.
pub struct ConfirmationToken(SecretString);

impl ConfirmationToken {
    /// The token's text, to put into the link of the mail; nowhere else.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ConfirmationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfirmationToken(<redacted>)")
    }
}

/// A token as presented by a user, split into its parts. The tag is still unverified.
#[derive(Clone)]
pub struct PresentedCode {
    /// The account the token names: which aggregate to load.
    pub user_id: Uuid,
    /// The code the token names: which issued code to check the tag against.
    pub code_id: CodeId,
    tag: [u8; TAG_LEN],
}

impl fmt::Debug for PresentedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedCode")
            .field("user_id", &self.user_id)
            .field("code_id", &self.code_id)
            .finish_non_exhaustive()
    }
}

/// The token is not one the engine could have minted (wrong length, not base64url): usually a
/// link cut short when it was copied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the code is not in the expected format; copy the whole link from the email, or ask for a new one")]
pub struct MalformedCode;

impl PresentedCode {
    /// Splits a token from a link into user id, code id and tag, checking only its shape; the
    /// aggregate verifies the tag.
    pub fn parse(token: &str) -> Result<Self, MalformedCode> {
        let token = token.trim();
        if token.len() > 2 * TOKEN_LEN {
            return Err(MalformedCode);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| MalformedCode)?;
        if bytes.len() != TOKEN_LEN {
            return Err(MalformedCode);
        }
        let user_id = Uuid::from_slice(&bytes[..16]).map_err(|_| MalformedCode)?;
        let code_id = CodeId(Uuid::from_slice(&bytes[16..32]).map_err(|_| MalformedCode)?);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&bytes[32..]);
        Ok(Self {
            user_id,
            code_id,
            tag,
        })
    }
}

/// The HMAC keys, by id. New codes use the active key; any key still listed verifies.
pub struct CodeKeyring {
    active: String,
    keys: BTreeMap<String, SecretBox<Vec<u8>>>,
}

/// Why the configured code keys cannot be used. Each message names the key id, never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// No key at all: no code could be minted or checked.
    #[error(
        "no code keys are configured; add one under [codes] (see deploy/onboard.example.toml)"
    )]
    Empty,
    /// The key meant to sign new codes is missing (its id is given).
    #[error("the active code key `{0}` is not among the configured keys")]
    UnknownActive(String),
    /// A key (its id is given) has fewer than 32 bytes, too weak for HMAC-SHA256.
    #[error(
        "code key `{0}` is shorter than 32 bytes; generate one with `openssl rand -base64 32`"
    )]
    TooShort(String),
    /// A key (its id is given) could not be decoded; raised by the adapter that decodes the
    /// configured keys before building the keyring.
    #[error("code key `{0}` is not valid base64; generate one with `openssl rand -base64 32`")]
    NotBase64(String),
}

impl CodeKeyring {
    /// Builds the keyring from `(key id, key bytes)` pairs; `active` names the key that signs
    /// new codes. Refuses no keys, a missing active key and keys shorter than 32 bytes.
    pub fn new(
        active: impl Into<String>,
        keys: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Result<Self, KeyringError> {
        let active = active.into();
        let mut map = BTreeMap::new();
        for (id, secret) in keys {
            if secret.len() < 32 {
                return Err(KeyringError::TooShort(id));
            }
            map.insert(id, SecretBox::new(Box::new(secret)));
        }
        if map.is_empty() {
            return Err(KeyringError::Empty);
        }
        if !map.contains_key(&active) {
            return Err(KeyringError::UnknownActive(active));
        }
        Ok(Self { active, keys: map })
    }

    /// The id of the key that signs new codes, recorded in each `CodeIssued`.
    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    fn tag(&self, key_id: &str, binding: &CodeBinding) -> Option<[u8; TAG_LEN]> {
        let key = self.keys.get(key_id)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key.expose_secret())
            .expect("HMAC accepts any key length");
        mac.update(DOMAIN_SEPARATOR);
        mac.update(&(key_id.len() as u32).to_be_bytes());
        mac.update(key_id.as_bytes());
        mac.update(binding.user_id.as_bytes());
        mac.update(binding.code_id.0.as_bytes());
        mac.update(&binding.expires_at.timestamp_micros().to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        Some(tag)
    }

    /// Mints the link token for an issued code, or `None` when its key is no longer configured.
    pub fn mint(&self, key_id: &str, binding: &CodeBinding) -> Option<ConfirmationToken> {
        let tag = self.tag(key_id, binding)?;
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.extend_from_slice(binding.user_id.as_bytes());
        bytes.extend_from_slice(binding.code_id.0.as_bytes());
        bytes.extend_from_slice(&tag);
        Some(ConfirmationToken(SecretString::from(
            URL_SAFE_NO_PAD.encode(bytes),
        )))
    }

    fn purpose_tag(&self, key_id: &str, purpose: &str, data: &[u8]) -> Option<[u8; TAG_LEN]> {
        let key = self.keys.get(key_id)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key.expose_secret())
            .expect("HMAC accepts any key length");
        mac.update(b"onboard-purpose-v1");
        mac.update(&(purpose.len() as u32).to_be_bytes());
        mac.update(purpose.as_bytes());
        mac.update(data);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        Some(tag)
    }

    /// Signs `data` for one purpose (e.g. a CSRF token bound to a page) with the active key.
    pub fn sign(&self, purpose: &str, data: &[u8]) -> String {
        let tag = self
            .purpose_tag(&self.active, purpose, data)
            .expect("the active key exists");
        format!("{}.{}", self.active, URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks a signature made by [`CodeKeyring::sign`] with any configured key, in constant time.
    pub fn verify_signature(&self, purpose: &str, data: &[u8], signature: &str) -> bool {
        let Some((key_id, tag)) = signature.rsplit_once('.') else {
            return false;
        };
        let (Some(expected), Ok(given)) = (
            self.purpose_tag(key_id, purpose, data),
            URL_SAFE_NO_PAD.decode(tag),
        ) else {
            return false;
        };
        given.len() == TAG_LEN && bool::from(expected.ct_eq(&given[..]))
    }

    /// Checks a presented tag against the issued code, in constant time.
    pub fn verify(&self, key_id: &str, binding: &CodeBinding, presented: &PresentedCode) -> bool {
        let Some(expected) = self.tag(key_id, binding) else {
            return false;
        };
        let ids_match =
            binding.user_id == presented.user_id && binding.code_id == presented.code_id;
        bool::from(expected.ct_eq(&presented.tag)) && ids_match
    }
}

impl fmt::Debug for CodeKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeKeyring")
            .field("active", &self.active)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> CodeKeyring {
        CodeKeyring::new(
            "k2",
            [
                ("k1".to_owned(), vec![1u8; 32]),
                ("k2".to_owned(), vec![2u8; 32]),
            ],
        )
        .unwrap()
    }

    fn binding() -> CodeBinding {
        CodeBinding {
            user_id: Uuid::from_u128(7),
            code_id: CodeId::from_random_bytes([9; 16]),
            expires_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn a_minted_token_verifies_and_is_url_safe() {
        let ring = keyring();
        let token = ring.mint("k2", &binding()).unwrap();
        assert!(token
            .expose()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        let presented = PresentedCode::parse(token.expose()).unwrap();
        assert_eq!(presented.user_id, binding().user_id);
        assert!(ring.verify("k2", &binding(), &presented));
    }

    #[test]
    fn an_old_key_still_verifies_codes_it_signed() {
        let ring = keyring();
        let token = ring.mint("k1", &binding()).unwrap();
        assert!(ring.verify(
            "k1",
            &binding(),
            &PresentedCode::parse(token.expose()).unwrap()
        ));
    }

    #[test]
    fn a_tampered_tag_or_another_expiry_fails() {
        let ring = keyring();
        let token = ring.mint("k2", &binding()).unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(token.expose()).unwrap();
        raw[40] ^= 1;
        let tampered = PresentedCode::parse(&URL_SAFE_NO_PAD.encode(raw)).unwrap();
        assert!(!ring.verify("k2", &binding(), &tampered));

        let good = PresentedCode::parse(token.expose()).unwrap();
        let mut later = binding();
        later.expires_at += chrono::Duration::minutes(1);
        assert!(!ring.verify("k2", &later, &good));
        assert!(!ring.verify("k1", &binding(), &good));
        assert!(!ring.verify("gone", &binding(), &good));
    }

    #[test]
    fn purpose_signatures_verify_only_for_their_purpose_and_data() {
        let ring = keyring();
        let sig = ring.sign("csrf", b"page-1");
        assert!(ring.verify_signature("csrf", b"page-1", &sig));
        assert!(!ring.verify_signature("csrf", b"page-2", &sig));
        assert!(!ring.verify_signature("other", b"page-1", &sig));
        assert!(!ring.verify_signature("csrf", b"page-1", "k2.AAAA"));
        assert!(!ring.verify_signature("csrf", b"page-1", ""));
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in ["", "abc", "!!!!", &"A".repeat(500)] {
            assert!(PresentedCode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_must_be_long_enough_and_the_active_one_present() {
        assert_eq!(
            CodeKeyring::new("a", [("a".to_owned(), vec![0; 8])]).unwrap_err(),
            KeyringError::TooShort("a".into())
        );
        assert_eq!(
            CodeKeyring::new("b", [("a".to_owned(), vec![0; 32])]).unwrap_err(),
            KeyringError::UnknownActive("b".into())
        );
        assert!(format!("{:?}", keyring()).contains("k1"));
        assert!(!format!("{:?}", keyring()).contains("[1"));
    }
}

/// Properties of the two parsers of what a user presents: the code in a link
/// ([`PresentedCode::parse`]) and a form's signature ([`CodeKeyring::verify_signature`]).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn keyring() -> CodeKeyring {
        CodeKeyring::new(
            "k2",
            [
                ("k1".to_owned(), vec![1u8; 32]),
                ("k2".to_owned(), vec![2u8; 32]),
            ],
        )
        .unwrap()
    }

    /// The token of a presented code, printed as a link carries it.
    fn print(code: &PresentedCode) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.extend_from_slice(code.user_id.as_bytes());
        bytes.extend_from_slice(code.code_id.as_uuid().as_bytes());
        bytes.extend_from_slice(&code.tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn binding() -> impl Strategy<Value = CodeBinding> {
        (
            any::<u128>(),
            any::<[u8; 16]>(),
            0i64..4_102_444_800_000_000,
        )
            .prop_map(|(user, code, micros)| CodeBinding {
                user_id: Uuid::from_u128(user),
                code_id: CodeId::from_random_bytes(code),
                expires_at: DateTime::from_timestamp_micros(micros).unwrap(),
            })
    }

    proptest! {
        #[test]
        fn any_text_is_parsed_or_refused_and_what_is_accepted_prints_back(text in ".{0,120}") {
            if let Ok(code) = PresentedCode::parse(&text) {
                // Accepted: 48 bytes of base64url, which print back as the trimmed text.
                prop_assert_eq!(print(&code), text.trim());
            }
        }

        #[test]
        fn any_base64_text_is_refused_unless_it_is_48_bytes(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
            let text = URL_SAFE_NO_PAD.encode(&bytes);
            match PresentedCode::parse(&text) {
                Ok(code) => {
                    prop_assert_eq!(bytes.len(), TOKEN_LEN);
                    prop_assert_eq!(code.user_id, Uuid::from_slice(&bytes[..16]).unwrap());
                    prop_assert_eq!(code.code_id.as_uuid(), Uuid::from_slice(&bytes[16..32]).unwrap());
                }
                Err(e) => {
                    prop_assert_ne!(bytes.len(), TOKEN_LEN);
                    // The refusal says what to do, and repeats nothing of the code.
                    prop_assert!(e.to_string().contains("copy the whole link"));
                }
            }
        }

        #[test]
        fn a_minted_code_parses_back_and_verifies_only_for_its_own_binding(
            b in binding(),
            other in binding(),
            padding in "[ \t\r\n]{0,3}",
        ) {
            let ring = keyring();
            let token = ring.mint("k1", &b).unwrap();
            let code = PresentedCode::parse(&format!("{padding}{}{padding}", token.expose())).unwrap();
            prop_assert_eq!(code.user_id, b.user_id);
            prop_assert_eq!(code.code_id, b.code_id);
            prop_assert!(ring.verify("k1", &b, &code));
            prop_assert!(!ring.verify("k2", &b, &code), "another key does not verify it");
            if other != b {
                prop_assert!(!ring.verify("k1", &other, &code));
            }
        }

        #[test]
        fn a_form_signature_verifies_only_for_its_purpose_and_data(
            purpose in "[a-z]{1,10}",
            data in prop::collection::vec(any::<u8>(), 0..64),
            other in prop::collection::vec(any::<u8>(), 0..64),
            forged in ".{0,80}",
        ) {
            let ring = keyring();
            let signature = ring.sign(&purpose, &data);
            prop_assert!(ring.verify_signature(&purpose, &data, &signature));
            if other != data {
                prop_assert!(!ring.verify_signature(&purpose, &other, &signature));
            }
            let elsewhere = format!("{purpose}x");
            prop_assert!(!ring.verify_signature(&elsewhere, &data, &signature));
            // Whatever a form sends is judged, never a panic; only the signature itself passes.
            if forged != signature {
                prop_assert!(!ring.verify_signature(&purpose, &data, &forged));
            }
        }
    }
}
