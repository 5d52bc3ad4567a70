//! Rebuilds the projections from the log (PostgreSQL's `events`, or the public records on the
//! Kafka topic) and compares them with the live ones, in memory as the rows arrive
//! (`compare.rs`, docs/adr/0043); `--keep` also writes both into a scratch schema.
//!
//! The projections are `account_states` (the table admins list invitations by and the scheduler
//! scans) and `usernames` (the registry that keeps names unique). Both sources are folded by the
//! same code, over the public form of each event (`onboarding_events::PublicEvent`), so the
//! PostgreSQL replay also checks that what the relay publishes carries enough to rebuild them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use futures::stream::{BoxStream, Peekable};
use futures::{StreamExt, TryStreamExt};
use onboarding_events::PublicEvent;
use onboarding_kafka::ClientError;
use onboarding_store::personal::{AccountKey, ToOpen};
use onboarding_store::{Erased, PersonalKeys, UsernameRegistry};
use rand::Rng;
use rdkafka::error::KafkaError;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::compare::{as_stored, ACCOUNT_COLUMNS, NAME_COLUMNS};
pub use crate::compare::{AccountState, Comparison, Difference, NameRow};

/// Rows per INSERT into a kept scratch schema.
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
    /// The pool cannot open the connections the replay reads on at once.
    #[error(
        "the replay reads on {needed} database connections at once (the log and both live \
         projections, one more to write a kept scratch schema), but database.max_connections is \
         {configured}: set it to at least {needed} in the configuration the auditor runs with"
    )]
    TooFewConnections { needed: u32, configured: u32 },
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
    fn username_row(&self, registry: &UsernameRegistry) -> Option<NameRow> {
        if matches!(self.state, Some("Revoked" | "Erased")) {
            return None;
        }
        let domain = self.domain.clone()?;
        let username_key = registry.stored_key(&domain, &self.username.as_deref()?.to_lowercase());
        Some(NameRow {
            domain,
            username_key,
            user_id: self.user_id,
        })
    }

    /// The account's rows as compared: hers in `account_states`, and in `usernames` if she
    /// holds a name.
    pub fn compared(&self, registry: &UsernameRegistry) -> (AccountState, Option<NameRow>) {
        let state = AccountState {
            user_id: self.user_id,
            state: self.state.map(str::to_owned),
            state_since: as_stored(self.state_since),
            code_expires_at: as_stored(self.code_expires_at),
            username: self.username.clone(),
            domain: self.domain.clone(),
            email: self.email.clone(),
            created_at: as_stored(self.created_at),
            delivery: self.delivery.map(str::to_owned),
            provisioning: self.provisioning.map(str::to_owned),
            external_id: self.external_id.clone(),
        };
        (state, self.username_row(registry))
    }
}

/// A scratch schema the rebuilt projections and a copy of the live ones are written into when
/// the auditor asks to keep them (`onboard audit replay --keep`), to query them with SQL. The
/// comparison does not need it (it is made in memory, [`Comparison`]). Its tables are
/// `UNLOGGED`: a scratch needs no write-ahead log (a kept scratch is emptied if PostgreSQL
/// crashes; replay again).
pub struct Scratch {
    pub schema: String,
}

impl Scratch {
    pub async fn create(pool: &PgPool) -> Result<Self, ReplayError> {
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
        Ok(Self { schema })
    }

    pub async fn drop_schema(self, pool: &PgPool) -> Result<(), ReplayError> {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(pool)
            .await?;
        Ok(())
    }
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Events read (from `events`, or records from the topic).
    pub events: u64,
    /// Rows that are in one side only (the live projections or the rebuilt ones).
    pub differences: Vec<Difference>,
    /// Rows of the live registry that held a name in clear while names are keyed (written before
    /// the registry was keyed, and not yet rewritten by `onboard migrate`).
    pub names_in_clear: u64,
}

impl Replayed {
    fn new(events: u64, comparison: Comparison) -> Self {
        let names_in_clear = comparison.names_in_clear;
        Self {
            events,
            differences: comparison.differences(),
            names_in_clear,
        }
    }
}

/// Writes one batch of rebuilt rows into the scratch schema.
async fn insert_rows(
    pool: &PgPool,
    schema: &str,
    rows: Vec<(AccountState, Option<NameRow>)>,
) -> Result<(), ReplayError> {
    if rows.is_empty() {
        return Ok(());
    }
    let col =
        |f: fn(&AccountState) -> Option<String>| rows.iter().map(|(r, _)| f(r)).collect::<Vec<_>>();
    let time = |f: fn(&AccountState) -> Option<DateTime<Utc>>| {
        rows.iter().map(|(r, _)| f(r)).collect::<Vec<_>>()
    };
    let ids: Vec<Uuid> = rows.iter().map(|(r, _)| r.user_id).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(
        "INSERT INTO {schema}.account_states SELECT * FROM UNNEST($1::uuid[], $2::text[], \
         $3::timestamptz[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], \
         $8::timestamptz[], $9::text[], $10::text[], $11::text[])"
    ))
    .bind(&ids)
    .bind(col(|r| r.state.clone()))
    .bind(time(|r| r.state_since))
    .bind(time(|r| r.code_expires_at))
    .bind(col(|r| r.username.clone()))
    .bind(col(|r| r.domain.clone()))
    .bind(col(|r| r.email.clone()))
    .bind(time(|r| r.created_at))
    .bind(col(|r| r.delivery.clone()))
    .bind(col(|r| r.provisioning.clone()))
    .bind(col(|r| r.external_id.clone()))
    .execute(&mut *tx)
    .await?;
    let names: Vec<&NameRow> = rows.iter().filter_map(|(_, n)| n.as_ref()).collect();
    sqlx::query(&format!(
        "INSERT INTO {schema}.usernames SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[])"
    ))
    .bind(names.iter().map(|n| n.domain.as_str()).collect::<Vec<_>>())
    .bind(
        names
            .iter()
            .map(|n| n.username_key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(names.iter().map(|n| n.user_id).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A task that writes batches of rebuilt rows into a kept scratch schema while the replay goes
/// on; at most two batches wait, so memory stays flat.
struct Writer {
    batch: Vec<(AccountState, Option<NameRow>)>,
    sender: tokio::sync::mpsc::Sender<Vec<(AccountState, Option<NameRow>)>>,
    task: tokio::task::JoinHandle<Result<(), ReplayError>>,
}

impl Writer {
    fn start(pool: &PgPool, scratch: &Scratch) -> Self {
        let (sender, mut receiver) = tokio::sync::mpsc::channel(2);
        let (pool, schema) = (pool.clone(), scratch.schema.clone());
        let task = tokio::spawn(async move {
            while let Some(rows) = receiver.recv().await {
                insert_rows(&pool, &schema, rows).await?;
            }
            Ok(())
        });
        Self {
            batch: Vec::with_capacity(BATCH),
            sender,
            task,
        }
    }

    async fn push(&mut self, account: AccountState, name: Option<NameRow>) {
        self.batch.push((account, name));
        if self.batch.len() >= BATCH {
            let full = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
            // A writer that stopped reports its error from `finish`.
            let _ = self.sender.send(full).await;
        }
    }

    async fn finish(self) -> Result<(), ReplayError> {
        if !self.batch.is_empty() {
            let _ = self.sender.send(self.batch).await;
        }
        drop(self.sender);
        self.task.await.map_err(|e| ReplayError::Corrupt {
            at: "the scratch writer".into(),
            reason: e.into(),
        })?
    }
}

/// Where each rebuilt account goes: the comparison, and a kept scratch schema if there is one.
struct Sink {
    comparison: Comparison,
    writer: Option<Writer>,
}

impl Sink {
    async fn account(&mut self, account: &AccountRow) {
        if !account.invited {
            return;
        }
        let (state, name) = account.compared(self.comparison.registry());
        if let Some(writer) = &mut self.writer {
            writer.push(state.clone(), name.clone()).await;
        }
        self.comparison.replayed(state, name);
    }
}

/// Fails early, with what to change, when the pool cannot open `needed` connections at once
/// (the replay would otherwise wait for a connection it never gets).
fn enough_connections(pool: &PgPool, needed: u32) -> Result<(), ReplayError> {
    let configured = pool.options().get_max_connections();
    if configured < needed {
        return Err(ReplayError::TooFewConnections { needed, configured });
    }
    Ok(())
}

/// A transaction that reads a snapshot it exports (`pg_export_snapshot`), and the snapshot's
/// name: the log and the live projections read in it and in [`in_snapshot`]'s agree, whatever is
/// appended meanwhile.
async fn export_snapshot(
    pool: &PgPool,
) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, String), ReplayError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *tx)
        .await?;
    Ok((tx, snapshot))
}

/// Another transaction reading the snapshot of [`export_snapshot`].
async fn in_snapshot(
    pool: &PgPool,
    snapshot: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ReplayError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

type RowStream<'c, R> = Peekable<BoxStream<'c, Result<R, sqlx::Error>>>;

/// The live projections, each read in user id order on a connection of its own, and fed to the
/// comparison up to the account the replay has reached: both sides then arrive in the same
/// order, and equal rows cancel as soon as they meet.
struct Live<'c> {
    accounts: RowStream<'c, AccountState>,
    names: RowStream<'c, NameRow>,
}

impl<'c> Live<'c> {
    fn read(accounts: &'c mut sqlx::PgConnection, names: &'c mut sqlx::PgConnection) -> Self {
        Self {
            accounts: sqlx::query(&LIVE_ACCOUNTS)
                .fetch(accounts)
                .map(|r| r.and_then(|r| AccountState::from_row(&r)))
                .boxed()
                .peekable(),
            names: sqlx::query(&LIVE_NAMES)
                .fetch(names)
                .map(|r| r.and_then(|r| NameRow::from_row(&r)))
                .boxed()
                .peekable(),
        }
    }

    /// Feeds the live rows of the accounts up to `user_id` (all of them with `None`).
    async fn up_to(
        &mut self,
        user_id: Option<Uuid>,
        comparison: &mut Comparison,
    ) -> Result<(), ReplayError> {
        let due = |id: Uuid| user_id.is_none_or(|last| id <= last);
        while let Some(next) = Pin::new(&mut self.accounts).peek().await {
            if next.as_ref().is_ok_and(|r| !due(r.user_id)) {
                break;
            }
            if let Some(row) = self.accounts.next().await {
                comparison.live_account(row?);
            }
        }
        while let Some(next) = Pin::new(&mut self.names).peek().await {
            if next.as_ref().is_ok_and(|r| !due(r.user_id)) {
                break;
            }
            if let Some(row) = self.names.next().await {
                comparison.live_name(row?);
            }
        }
        Ok(())
    }
}

static LIVE_ACCOUNTS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {ACCOUNT_COLUMNS} FROM account_states ORDER BY user_id"));
static LIVE_NAMES: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {NAME_COLUMNS} FROM usernames ORDER BY user_id"));

/// Replays `events` from PostgreSQL, one account at a time in (account, sequence) order, and
/// compares each rebuilt account with the live rows as they arrive: memory holds one account
/// and the rows that differ, whatever the size of the log. With `scratch`, the rebuilt rows and
/// a copy of the live ones are written into it as well.
pub async fn from_postgres(
    pool: &PgPool,
    keys: &PersonalKeys,
    scratch: Option<&Scratch>,
) -> Result<Replayed, ReplayError> {
    enough_connections(pool, 3 + u32::from(scratch.is_some()))?;
    // The log and both live projections are read from one snapshot, so appends made while the
    // replay runs cannot show up as differences.
    let (mut accounts, snapshot) = export_snapshot(pool).await?;
    let mut names = in_snapshot(pool, &snapshot).await?;
    let mut read = in_snapshot(pool, &snapshot).await?;
    if let Some(scratch) = scratch {
        copy_live(&mut accounts, &scratch.schema, keys.registry()).await?;
    }
    let mut sink = Sink {
        comparison: Comparison::new(keys.registry().clone()),
        writer: scratch.map(|s| Writer::start(pool, s)),
    };
    let mut live = Live::read(&mut accounts, &mut names);
    let folded = fold_postgres(&mut read, keys, &mut sink, &mut live).await;
    let folded = match folded {
        Ok(events) => live
            .up_to(None, &mut sink.comparison)
            .await
            .map(|()| events),
        Err(e) => Err(e),
    };
    drop(live);
    let written = match sink.writer.take() {
        Some(writer) => writer.finish().await,
        None => Ok(()),
    };
    let events = folded?;
    written?;
    for tx in [read, names, accounts] {
        tx.commit().await?;
    }
    Ok(Replayed::new(events, sink.comparison))
}

/// Copies the live projections into a kept scratch schema (`live_account_states`,
/// `live_usernames`), in the replay's snapshot. When names are keyed, the copy's rows still in
/// clear (written before the registry was keyed) are put in their keyed form, which means the
/// same name, as the comparison reads them.
async fn copy_live(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    registry: &UsernameRegistry,
) -> Result<(), ReplayError> {
    for (projection, columns) in [
        ("account_states", ACCOUNT_COLUMNS),
        ("usernames", NAME_COLUMNS),
    ] {
        sqlx::query(&format!(
            "CREATE UNLOGGED TABLE {schema}.live_{projection} AS SELECT {columns} FROM {projection}"
        ))
        .execute(&mut *conn)
        .await?;
    }
    if registry.keyed_by().is_none() {
        return Ok(());
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
    Ok(())
}

/// The log's query: every account's events in order, each beside its account's key row (the
/// same row on each of her events; it is unwrapped once per account).
const EVENTS: &str = "SELECT e.aggregate_id, e.sequence, e.event_type, e.event_version, \
     e.payload::text AS payload, e.recorded_at, k.data_key, k.wrapped_by \
     FROM events e LEFT JOIN personal_data_keys k ON k.user_id::text = e.aggregate_id \
     WHERE e.aggregate_type = 'Onboarding' ORDER BY e.aggregate_id, e.sequence";

/// The account being folded: her aggregate id, her row, and her data key once a sealed event
/// needed it.
struct Current {
    aggregate_id: String,
    account: AccountRow,
    key: Option<AccountKey>,
}

/// Folds the log into `sink`; returns the number of events read.
async fn fold_postgres(
    conn: &mut sqlx::PgConnection,
    keys: &PersonalKeys,
    sink: &mut Sink,
    live: &mut Live<'_>,
) -> Result<u64, ReplayError> {
    let mut events = 0;
    let mut rows = sqlx::query(EVENTS).fetch(&mut *conn);
    let mut current: Option<Current> = None;
    while let Some(row) = rows.try_next().await? {
        events += 1;
        let aggregate_id: &str = row.try_get(0)?;
        if current
            .as_ref()
            .is_none_or(|c| c.aggregate_id != aggregate_id)
        {
            let user_id = Uuid::parse_str(aggregate_id).map_err(|e| ReplayError::Corrupt {
                at: format!("aggregate {aggregate_id}"),
                reason: e.into(),
            })?;
            let next = Current {
                aggregate_id: aggregate_id.to_owned(),
                account: AccountRow::new(user_id),
                key: None,
            };
            if let Some(done) = current.replace(next) {
                live.up_to(Some(done.account.user_id), &mut sink.comparison)
                    .await?;
                sink.account(&done.account).await;
            }
        }
        let Some(current) = current.as_mut() else {
            continue;
        };
        let event_type: &str = row.try_get(2)?;
        if !PROJECTED.contains(&event_type) {
            continue;
        }
        let sequence: i64 = row.try_get(1)?;
        let event_version: &str = row.try_get(3)?;
        let payload: &str = row.try_get(4)?;
        let corrupt = |reason: Box<dyn std::error::Error + Send + Sync>| ReplayError::Corrupt {
            at: format!("aggregate {aggregate_id} sequence {sequence}"),
            reason,
        };
        let event = if payload.contains(SEALED_MARK) {
            // Sealed personal fields: opened with the account's key, or stand-ins that the
            // account's `UserErased` drops again (docs/adr/0030).
            let mut value: Value = serde_json::from_str(payload).map_err(|e| corrupt(e.into()))?;
            let key = match &mut current.key {
                Some(key) => key,
                none => {
                    let stored: Option<Vec<u8>> = row.try_get(6)?;
                    let wrapped_by: Option<String> = row.try_get(7)?;
                    let key = keys
                        .account_key(
                            current.account.user_id,
                            stored.as_deref().zip(wrapped_by.as_deref()),
                        )
                        .map_err(|e| corrupt(e.into()))?;
                    none.insert(key)
                }
            };
            key.open(
                &mut ToOpen {
                    aggregate_id,
                    event_type,
                    payload: &mut value,
                },
                Erased::StandIn,
            )
            .map_err(|e| corrupt(e.into()))?;
            onboarding_store::upcast(event_type, event_version, value)
        } else {
            onboarding_store::upcast_str(event_type, event_version, payload)
        }
        .map_err(|e| corrupt(e.into()))?;
        let public = PublicEvent::from_domain(current.account.user_id, sequence, event);
        current.account.apply(&public, row.try_get(5)?);
    }
    if let Some(done) = current {
        live.up_to(Some(done.account.user_id), &mut sink.comparison)
            .await?;
        sink.account(&done.account).await;
    }
    Ok(events)
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
/// sequence, after the relay republished the log) are applied once. Holds one row per account;
/// then reads the live projections (from one snapshot) and compares. With `scratch`, the rebuilt
/// rows and a copy of the live ones are written into it as well.
pub async fn from_kafka(
    pool: &PgPool,
    registry: &UsernameRegistry,
    kafka: &onboarding_config::KafkaSettings,
    scratch: Option<&Scratch>,
) -> Result<Replayed, ReplayError> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    use rdkafka::{Message, Offset, TopicPartitionList};

    enough_connections(pool, 2 + u32::from(scratch.is_some()))?;

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
    let mut events = 0;
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
        events += 1;
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
    // In user id order, as the live rows are read: equal rows cancel as they meet.
    let mut accounts: Vec<AccountRow> = accounts.into_values().collect();
    accounts.sort_unstable_by_key(|a| a.user_id);
    let (mut live_accounts, snapshot) = export_snapshot(pool).await?;
    let mut live_names = in_snapshot(pool, &snapshot).await?;
    if let Some(scratch) = scratch {
        copy_live(&mut live_accounts, &scratch.schema, registry).await?;
    }
    let mut sink = Sink {
        comparison: Comparison::new(registry.clone()),
        writer: scratch.map(|s| Writer::start(pool, s)),
    };
    let mut live = Live::read(&mut live_accounts, &mut live_names);
    let mut compared = Ok(());
    for account in &accounts {
        compared = live
            .up_to(Some(account.user_id), &mut sink.comparison)
            .await;
        if compared.is_err() {
            break;
        }
        sink.account(account).await;
    }
    if compared.is_ok() {
        compared = live.up_to(None, &mut sink.comparison).await;
    }
    drop(live);
    let written = match sink.writer.take() {
        Some(writer) => writer.finish().await,
        None => Ok(()),
    };
    compared?;
    written?;
    live_accounts.commit().await?;
    live_names.commit().await?;
    Ok(Replayed::new(events, sink.comparison))
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

/// Events still in the outbox (committed, not yet on the topic).
pub async fn unpublished(pool: &PgPool) -> Result<i64, ReplayError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pool_too_small_for_the_replay_is_refused_with_what_to_set() {
        // Never connects: the check comes first.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy("postgres://auditor@127.0.0.1:1/onboarding")
            .unwrap();
        let err = from_postgres(&pool, &PersonalKeys::default(), None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ReplayError::TooFewConnections {
                    needed: 3,
                    configured: 2
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("database.max_connections is 2: set it to at least 3"),
            "{err}"
        );
    }

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
