//! Invitation requests from upstream services (an HR system, a signup service) on Kafka.
//!
//! Upstream services publish JSON CloudEvents (structured mode) whose `type` ends in
//! `user.invitation.requested` on `intake.requests_topic`. For each record the intake:
//! 1. classifies it: a record that is not such a request (not JSON, not a CloudEvent, another
//!    type, `data` not of the schema) goes to `intake.dead_letter_topic` unchanged, with the
//!    machine-readable reason in the `onboard_dlq_reason` header;
//! 2. invites through `Store::invite_as` (the one invitation path) with the user id
//!    UUIDv5(source, id), so a redelivered record or an upstream retry with the same id finds
//!    its own invitation and is accepted again with the same user id, never invited twice;
//! 3. publishes the outcome (binary mode: `ce_type` `onboard.user.invitation.accepted.v1` or
//!    `….rejected.v1`, `ce_correlationid` = the request's id, `ce_correlationsource` = its source)
//!    on `intake.outcomes_topic`, keyed by that user id;
//! 4. stores the record's offset only after the outcome (or dead letter) was acknowledged.
//!    A database or broker outage retries the same record; nothing is skipped.
//!
//! Invalid records never block the partition: they are dead-lettered and passed.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use onboarding_config::Settings;
use onboarding_relay::kafka::{base_config, group_consumer_config, producer};
use onboarding_store::{Actor, InvitationFields, InviteError, Store, StoreError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A request's `type` must end with this (e.g. `com.pickup.hr.user.invitation.requested`),
/// optionally followed by a version suffix (`.v1`).
pub const REQUEST_TYPE_SUFFIX: &str = "user.invitation.requested";
pub const ACCEPTED_TYPE: &str = "onboard.user.invitation.accepted.v1";
pub const REJECTED_TYPE: &str = "onboard.user.invitation.rejected.v1";
pub use onboarding_relay::kafka::DLQ_REASON_HEADER;

/// Namespace of the user ids derived from a request's (source, id).
const INTAKE_NAMESPACE: Uuid = Uuid::from_u128(0x6f6e_626f_6172_642d_696e_7461_6b65_7631);

/// The user id a request invites: the same for every delivery of the same (source, id).
pub fn request_user_id(source: &str, id: &str) -> Uuid {
    Uuid::new_v5(&INTAKE_NAMESPACE, format!("{source}\n{id}").as_bytes())
}

/// An invitation request: a CloudEvent (JSON, structured mode). Extension attributes are
/// allowed and ignored.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct InvitationRequested {
    /// Must be `1.0`.
    pub specversion: String,
    /// Unique per request within `source`: a retry of the same request reuses it.
    pub id: String,
    /// The upstream service, e.g. `urn:pickup:hr`.
    pub source: String,
    /// Ends with `user.invitation.requested`, e.g. `com.pickup.hr.user.invitation.requested`.
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `application/json` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    pub data: InvitationRequestData,
}

/// What to invite. Unknown fields (and any `password`) are refused.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationRequestData {
    pub username: String,
    pub email: String,
    /// User store domain; `PRIMARY` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Language of the user's mails, e.g. `de-AT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// IANA time zone (`Europe/Berlin`): the mail states the link's expiry in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Claims kept with the invitation (`name`, `given_name`, `family_name`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<BTreeMap<String, Value>>,
    /// Minutes the mailed code stays valid (within the configured bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_validity_minutes: Option<i64>,
}

/// The outcome of one request (the value of an `onboard.user.invitation.accepted.v1` or
/// `….rejected.v1` record; the CloudEvents attributes are headers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvitationOutcome {
    /// The request's `id` (also the `ce_correlationid` header).
    pub request_id: String,
    /// The request's `source` (also the `ce_correlationsource` header).
    pub request_source: String,
    /// `accepted` or `rejected`.
    pub status: String,
    /// The invited user's id (accepted only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// Why the request was rejected (rejected only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RejectReason {
    /// `invalid_fields`, `username_taken`, `request_id_reused`, `invitations_disabled` or
    /// `refused`.
    pub code: String,
    pub message: String,
    /// Field → problem, for `invalid_fields`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// Why a record went to the dead-letter topic (the `onboard_dlq_reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetter {
    /// The value is not JSON (or is empty).
    NotJson,
    /// JSON, but not a CloudEvent 1.0 with string `id`, `source`, `type`.
    NotCloudEvent,
    /// A CloudEvent of another type.
    UnsupportedType,
    /// A `data` that is not an object of the request schema (e.g. a missing email, a password).
    InvalidData,
}

impl DeadLetter {
    pub fn code(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::NotCloudEvent => "not_a_cloudevent",
            Self::UnsupportedType => "unsupported_type",
            Self::InvalidData => "invalid_data",
        }
    }
}

/// Reads a record's value as an invitation request, or says why it is a dead letter (with a
/// detail that names fields, never their values).
pub fn classify(value: Option<&[u8]>) -> Result<InvitationRequested, (DeadLetter, String)> {
    let value = value.unwrap_or_default();
    let json: Value = serde_json::from_slice(value).map_err(|e| {
        (
            DeadLetter::NotJson,
            format!(
                "the value is not JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let Value::Object(map) = &json else {
        return Err((
            DeadLetter::NotCloudEvent,
            "the value is not a JSON object".into(),
        ));
    };
    let attr = |k: &str| map.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    if attr("specversion") != Some("1.0") {
        return Err((
            DeadLetter::NotCloudEvent,
            "specversion must be \"1.0\" (CloudEvents JSON, structured mode)".into(),
        ));
    }
    for k in ["id", "source", "type"] {
        match attr(k) {
            None => {
                return Err((
                    DeadLetter::NotCloudEvent,
                    format!("the CloudEvents attribute `{k}` must be a non-empty string"),
                ))
            }
            Some(v) if v.chars().count() > 255 => {
                return Err((
                    DeadLetter::NotCloudEvent,
                    format!("the CloudEvents attribute `{k}` must be at most 255 characters"),
                ))
            }
            Some(_) => {}
        }
    }
    let ty = attr("type").unwrap_or_default();
    let base = ty
        .rsplit_once('.')
        .filter(|(_, v)| {
            v.len() > 1 && v.starts_with('v') && v[1..].chars().all(|c| c.is_ascii_digit())
        })
        .map_or(ty, |(b, _)| b);
    if !(base == REQUEST_TYPE_SUFFIX || base.ends_with(&format!(".{REQUEST_TYPE_SUFFIX}"))) {
        return Err((
            DeadLetter::UnsupportedType,
            format!("type must end with `{REQUEST_TYPE_SUFFIX}`"),
        ));
    }
    if let Some(ct) = attr("datacontenttype") {
        if !ct.starts_with("application/json") {
            return Err((
                DeadLetter::InvalidData,
                "datacontenttype must be application/json".into(),
            ));
        }
    }
    let data = map.get("data");
    if data
        .and_then(Value::as_object)
        .is_some_and(|d| d.contains_key("password"))
    {
        return Err((
            DeadLetter::InvalidData,
            "data.password is not accepted: the user chooses a password from the mailed link"
                .into(),
        ));
    }
    serde_json::from_value::<InvitationRequested>(json.clone()).map_err(|e| {
        // serde's messages can quote values; keep only the shape of the problem.
        let msg = e.to_string();
        let detail = if let Some(field) = msg.strip_prefix("missing field ") {
            format!("data is missing the field {field}")
        } else if msg.starts_with("unknown field") {
            msg.split(", expected").next().unwrap_or(&msg).replace("unknown field", "data has an unknown field")
        } else {
            "data must be an object with string username and email, and optionally domain, locale, time_zone, claims (object), code_validity_minutes (integer)".to_owned()
        };
        (DeadLetter::InvalidData, detail)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// The consumer of invitation requests.
pub struct Intake {
    store: Store,
    settings: std::sync::Arc<Settings>,
    consumer: StreamConsumer,
    consumer_config: rdkafka::ClientConfig,
    producer: FutureProducer,
}

impl Intake {
    pub fn new(settings: std::sync::Arc<Settings>, store: Store) -> Result<Self, IntakeError> {
        let consumer_config = group_consumer_config(&settings.kafka, &settings.intake.group);
        let consumer: StreamConsumer = consumer_config.create()?;
        consumer.subscribe(&[&settings.intake.requests_topic])?;
        Ok(Self {
            producer: producer(&settings.kafka)?,
            store,
            settings,
            consumer,
            consumer_config,
        })
    }

    /// Consumes until `shutdown`; commits the stored offsets on the way out.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), IntakeError> {
        tracing::info!(topic = %self.settings.intake.requests_topic, "intake started");
        let mut disrupted = false;
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = tokio::time::timeout(Duration::from_secs(10), self.consumer.recv()) => m,
            };
            let msg = match msg {
                Ok(Ok(m)) => {
                    disrupted = false;
                    m
                }
                Ok(Err(e)) => {
                    disrupted = true;
                    tracing::warn!(error = %e, "kafka receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(_quiet) if disrupted => {
                    // A broker that came back without our group leaves the consumer waiting.
                    tracing::warn!(
                        "no records since the broker came back; rejoining the consumer group"
                    );
                    let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
                    let consumer: StreamConsumer = self.consumer_config.create()?;
                    consumer.subscribe(&[&self.settings.intake.requests_topic])?;
                    self.consumer = consumer;
                    disrupted = false;
                    continue;
                }
                Err(_quiet) => continue,
            };
            let mut backoff = Duration::from_millis(200);
            loop {
                match self.process(&msg).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot record the request's outcome; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return self.close(),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            self.consumer.store_offset_from_message(&msg)?;
        }
        self.close()
    }

    fn close(self) -> Result<(), IntakeError> {
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(error = %e, "final offset commit failed; requests may be seen again (harmless)");
        }
        tracing::info!("intake stopped");
        Ok(())
    }

    /// Handles one record completely (outcome or dead letter acknowledged by the broker).
    async fn process(&self, msg: &BorrowedMessage<'_>) -> Result<(), ProcessError> {
        let request = match classify(msg.payload()) {
            Ok(r) => r,
            Err((reason, detail)) => {
                metrics::counter!("onboard_intake_requests_total", "outcome" => reason.code())
                    .increment(1);
                tracing::info!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    reason = reason.code(),
                    "request dead-lettered"
                );
                return self.dead_letter(msg, reason, &detail).await;
            }
        };
        let user_id = request_user_id(&request.source, &request.id);
        let outcome = self.invite(&request, user_id).await?;
        let label = outcome
            .reason
            .as_ref()
            .map_or("accepted", |r| r.code.as_str())
            .to_owned();
        metrics::counter!("onboard_intake_requests_total", "outcome" => label.clone()).increment(1);
        tracing::info!(%user_id, outcome = %label, "invitation request handled");
        self.publish_outcome(&request, user_id, &outcome).await
    }

    async fn invite(
        &self,
        request: &InvitationRequested,
        user_id: Uuid,
    ) -> Result<InvitationOutcome, ProcessError> {
        let reject =
            |code: &str, message: String, fields: BTreeMap<String, String>| InvitationOutcome {
                request_id: request.id.clone(),
                request_source: request.source.clone(),
                status: "rejected".into(),
                user_id: None,
                reason: Some(RejectReason {
                    code: code.into(),
                    message,
                    fields,
                }),
            };
        let cfg = &self.settings.identity_mgt.user_onboarding;
        if let Err(disabled) = cfg.invitations_enabled() {
            return Ok(reject(
                "invitations_disabled",
                disabled.to_string(),
                BTreeMap::new(),
            ));
        }
        let d = &request.data;
        let fields = InvitationFields {
            username: Some(&d.username),
            email: Some(&d.email),
            domain: d.domain.as_deref(),
            locale: d.locale.as_deref(),
            time_zone: d.time_zone.as_deref(),
            code_validity_minutes: d.code_validity_minutes,
            claims: d.claims.clone().unwrap_or_default(),
        };
        let invitation = match fields.validate(cfg) {
            Ok(invitation) => invitation,
            Err(problems) => {
                let message = problems.to_string();
                let by_field = problems
                    .0
                    .into_iter()
                    .map(|(field, problem)| (field.to_owned(), problem))
                    .collect();
                return Ok(reject("invalid_fields", message, by_field));
            }
        };
        let actor = Actor {
            kind: "upstream",
            id: request.source.clone(),
            correlation_id: Some(request.id.clone()),
        };
        let accepted = InvitationOutcome {
            request_id: request.id.clone(),
            request_source: request.source.clone(),
            status: "accepted".into(),
            user_id: Some(user_id),
            reason: None,
        };
        match self.store.invite_as(user_id, invitation, &actor).await {
            Ok(_) => {
                metrics::counter!("onboard_invitations_total").increment(1);
                Ok(accepted)
            }
            Err(InviteError::UsernameTaken {
                username,
                domain,
                holder,
            }) => {
                if holder == Some(user_id) {
                    // Redelivery or an upstream retry: this request's invitation exists.
                    Ok(accepted)
                } else if self.store.load(user_id).await?.is_some() {
                    Ok(reject(
                        "request_id_reused",
                        format!(
                            "the request id was already used by {} for another username; use a new id for a new request",
                            request.source
                        ),
                        BTreeMap::new(),
                    ))
                } else {
                    Ok(reject(
                        "username_taken",
                        format!("the username `{username}` already exists in domain {domain}"),
                        BTreeMap::new(),
                    ))
                }
            }
            Err(InviteError::Store(StoreError::Refused(e))) => {
                Ok(reject("refused", e.to_string(), BTreeMap::new()))
            }
            Err(InviteError::Store(e)) => Err(e.into()),
        }
    }

    async fn publish_outcome(
        &self,
        request: &InvitationRequested,
        user_id: Uuid,
        outcome: &InvitationOutcome,
    ) -> Result<(), ProcessError> {
        let ce_type = if outcome.status == "accepted" {
            ACCEPTED_TYPE
        } else {
            REJECTED_TYPE
        };
        // Stable across redeliveries of the request, so consumers can drop repeats.
        let ce_id = Uuid::new_v5(&user_id, ce_type.as_bytes()).to_string();
        let value = serde_json::to_vec(outcome).map_err(|e| ProcessError::Encode(e.to_string()))?;
        let time = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let user = user_id.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(9);
        for (key, value) in [
            ("ce_specversion", "1.0"),
            ("ce_id", ce_id.as_str()),
            ("ce_type", ce_type),
            ("ce_source", self.settings.kafka.source.as_str()),
            ("ce_time", time.as_str()),
            ("ce_correlationid", request.id.as_str()),
            ("ce_correlationsource", request.source.as_str()),
            ("content-type", "application/json"),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        if outcome.user_id.is_some() {
            headers = headers.insert(Header {
                key: "ce_subject",
                value: Some(user.as_str()),
            });
        }
        let record = FutureRecord::to(&self.settings.intake.outcomes_topic)
            .key(&user)
            .payload(&value)
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| ProcessError::Kafka(e))?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        msg: &BorrowedMessage<'_>,
        reason: DeadLetter,
        detail: &str,
    ) -> Result<(), ProcessError> {
        onboarding_relay::kafka::dead_letter(
            &self.producer,
            &self.settings.intake.dead_letter_topic,
            msg,
            reason.code(),
            detail,
        )
        .await
        .map_err(ProcessError::Kafka)?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("kafka: {0}")]
    Kafka(KafkaError),
    #[error("cannot encode the outcome: {0}")]
    Encode(String),
}

/// Creates the requests, outcomes and dead-letter topics if they do not exist.
pub async fn create_topics(settings: &Settings) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_config(&settings.kafka).create()?;
    let i = &settings.intake;
    let topics: Vec<NewTopic<'_>> = [&i.requests_topic, &i.outcomes_topic, &i.dead_letter_topic]
        .into_iter()
        .map(|t| {
            NewTopic::new(
                t,
                i.partitions,
                TopicReplication::Fixed(settings.kafka.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&topics, &opts).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions = i.partitions, "topic created"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(topic = %name, "topic exists")
            }
            Err((name, code)) => {
                tracing::error!(topic = %name, error = %code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// The JSON Schemas of the intake's records, for `schemas/intake/`.
pub fn schemas() -> Vec<(String, Value)> {
    fn one<T: JsonSchema>(id: &str, title: &str) -> (String, Value) {
        let mut schema = serde_json::to_value(schemars::schema_for!(T)).expect("schema serialises");
        if let Some(obj) = schema.as_object_mut() {
            obj.insert("$id".into(), json!(format!("urn:onboard:schema:{id}")));
            obj.insert("title".into(), json!(title));
        }
        (format!("{id}.json"), schema)
    }
    vec![
        one::<InvitationRequested>(
            "user.invitation.requested",
            "An upstream service's invitation request (CloudEvent, JSON structured mode)",
        ),
        one::<InvitationOutcome>(
            "onboard.user.invitation.outcome.v1",
            "The value of onboard.user.invitation.accepted.v1 and onboard.user.invitation.rejected.v1 records",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(data: Value) -> Vec<u8> {
        json!({
            "specversion": "1.0", "id": "req-1", "source": "urn:pickup:hr",
            "type": "com.pickup.hr.user.invitation.requested", "data": data,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn requests_are_told_from_dead_letters_with_a_reason() {
        let ok = classify(Some(&request(
            json!({"username": "jane", "email": "jane@pickup.example"}),
        )))
        .unwrap();
        assert_eq!(ok.data.username, "jane");
        let reason = |v: &[u8]| classify(Some(v)).unwrap_err().0;
        assert_eq!(reason(b"not json"), DeadLetter::NotJson);
        assert_eq!(reason(b""), DeadLetter::NotJson);
        assert_eq!(reason(b"[1]"), DeadLetter::NotCloudEvent);
        assert_eq!(
            reason(br#"{"specversion":"1.0","id":"x","type":"a.user.invitation.requested"}"#),
            DeadLetter::NotCloudEvent
        );
        assert_eq!(
            reason(br#"{"specversion":"1.0","id":"x","source":"s","type":"com.x.user.deleted","data":{}}"#),
            DeadLetter::UnsupportedType
        );
        assert_eq!(
            reason(&request(json!({"username": "jane"}))),
            DeadLetter::InvalidData
        );
        let (r, detail) = classify(Some(&request(
            json!({"username": "j", "email": "j@x.example", "password": "Hunter2!"}),
        )))
        .unwrap_err();
        assert_eq!(r, DeadLetter::InvalidData);
        assert!(!detail.contains("Hunter2"), "{detail}");
        let (_, detail) =
            classify(Some(&request(json!({"username": "j", "email": 42})))).unwrap_err();
        assert!(!detail.contains("42"), "{detail}");
        // A version suffix is allowed; a type that merely contains the words is not.
        let v1 = br#"{"specversion":"1.0","id":"x","source":"s","type":"com.x.user.invitation.requested.v1","data":{"username":"a","email":"a@x.example"}}"#;
        assert!(classify(Some(v1)).is_ok());
        let fake = br#"{"specversion":"1.0","id":"x","source":"s","type":"com.x.notuser.invitation.requested","data":{"username":"a","email":"a@x.example"}}"#;
        assert_eq!(reason(fake), DeadLetter::UnsupportedType);
    }

    #[test]
    fn the_user_id_depends_on_source_and_id_only() {
        assert_eq!(
            request_user_id("urn:hr", "1"),
            request_user_id("urn:hr", "1")
        );
        assert_ne!(
            request_user_id("urn:hr", "1"),
            request_user_id("urn:signup", "1")
        );
        assert_ne!(
            request_user_id("urn:hr", "1"),
            request_user_id("urn:hr", "2")
        );
    }

    /// The AsyncAPI document names every schema file of every topic.
    #[test]
    fn asyncapi_references_every_schema() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let asyncapi = std::fs::read_to_string(root.join("asyncapi.yaml")).unwrap();
        for dir in ["events", "intake"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                assert!(
                    asyncapi.contains(&format!("./{dir}/{name}")),
                    "schemas/asyncapi.yaml does not reference {dir}/{name}"
                );
            }
        }
    }

    /// `schemas/intake/` is generated from these types; regenerate with
    /// `UPDATE_SCHEMAS=1 cargo test -p onboarding-intake`.
    #[test]
    fn committed_schemas_match_the_types() {
        onboarding_events::check_committed_schemas("intake", "onboarding-intake", schemas());
    }
}
