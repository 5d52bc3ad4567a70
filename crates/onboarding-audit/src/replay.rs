//! Rebuilds the projections from the log (PostgreSQL's `events`, or the public records on the
//! Kafka topic) into a scratch schema and compares them with the live ones.
//!
//! The projections are `account_states` (the view admins list invitations by and the scheduler
//! scans) and `usernames` (the registry that keeps names unique). Both sources are folded by the
//! same code, over the public form of each event (`onboarding_events::PublicEvent`), so the
//! PostgreSQL replay also checks that what the relay publishes carries enough to rebuild them.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use futures::TryStreamExt;
use onboarding_events::PublicEvent;
use onboarding_kafka::ClientError;
use onboarding_store::personal::ToOpen;
use onboarding_store::{Erased, PersonalKeys, UsernameRegistry};
use rand::Rng;
use rdkafka::error::KafkaError;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Rows per INSERT into the scratch schema.
const BATCH: usize = 1000;

/// Why a replay could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A client error (a configuration error names the property, never its value).
    #[error("kafka: {0}")]
    Kafka(#[source] ClientError),
    /// The topic has no partitions: it does not exist on these brokers.
    #[error("kafka: topic `{topic}` has no partitions (does it exist?)")]
    NoPartitions { topic: String },
    /// The broker deleted the first records of a partition (retention), so the replay would miss
    /// events.
    #[error("kafka: partition {partition} starts at offset {low}: the broker deleted records, so the topic cannot be replayed from the beginning")]
    Truncated { partition: i32, low: i64 },
    /// The topic was not read to its end in time.
    #[error(
        "kafka: the topic was not read to its end within {seconds} s; partitions left: {open:?}"
    )]
    Unfinished {
        seconds: u64,
        open: HashMap<i32, i64>,
    },
    /// The blocking Kafka requests could not finish.
    #[error("kafka: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("event at {at} cannot be read: {reason}")]
    Corrupt {
        at: String,
        #[source]
        reason: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<KafkaError> for ReplayError {
    fn from(e: KafkaError) -> Self {
        Self::Kafka(e.into())
    }
}

/// One row of `account_states`, as the fold builds it.
#[derive(Debug, Clone, Default)]
pub struct AccountRow {
    pub user_id: Uuid,
    pub state: Option<&'static str>,
    pub state_since: Option<DateTime<Utc>>,
    pub code_expires_at: Option<DateTime<Utc>>,
    pub username: Option<String>,
    pub domain: Option<String>,
    pub email: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub delivery: Option<&'static str>,
    /// `pending` from activation, then `provisioned` or `failed` (migration 0014).
    pub provisioning: Option<&'static str>,
    pub external_id: Option<String>,
    pub last_sequence: i64,
    invited: bool,
}

/// The `external_id` claim as the projection trigger reads it (`claims ->> 'external_id'`): a
/// string as it is, JSON `null` or no claim as none, any other value as its JSON text.
fn external_id(claims: &std::collections::BTreeMap<String, serde_json::Value>) -> Option<String> {
    match claims.get("external_id")? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The instant PostgreSQL stores when it reads `t` from an event's JSON text, as the projection
/// trigger does (`(payload ->> 'expires_at')::timestamptz`). It keeps microseconds: it reads the
/// fraction of a second with `strtod` and rounds `fraction × 10⁶` with `rint`, in binary floating
/// point, so `.2512635` (just below half in binary) becomes `.251263`, not `.251264`.
/// Events made since the domain reduces instants to the log's precision
/// (`onboarding_domain::at_log_precision`) carry whole microseconds and read back unchanged;
/// older events may carry nanoseconds, which this reads exactly as the trigger did.
pub fn as_postgres_reads(t: DateTime<Utc>) -> DateTime<Utc> {
    let fraction = f64::from(t.timestamp_subsec_nanos()) / 1e9;
    let micros = (fraction * 1e6).round_ties_even() as i64;
    t.trunc_subsecs(0) + chrono::Duration::microseconds(micros)
}

impl AccountRow {
    fn new(user_id: Uuid) -> Self {
        Self {
            user_id,
            ..Self::default()
        }
    }

    /// Applies one event (the account's next, by sequence) recorded at `at`.
    pub fn apply(&mut self, event: &PublicEvent, at: DateTime<Utc>) {
        self.last_sequence = event.sequence();
        let mut state = |s: &'static str, expires: Option<DateTime<Utc>>| {
            self.state = Some(s);
            self.state_since = Some(at);
            self.code_expires_at = expires.map(as_postgres_reads);
        };
        match event {
            PublicEvent::UserInvited(e) => {
                state("Invited", None);
                if e.sequence == 1 {
                    self.invited = true;
                    self.username = Some(e.username.clone());
                    self.domain = Some(e.domain.clone());
                    self.email = Some(e.email.clone());
                    self.created_at = Some(at);
                    self.external_id = external_id(&e.claims);
                }
            }
            PublicEvent::EmailChanged(e) => self.email = Some(e.email.clone()),
            PublicEvent::ClaimsUpdated(e) => self.external_id = external_id(&e.claims),
            PublicEvent::AccountDisabled(_) => state("Disabled", None),
            PublicEvent::AccountEnabled(_) => state("Active", None),
            PublicEvent::CodeIssued(e) => {
                state("CodeIssued", Some(e.expires_at));
                self.delivery = Some("queued");
            }
            PublicEvent::CodeExpired(_) => state("Expired", None),
            PublicEvent::CodeLocked(_) => state("Locked", None),
            PublicEvent::InvitationRevoked(_) => state("Revoked", None),
            PublicEvent::PasswordSet(_) => state("PasswordSet", None),
            PublicEvent::UserActivated(_) => {
                state("Active", None);
                self.provisioning = Some("pending");
            }
            PublicEvent::UserErased(_) => {
                // As the `erase_personal_data` trigger leaves the row (migration 0018).
                state("Erased", None);
                self.username = None;
                self.email = None;
                self.external_id = None;
                self.delivery = None;
                self.provisioning = None;
            }
            PublicEvent::UserProvisioned(_) => self.provisioning = Some("provisioned"),
            PublicEvent::ProvisioningFailed(_) => self.provisioning = Some("failed"),
            PublicEvent::InvitationMailSent(_) => self.delivery = Some("sent"),
            PublicEvent::InvitationMailFailed(_) => self.delivery = Some("failed"),
            PublicEvent::InvitationMailAbandoned(_) => self.delivery = Some("abandoned"),
            PublicEvent::LinkOpened(_)
            | PublicEvent::CodeCheckFailed(_)
            | PublicEvent::WelcomeMailSent(_) => {}
        }
    }

    /// `usernames`' row for this account: (domain, key, user id), the key as `registry`
    /// stores the name's `Username::key` (keyed, or in clear; docs/adr/0035). A revoked or
    /// erased account holds no name (migrations 0012 and 0018).
    fn username_row(&self, registry: &UsernameRegistry) -> Option<(String, String, Uuid)> {
        if matches!(self.state, Some("Revoked" | "Erased")) {
            return None;
        }
        let domain = self.domain.clone()?;
        let key = registry.stored_key(&domain, &self.username.as_deref()?.to_lowercase());
        Some((domain, key, self.user_id))
    }
}

/// The scratch schema the replay writes into; dropped by [`Scratch::drop_schema`]. Its tables
/// are `UNLOGGED`: a scratch needs no write-ahead log (a kept scratch, `--keep`, is emptied if
/// PostgreSQL crashes; replay again).
pub struct Scratch {
    pub schema: String,
    /// How the registry keys names: the replay rebuilds `usernames` in that form, and compares
    /// the live rows still in clear in it too.
    registry: UsernameRegistry,
    accounts: Vec<AccountRow>,
    pub events: u64,
    /// Rows of the live registry that held a name in clear while names are keyed (written before
    /// the registry was keyed, and not yet rewritten by `onboard migrate`).
    pub names_in_clear: u64,
}

impl Scratch {
    pub async fn create(pool: &PgPool, registry: UsernameRegistry) -> Result<Self, ReplayError> {
        let schema = format!("audit_replay_{:08x}", rand::thread_rng().gen::<u32>());
        let mut tx = pool.begin().await?;
        for ddl in [
            format!("CREATE SCHEMA {schema}"),
            format!(
                "CREATE UNLOGGED TABLE {schema}.account_states (user_id uuid PRIMARY KEY, state text, \
                 state_since timestamptz, code_expires_at timestamptz, username text, domain text, \
                 email text, created_at timestamptz, delivery text, provisioning text, external_id text)"
            ),
            format!(
                "CREATE UNLOGGED TABLE {schema}.usernames (domain text NOT NULL, username_key text NOT NULL, \
                 user_id uuid NOT NULL)"
            ),
        ] {
            sqlx::query(&ddl).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Self {
            schema,
            registry,
            accounts: Vec::with_capacity(BATCH),
            events: 0,
            names_in_clear: 0,
        })
    }

    async fn push(&mut self, pool: &PgPool, row: AccountRow) -> Result<(), ReplayError> {
        if row.invited {
            self.accounts.push(row);
        }
        if self.accounts.len() >= BATCH {
            self.flush(pool).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, pool: &PgPool) -> Result<(), ReplayError> {
        let rows = std::mem::take(&mut self.accounts);
        insert_rows(pool, &self.schema, &self.registry, rows).await
    }

    pub async fn drop_schema(self, pool: &PgPool) -> Result<(), ReplayError> {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(pool)
            .await?;
        Ok(())
    }
}

/// Writes one batch of rebuilt rows into the scratch schema.
async fn insert_rows(
    pool: &PgPool,
    schema: &str,
    registry: &UsernameRegistry,
    rows: Vec<AccountRow>,
) -> Result<(), ReplayError> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&AccountRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let time = |f: fn(&AccountRow) -> Option<DateTime<Utc>>| rows.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.user_id).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(
        "INSERT INTO {schema}.account_states SELECT * FROM UNNEST($1::uuid[], $2::text[], \
         $3::timestamptz[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], \
         $8::timestamptz[], $9::text[], $10::text[], $11::text[])"
    ))
    .bind(&ids)
    .bind(col(|r| r.state.map(str::to_owned)))
    .bind(time(|r| r.state_since))
    .bind(time(|r| r.code_expires_at))
    .bind(col(|r| r.username.clone()))
    .bind(col(|r| r.domain.clone()))
    .bind(col(|r| r.email.clone()))
    .bind(time(|r| r.created_at))
    .bind(col(|r| r.delivery.map(str::to_owned)))
    .bind(col(|r| r.provisioning.map(str::to_owned)))
    .bind(col(|r| r.external_id.clone()))
    .execute(&mut *tx)
    .await?;
    let names: Vec<(String, String, Uuid)> = rows
        .iter()
        .filter_map(|r| r.username_row(registry))
        .collect();
    sqlx::query(&format!(
        "INSERT INTO {schema}.usernames SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[])"
    ))
    .bind(names.iter().map(|n| n.0.clone()).collect::<Vec<_>>())
    .bind(names.iter().map(|n| n.1.clone()).collect::<Vec<_>>())
    .bind(names.iter().map(|n| n.2).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Replays `events` from PostgreSQL, one account at a time in (account, sequence) order, so
/// memory holds one account and one batch of rows whatever the size of the log.
pub async fn from_postgres(
    pool: &PgPool,
    keys: &PersonalKeys,
    scratch: &mut Scratch,
) -> Result<(), ReplayError> {
    // Batches are written by a task of their own while the next ones are folded; at most two
    // wait in the channel, so memory stays flat.
    let (batches, mut receiver) = tokio::sync::mpsc::channel::<Vec<AccountRow>>(2);
    let writer = {
        let (pool, schema) = (pool.clone(), scratch.schema.clone());
        let registry = scratch.registry.clone();
        tokio::spawn(async move {
            while let Some(rows) = receiver.recv().await {
                insert_rows(&pool, &schema, &registry, rows).await?;
            }
            Ok::<_, ReplayError>(())
        })
    };
    // The log is read and the live projections are copied from one snapshot, so appends made
    // while the replay runs cannot show up as differences.
    let mut live = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *live)
        .await?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *live)
        .await?;
    let mut read = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *read)
        .await?;
    sqlx::query(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .execute(&mut *read)
        .await?;
    let (schema, registry) = (scratch.schema.clone(), scratch.registry.clone());
    let (copied, folded) = tokio::join!(
        copy_live(&mut live, &schema, &registry),
        fold_postgres(&mut read, keys, scratch, &batches)
    );
    drop(batches);
    let folded = match (folded, copied) {
        (Ok(()), Ok(in_clear)) => {
            scratch.names_in_clear = in_clear;
            Ok(())
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let folded = match folded {
        Ok(()) => {
            live.commit().await?;
            read.commit().await.map_err(ReplayError::from)
        }
        Err(e) => Err(e),
    };
    let written = writer.await.map_err(|e| ReplayError::Corrupt {
        at: "the scratch writer".into(),
        reason: e.into(),
    })?;
    folded.and(written)
}

/// Copies the live projections into the scratch schema (`live_account_states`,
/// `live_usernames`): `account_states` is a view over the whole log, read once. When names are
/// keyed, the copy's rows still in clear (written before the registry was keyed) are put in
/// their keyed form, which means the same name: answers how many there were.
async fn copy_live(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    registry: &UsernameRegistry,
) -> Result<u64, ReplayError> {
    for (projection, columns) in PROJECTIONS {
        sqlx::query(&format!(
            "CREATE UNLOGGED TABLE {schema}.live_{projection} AS SELECT {columns} FROM {projection}"
        ))
        .execute(&mut *conn)
        .await?;
    }
    if registry.keyed_by().is_none() {
        return Ok(0);
    }
    let in_clear: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT domain, username_key FROM {schema}.live_usernames \
         WHERE strpos(username_key, '/') = 0"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let keyed: Vec<String> = in_clear
        .iter()
        .map(|(domain, key)| registry.stored_key(domain, key))
        .collect();
    sqlx::query(&format!(
        "UPDATE {schema}.live_usernames u SET username_key = k.keyed \
         FROM unnest($1::text[], $2::text[], $3::text[]) AS k(domain, clear, keyed) \
         WHERE u.domain = k.domain AND u.username_key = k.clear"
    ))
    .bind(in_clear.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
    .bind(in_clear.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
    .bind(&keyed)
    .execute(&mut *conn)
    .await?;
    Ok(in_clear.len() as u64)
}

/// The projections replayed: name (the live table or view, found through the search path, as
/// the engine's own queries find it), columns compared, order of the printed differences.
const PROJECTIONS: [(&str, &str); 2] = [
    (
        "account_states",
        "user_id, state, state_since, code_expires_at, username, domain, email, created_at, delivery, \
         provisioning, external_id",
    ),
    ("usernames", "domain, username_key, user_id"),
];

async fn fold_postgres(
    conn: &mut sqlx::PgConnection,
    keys: &PersonalKeys,
    scratch: &mut Scratch,
    batches: &tokio::sync::mpsc::Sender<Vec<AccountRow>>,
) -> Result<(), ReplayError> {
    let mut batch = Vec::with_capacity(BATCH);
    let send = |batch: &mut Vec<AccountRow>, row: AccountRow| {
        if row.invited {
            batch.push(row);
        }
        (batch.len() >= BATCH).then(|| std::mem::replace(batch, Vec::with_capacity(BATCH)))
    };
    let mut rows = sqlx::query(
        "SELECT e.aggregate_id, e.sequence, e.event_type, e.event_version, \
         e.payload::text AS payload, e.recorded_at, k.data_key, k.wrapped_by \
         FROM events e LEFT JOIN personal_data_keys k ON k.user_id::text = e.aggregate_id \
         WHERE e.aggregate_type = 'Onboarding' ORDER BY e.aggregate_id, e.sequence",
    )
    .fetch(&mut *conn);
    let mut current: Option<(String, AccountRow)> = None;
    while let Some(row) = rows.try_next().await? {
        scratch.events += 1;
        let aggregate_id: &str = row.try_get("aggregate_id")?;
        if current.as_ref().is_none_or(|(id, _)| id != aggregate_id) {
            let user_id = Uuid::parse_str(aggregate_id).map_err(|e| ReplayError::Corrupt {
                at: format!("aggregate {aggregate_id}"),
                reason: e.into(),
            })?;
            if let Some((_, done)) =
                current.replace((aggregate_id.to_owned(), AccountRow::new(user_id)))
            {
                if let Some(full) = send(&mut batch, done) {
                    if batches.send(full).await.is_err() {
                        // The writer stopped: its error is reported by the caller.
                        return Ok(());
                    }
                }
            }
        }
        let Some((_, account)) = current.as_mut() else {
            continue;
        };
        let event_type: &str = row.try_get("event_type")?;
        if !PROJECTED.contains(&event_type) {
            continue;
        }
        let sequence: i64 = row.try_get("sequence")?;
        let payload: &str = row.try_get("payload")?;
        let event = if payload.contains(SEALED_MARK) {
            // Sealed personal fields: opened with the account's key, or stand-ins that the
            // account's `UserErased` drops again (docs/adr/0030).
            let mut value: Value =
                serde_json::from_str(payload).map_err(|e| ReplayError::Corrupt {
                    at: format!("aggregate {aggregate_id} sequence {sequence}"),
                    reason: e.into(),
                })?;
            let key: Option<Vec<u8>> = row.try_get("data_key")?;
            let wrapped_by: Option<String> = row.try_get("wrapped_by")?;
            keys.open_with_key(
                &mut ToOpen {
                    aggregate_id,
                    event_type,
                    payload: &mut value,
                },
                key.as_deref().zip(wrapped_by.as_deref()),
                Erased::StandIn,
            )
            .map_err(|e| ReplayError::Corrupt {
                at: format!("aggregate {aggregate_id} sequence {sequence}"),
                reason: e.into(),
            })?;
            onboarding_store::upcast(event_type, row.try_get("event_version")?, value)
        } else {
            onboarding_store::upcast_str(event_type, row.try_get("event_version")?, payload)
        }
        .map_err(|e| ReplayError::Corrupt {
            at: format!("aggregate {aggregate_id} sequence {sequence}"),
            reason: e.into(),
        })?;
        let public = PublicEvent::from_domain(account.user_id, sequence, event);
        account.apply(&public, row.try_get("recorded_at")?);
    }
    if let Some((_, done)) = current.filter(|(_, a)| a.invited) {
        batch.push(done);
    }
    if !batch.is_empty() {
        let _ = batches.send(batch).await;
    }
    Ok(())
}

/// How a payload that may hold sealed personal fields is told from one in clear without parsing
/// it (a claim that quotes the word only costs a parse).
const SEALED_MARK: &str = "\"sealed\"";

/// The event types that change a projection; the others are read but not decoded.
const PROJECTED: &[&str] = &[
    "UserInvited",
    "UserErased",
    "CodeIssued",
    "CodeExpired",
    "CodeLocked",
    "InvitationRevoked",
    "PasswordSet",
    "UserActivated",
    "InvitationMailSent",
    "InvitationMailFailed",
    "InvitationMailAbandoned",
    "AccountDisabled",
    "AccountEnabled",
    "EmailChanged",
    "ClaimsUpdated",
];

/// Replays the topic from offset 0 of every partition (a fresh consumer, nothing committed)
/// up to the high watermarks seen at the start. Records published twice (same user and
/// sequence, after the relay republished the log) are applied once. Holds one row per account.
pub async fn from_kafka(
    pool: &PgPool,
    scratch: &mut Scratch,
    kafka: &onboarding_config::KafkaSettings,
) -> Result<(), ReplayError> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    use rdkafka::{Message, Offset, TopicPartitionList};

    // The brokers and security settings (TLS, SASL, `kafka.properties`) of every client of the
    // engine; a group of its own that commits nothing and reports each partition's end.
    let consumer: StreamConsumer<ReplayContext> = onboarding_kafka::base_config(kafka)
        .set(
            "group.id",
            format!("onboard-audit-replay-{}", Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create_with_context(ReplayContext)?;
    let mut live = pool.begin().await?;
    scratch.names_in_clear = copy_live(&mut live, &scratch.schema, &scratch.registry).await?;
    live.commit().await?;
    let topic = kafka.topic.clone();
    let (consumer, ends) = tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(ReplayError::NoPartitions { topic });
        }
        let mut ends = HashMap::new();
        let mut list = TopicPartitionList::new();
        for p in partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, p, timeout)?;
            if low > 0 {
                return Err(ReplayError::Truncated { partition: p, low });
            }
            ends.insert(p, high);
            list.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&list)?;
        Ok((consumer, ends))
    })
    .await??;

    // Partitions not yet read to their end. Every partition, even one whose high watermark was
    // 0: tansu reports the start of the last batch, which may be 0 for a partition holding one.
    let mut open: HashMap<i32, i64> = ends;
    let mut accounts: HashMap<Uuid, AccountRow> = HashMap::new();
    const PATIENCE: Duration = Duration::from_secs(120);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !open.is_empty() {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| ReplayError::Unfinished {
                seconds: PATIENCE.as_secs(),
                open: open.clone(),
            })?;
        let m = match message {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                // The end the broker knows now; the first high watermark may be at the start
                // of its last batch (tansu), so the end of the partition is what counts.
                open.remove(&p);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        scratch.events += 1;
        let at = format!("partition {} offset {}", m.partition(), m.offset());
        let corrupt = |reason: Box<dyn std::error::Error + Send + Sync>| ReplayError::Corrupt {
            at: at.clone(),
            reason,
        };
        let header = |name: &str| {
            m.headers().and_then(|hs| {
                hs.iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let ce_type = header("ce_type").ok_or_else(|| corrupt("no ce_type header".into()))?;
        let time = header("ce_time").ok_or_else(|| corrupt("no ce_time header".into()))?;
        let recorded_at = DateTime::parse_from_rfc3339(&time)
            .map_err(|e| corrupt(format!("ce_time: {e}").into()))?
            .with_timezone(&Utc);
        let event = PublicEvent::parse(&ce_type, m.payload().unwrap_or_default())
            .map_err(|e| corrupt(e.into()))?;
        let account = accounts
            .entry(event.user_id())
            .or_insert_with(|| AccountRow::new(event.user_id()));
        if event.sequence() > account.last_sequence {
            account.apply(&event, recorded_at);
        }
    }
    for (_, account) in accounts {
        scratch.push(pool, account).await?;
    }
    scratch.flush(pool).await
}

/// The replay consumer's context. librdkafka reports each partition's end, which the replay
/// waits for, also as a client-wide error once the replay stopped reading a partition; that end
/// is expected, so it is logged at DEBUG. Every other error is logged at ERROR, as by default.
struct ReplayContext;

impl rdkafka::client::ClientContext for ReplayContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // As a client-wide error it comes as `Global(PartitionEOF)`.
        let end = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if end {
            tracing::debug!(%reason, "end of a partition");
        } else {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReplayContext {}

/// A row that is in one side and not the other.
#[derive(Debug, Clone)]
pub struct Difference {
    pub projection: &'static str,
    /// `live` (only in the live projection) or `replay` (only in the rebuilt one).
    pub side: String,
    pub row: Value,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} only in {}: {}", self.projection, self.side, self.row)
    }
}

/// Rows of the live projections (as copied when the replay started) and the rebuilt ones
/// that differ, each side's rows ordered.
pub async fn compare(pool: &PgPool, scratch: &Scratch) -> Result<Vec<Difference>, ReplayError> {
    let s = &scratch.schema;
    let mut out = Vec::new();
    for ((projection, columns), order) in PROJECTIONS
        .into_iter()
        .zip(["user_id", "domain, username_key"])
    {
        let rows = sqlx::query(&format!(
            "SELECT side, to_jsonb(d) - 'side' AS row FROM ( \
               (SELECT 'live' AS side, {columns} FROM {s}.live_{projection} \
                EXCEPT ALL SELECT 'live', {columns} FROM {s}.{projection}) \
               UNION ALL \
               (SELECT 'replay' AS side, {columns} FROM {s}.{projection} \
                EXCEPT ALL SELECT 'replay', {columns} FROM {s}.live_{projection}) \
             ) d ORDER BY {order}, side"
        ))
        .fetch_all(pool)
        .await?;
        for row in rows {
            out.push(Difference {
                projection,
                side: row.try_get("side")?,
                row: row.try_get("row")?,
            });
        }
    }
    Ok(out)
}

/// Events still in the outbox (committed, not yet on the topic).
pub async fn unpublished(pool: &PgPool) -> Result<i64, ReplayError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_to_microseconds_like_postgresql() {
        let t = |n: u32| DateTime::from_timestamp(1_700_000_000, n).unwrap();
        assert_eq!(as_postgres_reads(t(1_499)), t(1_000));
        assert_eq!(as_postgres_reads(t(1_501)), t(2_000));
        assert_eq!(as_postgres_reads(t(1_500)), t(2_000));
        assert_eq!(as_postgres_reads(t(2_500)), t(2_000));
        assert_eq!(
            as_postgres_reads(t(999_999_999)),
            t(0) + chrono::Duration::seconds(1)
        );
        // The instant that made `audit replay` report drift: .2512635 is below half in binary.
        assert_eq!(as_postgres_reads(t(251_263_500)), t(251_263_000));
    }
}
