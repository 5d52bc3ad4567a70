//! Personal data in event payloads, sealed with a data key of each user's own (docs/adr/0030).
//!
//! The log is append-only and hash-chained, so nothing in it can be deleted. What names a person
//! (`OnboardingEvent::personal_fields`) is therefore stored sealed: the appender moves those
//! fields of each event into one JSON object, encrypts it with AES-256-GCM under the user's data
//! key and stores the ciphertext as the event's `sealed` field. The key is a row of
//! `personal_data_keys` (migration 0018), wrapped by the configured key-encryption key when
//! there is one. Erasing the user deletes that row: her sealed fields can never be read again,
//! while the chain, which covers the ciphertext, still verifies.
//!
//! Readers open the payloads with [`PersonalKeys::open`]: a sealed field whose key is gone is
//! [`Erased`]: for the aggregate and the public events a stand-in that reads as a value of its
//! type ([`Erased::StandIn`]), for people (`audit history`, `audit export`, `onboard events`)
//! the text `<erased>`. Payloads written before sealing hold their fields in clear and are read
//! as they are.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce};
use base64::Engine;
use onboarding_config::Settings;
use onboarding_domain::OnboardingEvent;
use rand::RngCore;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::registry::UsernameRegistry;

/// The field of a payload that holds its sealed personal fields.
pub const SEALED: &str = "sealed";

/// What a person reading the log sees instead of an erased field.
pub const ERASED_TEXT: &str = "<erased>";

const NONCE: usize = 12;
const KEY: usize = 32;

/// Why personal data could not be sealed or opened. No message holds a key or a field's value.
#[derive(Debug, thiserror::Error)]
pub enum PersonalDataError {
    #[error(
        "personal_data.key_encryption_key_file {}: cannot be read; point it at a readable file \
         that holds the key-encryption key (32 random bytes, base64), or remove the key to store \
         data keys unwrapped",
        path.display()
    )]
    KekUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "personal_data.key_encryption_key_file {}: does not hold 32 bytes in base64; make one \
         with `head -c 32 /dev/urandom | base64`",
        path.display()
    )]
    KekInvalid { path: PathBuf },
    #[error(
        "the data key of account {user_id} is wrapped by the key-encryption key {wrapped_by}, \
         but {configured}; set personal_data.key_encryption_key_file to the file that holds that \
         key"
    )]
    WrongKek {
        user_id: Uuid,
        wrapped_by: String,
        configured: String,
    },
    #[error("the data key of account {user_id} cannot be unwrapped: the stored key is damaged")]
    DamagedKey { user_id: Uuid },
    #[error(
        "the sealed personal data of account {user_id} ({event_type}) cannot be opened: the \
         ciphertext is damaged or was not sealed with this account's key"
    )]
    Unopenable { user_id: Uuid, event_type: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// How a reader wants a field whose key was destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erased {
    /// A value of the field's type that says what happened (`erased`, `erased@erased.invalid`,
    /// `{}`), so that the event still deserialises: for the aggregate, the relay and the replay,
    /// which fold `UserErased` after it and drop the values again.
    StandIn,
    /// The text `<erased>`: for people reading the log.
    Text,
}

impl Erased {
    fn value(self, field: &str) -> Value {
        match (self, field) {
            (Self::Text, _) => Value::String(ERASED_TEXT.into()),
            (Self::StandIn, "email") => Value::String("erased@erased.invalid".into()),
            (Self::StandIn, "claims") => Value::Object(Map::new()),
            (Self::StandIn, _) => Value::String("erased".into()),
        }
    }
}

/// The key-encryption key: wraps every data key it is configured for.
struct Kek {
    /// `kek:` and the first 8 bytes of the key's SHA-256, in hex: names the key in
    /// `personal_data_keys.wrapped_by` without revealing it.
    id: String,
    cipher: Aes256Gcm,
}

/// The keys that seal and open personal data: the configured key-encryption key, if any, over the
/// data keys in `personal_data_keys`; and how the username registry keys names, with a key
/// derived from the same key-encryption key (docs/adr/0035).
#[derive(Clone, Default)]
pub struct PersonalKeys {
    kek: Option<Arc<Kek>>,
    registry: UsernameRegistry,
}

impl std::fmt::Debug for PersonalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonalKeys")
            .field("kek", &self.kek.as_ref().map(|k| k.id.as_str()))
            .field("registry", &self.registry.keyed_by())
            .finish()
    }
}

/// An account's data key, unwrapped.
struct DataKey(Aes256Gcm);

/// A data key drawn for an account, as the appender draws one for her first sealed event: the
/// stored (wrapped) form and the key itself. Public so that the benchmark measures sealing with
/// the store's own code (`onboarding-bench limits seal`, docs/performance.md).
pub struct DrawnKey {
    stored: Vec<u8>,
    key: DataKey,
}

impl DrawnKey {
    /// The key as `personal_data_keys.data_key` holds it (wrapped by the KEK, if one is set).
    pub fn stored(&self) -> &[u8] {
        &self.stored
    }

    /// The personal fields of one event sealed with this key, as the payload's `sealed` field
    /// holds them (base64 of nonce and ciphertext, bound to the account and the event type).
    pub fn seal(
        &self,
        aggregate_id: &str,
        event_type: &str,
        fields: &Map<String, Value>,
    ) -> String {
        seal_with(&self.key, aggregate_id, event_type, fields)
    }
}

impl PersonalKeys {
    /// The keys of `[personal_data]`: reads `key_encryption_key_file` if it is set.
    pub fn from_settings(settings: &Settings) -> Result<Self, PersonalDataError> {
        match &settings.personal_data.key_encryption_key_file {
            Some(path) => Self::from_kek_file(path),
            None => Ok(Self::default()),
        }
    }

    fn from_kek_file(path: &Path) -> Result<Self, PersonalDataError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| PersonalDataError::KekUnreadable {
                path: path.to_owned(),
                source,
            })?;
        let invalid = || PersonalDataError::KekInvalid {
            path: path.to_owned(),
        };
        let bytes = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| invalid())?,
        );
        Self::with_kek(&bytes).ok_or_else(invalid)
    }

    /// Keys whose data keys are wrapped by `kek` (32 bytes); `None` for a key of another length.
    pub fn with_kek(kek: &[u8]) -> Option<Self> {
        if kek.len() != KEY {
            return None;
        }
        let id = format!("kek:{}", hex::encode(&Sha256::digest(kek)[..8]));
        Some(Self {
            kek: Some(Arc::new(Kek {
                id,
                cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(kek)),
            })),
            registry: UsernameRegistry::keyed(kek),
        })
    }

    /// How the username registry keys names: keyed under this key-encryption key, or in clear
    /// without one.
    pub fn registry(&self) -> &UsernameRegistry {
        &self.registry
    }

    /// Which key-encryption key new data keys are wrapped by (`none`, or `kek:<fingerprint>`).
    pub fn wrapped_by(&self) -> &str {
        self.kek.as_ref().map_or("none", |k| k.id.as_str())
    }

    fn wrap(&self, user_id: Uuid, key: &[u8; KEY]) -> Vec<u8> {
        match &self.kek {
            None => key.to_vec(),
            Some(kek) => seal_bytes(&kek.cipher, key, user_id.as_bytes()),
        }
    }

    fn unwrap(
        &self,
        user_id: Uuid,
        stored: &[u8],
        wrapped_by: &str,
    ) -> Result<DataKey, PersonalDataError> {
        let damaged = || PersonalDataError::DamagedKey { user_id };
        let key = if wrapped_by == "none" {
            zeroize::Zeroizing::new(stored.to_vec())
        } else {
            match &self.kek {
                Some(kek) if kek.id == wrapped_by => zeroize::Zeroizing::new(
                    open_bytes(&kek.cipher, stored, user_id.as_bytes()).ok_or_else(damaged)?,
                ),
                other => {
                    return Err(PersonalDataError::WrongKek {
                        user_id,
                        wrapped_by: wrapped_by.to_owned(),
                        configured: match other {
                            Some(kek) => format!("the configured one is {}", kek.id),
                            None => "none is configured".to_owned(),
                        },
                    })
                }
            }
        };
        if key.len() != KEY {
            return Err(damaged());
        }
        Ok(DataKey(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))))
    }

    /// Draws a data key for `user_id` and wraps it as it is stored.
    pub fn draw(&self, user_id: Uuid) -> DrawnKey {
        let mut raw = zeroize::Zeroizing::new([0u8; KEY]);
        rand::rngs::OsRng.fill_bytes(raw.as_mut());
        DrawnKey {
            stored: self.wrap(user_id, &raw),
            key: DataKey(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(raw.as_ref()))),
        }
    }

    /// The data keys of these accounts that still have one.
    async fn keys_of(
        &self,
        conn: &mut PgConnection,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, DataKey>, PersonalDataError> {
        let rows: Vec<(Uuid, Vec<u8>, String)> = sqlx::query_as(
            // Through the primary key whatever the table's statistics say (migration 0024).
            "SELECT user_id, data_key, wrapped_by FROM personal_data_keys_of($1)",
        )
        .bind(ids)
        .fetch_all(conn)
        .await?;
        rows.into_iter()
            .map(|(id, key, wrapped_by)| Ok((id, self.unwrap(id, &key, &wrapped_by)?)))
            .collect()
    }

    /// Seals the personal fields of `events` (in the append's transaction, before they are
    /// inserted), drawing a data key for each account that has none yet (stored in one
    /// statement for the whole batch). Returns, per event,
    /// the fields it sealed in clear, for the projections the store writes beside the insert.
    pub(crate) async fn seal(
        &self,
        conn: &mut PgConnection,
        events: &mut [ToSeal<'_>],
    ) -> Result<Vec<Option<Map<String, Value>>>, PersonalDataError> {
        let mut ids: Vec<Uuid> = events
            .iter()
            .filter(|e| e.has_personal_fields())
            .filter_map(|e| Uuid::parse_str(e.aggregate_id).ok())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut keys = if ids.is_empty() {
            HashMap::new()
        } else {
            self.keys_of(conn, &ids).await?
        };
        let mut cleared = Vec::with_capacity(events.len());
        // The keys drawn for accounts that had none, written in one statement after the loop.
        let (mut drawn_for, mut drawn_keys) = (Vec::new(), Vec::new());
        for event in events.iter_mut() {
            let Some(fields) = event.take_personal_fields() else {
                cleared.push(None);
                continue;
            };
            let Ok(user_id) = Uuid::parse_str(event.aggregate_id) else {
                // Not an account's event: nothing to seal it for; put the fields back.
                event.put_back(fields.clone());
                cleared.push(None);
                continue;
            };
            let key = match keys.entry(user_id) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(none) => {
                    let drawn = self.draw(user_id);
                    drawn_for.push(user_id);
                    drawn_keys.push(drawn.stored);
                    none.insert(drawn.key)
                }
            };
            event.set_sealed(seal_with(
                key,
                event.aggregate_id,
                event.event_type,
                &fields,
            ));
            cleared.push(Some(fields));
        }
        if !drawn_for.is_empty() {
            sqlx::query(
                "INSERT INTO personal_data_keys (user_id, data_key, wrapped_by) \
                 SELECT user_id, data_key, $3 FROM unnest($1::uuid[], $2::bytea[]) \
                 AS k(user_id, data_key)",
            )
            .bind(&drawn_for)
            .bind(&drawn_keys)
            .bind(self.wrapped_by())
            .execute(&mut *conn)
            .await?;
        }
        Ok(cleared)
    }

    /// Opens the sealed payloads among `rows` in place: their fields back in clear, or, for an
    /// account whose key was destroyed, `erased`'s stand-ins. Payloads in clear are left as they
    /// are.
    pub async fn open(
        &self,
        conn: &mut PgConnection,
        rows: &mut [ToOpen<'_>],
        erased: Erased,
    ) -> Result<(), PersonalDataError> {
        let mut ids: Vec<Uuid> = rows
            .iter()
            .filter(|r| r.sealed().is_some())
            .filter_map(|r| Uuid::parse_str(r.aggregate_id).ok())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort_unstable();
        ids.dedup();
        let keys = self.keys_of(conn, &ids).await?;
        for row in rows.iter_mut() {
            open_one(row, &keys, erased)?;
        }
        Ok(())
    }
}

impl PersonalKeys {
    /// Opens one payload with its account's key row (`data_key`, `wrapped_by`) as a reader that
    /// streams the log reads it beside the event (`LEFT JOIN personal_data_keys`); `None` when the
    /// account has no key (erased, or never sealed).
    pub fn open_with_key(
        &self,
        row: &mut ToOpen<'_>,
        key: Option<(&[u8], &str)>,
        erased: Erased,
    ) -> Result<(), PersonalDataError> {
        if row.sealed().is_none() {
            return Ok(());
        }
        let Ok(user_id) = Uuid::parse_str(row.aggregate_id) else {
            return Ok(());
        };
        let mut keys = HashMap::new();
        if let Some((stored, wrapped_by)) = key {
            keys.insert(user_id, self.unwrap(user_id, stored, wrapped_by)?);
        }
        open_one(row, &keys, erased)
    }
}

impl PersonalKeys {
    /// One account's data key, unwrapped once for all her events, as a reader that streams the
    /// log account by account holds it (the replay): `stored` is her key row (`data_key`,
    /// `wrapped_by`), `None` when she has none (erased, or never sealed).
    pub fn account_key(
        &self,
        user_id: Uuid,
        stored: Option<(&[u8], &str)>,
    ) -> Result<AccountKey, PersonalDataError> {
        Ok(AccountKey {
            user_id,
            key: stored
                .map(|(stored, wrapped_by)| self.unwrap(user_id, stored, wrapped_by))
                .transpose()?,
        })
    }
}

/// An account's data key, unwrapped ([`PersonalKeys::account_key`]).
pub struct AccountKey {
    user_id: Uuid,
    key: Option<DataKey>,
}

impl AccountKey {
    /// Opens one of her payloads as [`PersonalKeys::open_with_key`] does; an event of another
    /// account is opened as one whose key is gone.
    pub fn open(&self, row: &mut ToOpen<'_>, erased: Erased) -> Result<(), PersonalDataError> {
        if row.sealed().is_none() {
            return Ok(());
        }
        let Ok(user_id) = Uuid::parse_str(row.aggregate_id) else {
            return Ok(());
        };
        let key = self.key.as_ref().filter(|_| user_id == self.user_id);
        open_fields(row, user_id, key, erased)
    }
}

fn open_one(
    row: &mut ToOpen<'_>,
    keys: &HashMap<Uuid, DataKey>,
    erased: Erased,
) -> Result<(), PersonalDataError> {
    if row.sealed().is_none() {
        return Ok(());
    }
    let Ok(user_id) = Uuid::parse_str(row.aggregate_id) else {
        return Ok(());
    };
    open_fields(row, user_id, keys.get(&user_id), erased)
}

/// Opens a sealed payload of `user_id` with her key, or puts `erased`'s stand-ins in without it.
fn open_fields(
    row: &mut ToOpen<'_>,
    user_id: Uuid,
    key: Option<&DataKey>,
    erased: Erased,
) -> Result<(), PersonalDataError> {
    let Some(sealed) = row.sealed().map(str::to_owned) else {
        return Ok(());
    };
    let unopenable = || PersonalDataError::Unopenable {
        user_id,
        event_type: row.event_type.to_owned(),
    };
    let fields: Map<String, Value> = match key {
        Some(key) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&sealed)
                .map_err(|_| unopenable())?;
            let plain = open_bytes(
                &key.0,
                &bytes,
                aad(row.aggregate_id, row.event_type).as_bytes(),
            )
            .ok_or_else(unopenable)?;
            serde_json::from_slice(&plain).map_err(|_| unopenable())?
        }
        None => OnboardingEvent::personal_fields(row.event_type)
            .iter()
            .map(|f| ((*f).to_owned(), erased.value(f)))
            .collect(),
    };
    if let Some(object) = row.fields_mut() {
        object.remove(SEALED);
        object.extend(fields);
    }
    Ok(())
}

/// Whether a stored payload of `event_type` holds sealed personal fields.
pub fn is_sealed(event_type: &str, payload: &Value) -> bool {
    payload
        .get(event_type)
        .and_then(|fields| fields.get(SEALED))
        .is_some()
}

/// Binds a sealed object to its account and event type: a ciphertext copied into another
/// account's event, or into another type of event, does not open.
fn aad(aggregate_id: &str, event_type: &str) -> String {
    format!("onboard-personal-v1\n{aggregate_id}\n{event_type}")
}

/// `fields` as JSON, sealed under `key` for this account and event type, in base64.
fn seal_with(
    key: &DataKey,
    aggregate_id: &str,
    event_type: &str,
    fields: &Map<String, Value>,
) -> String {
    let plain = serde_json::to_vec(fields).expect("JSON values always serialise");
    let sealed = seal_bytes(&key.0, &plain, aad(aggregate_id, event_type).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sealed)
}

/// A 12-byte random nonce followed by the AES-256-GCM ciphertext of `plain`.
fn seal_bytes(cipher: &Aes256Gcm, plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        .expect("AES-GCM seals any message shorter than 64 GiB");
    let mut out = Vec::with_capacity(NONCE + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

fn open_bytes(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

/// One event on its way into the log.
pub(crate) struct ToSeal<'a> {
    pub aggregate_id: &'a str,
    pub event_type: &'a str,
    pub payload: &'a mut Value,
}

impl ToSeal<'_> {
    fn fields_mut(&mut self) -> Option<&mut Map<String, Value>> {
        self.payload
            .get_mut(self.event_type)
            .and_then(Value::as_object_mut)
    }

    fn has_personal_fields(&self) -> bool {
        let personal = OnboardingEvent::personal_fields(self.event_type);
        self.payload
            .get(self.event_type)
            .and_then(Value::as_object)
            .is_some_and(|o| personal.iter().any(|f| o.contains_key(*f)))
    }

    fn take_personal_fields(&mut self) -> Option<Map<String, Value>> {
        let personal = OnboardingEvent::personal_fields(self.event_type);
        let object = self.fields_mut()?;
        let taken: Map<String, Value> = personal
            .iter()
            .filter_map(|f| object.remove(*f).map(|v| ((*f).to_owned(), v)))
            .collect();
        (!taken.is_empty()).then_some(taken)
    }

    fn put_back(&mut self, fields: Map<String, Value>) {
        if let Some(object) = self.fields_mut() {
            object.extend(fields);
        }
    }

    fn set_sealed(&mut self, sealed: String) {
        if let Some(object) = self.fields_mut() {
            object.insert(SEALED.to_owned(), Value::String(sealed));
        }
    }
}

/// One stored event on its way to a reader.
pub struct ToOpen<'a> {
    pub aggregate_id: &'a str,
    pub event_type: &'a str,
    pub payload: &'a mut Value,
}

impl ToOpen<'_> {
    fn sealed(&self) -> Option<&str> {
        self.payload.get(self.event_type)?.get(SEALED)?.as_str()
    }

    fn fields_mut(&mut self) -> Option<&mut Map<String, Value>> {
        self.payload
            .get_mut(self.event_type)
            .and_then(Value::as_object_mut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invited() -> Value {
        serde_json::json!({"UserInvited": {
            "user_id": "0190a0c4-0000-7000-8000-000000000001",
            "username": "Jane", "email": "jane@pickup.example", "domain": "PRIMARY",
            "claims": {"givenName": "Jane"}, "locale": null, "time_zone": null,
            "invited_at": "2026-12-01T10:00:00Z"}})
    }

    const ID: &str = "0190a0c4-0000-7000-8000-000000000001";

    /// Seals without a database: the key table is the test's map.
    fn seal_with(key: &DataKey, payload: &mut Value) {
        let mut e = ToSeal {
            aggregate_id: ID,
            event_type: "UserInvited",
            payload,
        };
        let fields = e.take_personal_fields().unwrap();
        let plain = serde_json::to_vec(&Value::Object(fields)).unwrap();
        let sealed = seal_bytes(&key.0, &plain, aad(ID, "UserInvited").as_bytes());
        e.set_sealed(base64::engine::general_purpose::STANDARD.encode(sealed));
    }

    fn key() -> DataKey {
        DataKey(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&[7u8; 32])))
    }

    fn open_with(keys: &HashMap<Uuid, DataKey>, payload: &mut Value, erased: Erased) {
        let mut row = ToOpen {
            aggregate_id: ID,
            event_type: "UserInvited",
            payload,
        };
        open_one(&mut row, keys, erased).unwrap();
    }

    #[test]
    fn a_sealed_invitation_holds_no_personal_field_and_opens_to_what_was_sealed() {
        let mut payload = invited();
        seal_with(&key(), &mut payload);
        let text = payload.to_string();
        for clear in ["Jane", "jane@pickup.example", "givenName"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        assert!(text.contains("PRIMARY"), "{text}");
        let keys = HashMap::from([(Uuid::parse_str(ID).unwrap(), key())]);
        open_with(&keys, &mut payload, Erased::Text);
        assert_eq!(payload, invited());
    }

    #[test]
    fn without_its_key_a_sealed_invitation_opens_to_erased_fields() {
        let mut payload = invited();
        seal_with(&key(), &mut payload);
        let mut for_people = payload.clone();
        open_with(&HashMap::new(), &mut for_people, Erased::Text);
        assert_eq!(for_people["UserInvited"]["email"], ERASED_TEXT);
        assert_eq!(for_people["UserInvited"]["username"], ERASED_TEXT);
        open_with(&HashMap::new(), &mut payload, Erased::StandIn);
        let event: OnboardingEvent = serde_json::from_value(payload).unwrap();
        let OnboardingEvent::UserInvited {
            email,
            username,
            claims,
            ..
        } = event
        else {
            panic!("not an invitation");
        };
        assert_eq!(email.as_str(), "erased@erased.invalid");
        assert_eq!(username.as_str(), "erased");
        assert!(claims.is_empty());
    }

    #[test]
    fn a_sealed_object_does_not_open_under_another_account_or_key() {
        let mut payload = invited();
        seal_with(&key(), &mut payload);
        let other = DataKey(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&[8u8; 32])));
        let keys = HashMap::from([(Uuid::parse_str(ID).unwrap(), other)]);
        let mut row = ToOpen {
            aggregate_id: ID,
            event_type: "UserInvited",
            payload: &mut payload,
        };
        let err = open_one(&mut row, &keys, Erased::Text).unwrap_err();
        assert!(matches!(err, PersonalDataError::Unopenable { .. }), "{err}");
        let sealed = seal_bytes(&key().0, b"{}", aad(ID, "UserInvited").as_bytes());
        assert!(open_bytes(&key().0, &sealed, aad(ID, "InvitationRevoked").as_bytes()).is_none());
    }

    #[test]
    fn an_account_key_unwrapped_once_opens_her_payloads_and_no_other_accounts() {
        let keys = PersonalKeys::with_kek(&[1u8; 32]).unwrap();
        let user = Uuid::parse_str(ID).unwrap();
        let stored = keys.wrap(user, &[7u8; 32]);
        let key = keys
            .account_key(user, Some((&stored, keys.wrapped_by())))
            .unwrap();
        let mut payload = invited();
        seal_with(&self::key(), &mut payload);
        let mut hers = payload.clone();
        key.open(
            &mut ToOpen {
                aggregate_id: ID,
                event_type: "UserInvited",
                payload: &mut hers,
            },
            Erased::Text,
        )
        .unwrap();
        assert_eq!(hers, invited());
        // Held for another account, it opens nothing of hers: her fields read as erased.
        let other = keys.account_key(Uuid::nil(), None).unwrap();
        let mut erased = payload.clone();
        other
            .open(
                &mut ToOpen {
                    aggregate_id: ID,
                    event_type: "UserInvited",
                    payload: &mut erased,
                },
                Erased::Text,
            )
            .unwrap();
        assert_eq!(erased["UserInvited"]["email"], ERASED_TEXT);
        // A key row wrapped by another key-encryption key is refused when it is unwrapped.
        assert!(matches!(
            PersonalKeys::default().account_key(user, Some((&stored, keys.wrapped_by()))),
            Err(PersonalDataError::WrongKek { .. })
        ));
    }

    #[test]
    fn a_data_key_wrapped_by_a_kek_unwraps_only_with_it() {
        let keys = PersonalKeys::with_kek(&[1u8; 32]).unwrap();
        let user = Uuid::parse_str(ID).unwrap();
        let wrapped = keys.wrap(user, &[9u8; 32]);
        assert_ne!(&wrapped[..], &[9u8; 32][..]);
        assert!(keys.unwrap(user, &wrapped, keys.wrapped_by()).is_ok());
        let err = PersonalKeys::default()
            .unwrap(user, &wrapped, keys.wrapped_by())
            .err()
            .unwrap();
        assert!(err.to_string().contains("none is configured"), "{err}");
        let other = PersonalKeys::with_kek(&[2u8; 32]).unwrap();
        assert!(matches!(
            other.unwrap(user, &wrapped, keys.wrapped_by()),
            Err(PersonalDataError::WrongKek { .. })
        ));
        // Bound to the account: another account's row does not unwrap with this one's bytes.
        assert!(matches!(
            keys.unwrap(Uuid::nil(), &wrapped, keys.wrapped_by()),
            Err(PersonalDataError::DamagedKey { .. })
        ));
        assert!(PersonalKeys::with_kek(&[1u8; 16]).is_none());
    }

    #[test]
    fn the_key_encryption_key_keys_the_username_registry_too_and_without_it_names_stay_in_clear() {
        let keys = PersonalKeys::with_kek(&[1u8; 32]).unwrap();
        let keyed_by = keys.registry().keyed_by().unwrap();
        assert!(keyed_by.starts_with("hmac-sha256:"), "{keyed_by}");
        // A key of its own (HKDF), not the key-encryption key: another fingerprint.
        assert_ne!(
            &keyed_by["hmac-sha256:".len()..],
            &keys.wrapped_by()["kek:".len()..]
        );
        assert!(format!("{keys:?}").contains(keyed_by));
        assert_eq!(PersonalKeys::default().registry().keyed_by(), None);
        assert_eq!(
            PersonalKeys::default()
                .registry()
                .stored_key("PRIMARY", "jane"),
            "jane"
        );
    }
}
