//! PostgreSQL persistence: the event store (postgres-es), its migrations, the transactional
//! outbox and username registry (triggers on `events`), and the adapters the aggregate needs
//! (argon2id hashing off the async threads).
//!
//! Architecture invariant: every change to an account goes through [`Store::execute`], i.e. through
//! the aggregate; nothing writes `events`, `outbox` or `usernames` directly except the appender
//! (`append.rs`, in the append's transaction), the migrations' triggers, the relay (which deletes
//! outbox rows after the broker acknowledged them) and [`key_the_registry`] (`onboard migrate`,
//! which rewrites the registry's rows in clear into their keyed form under the append lock).
//!
//! Here: the errors, `Actor`, the store and invitations. Beside it: `accounts` (reads by state,
//! the expiry scheduler), [`bulk`] (bulk jobs), `idempotency` (`Idempotency-Key`s), `retries`
//! (the delayed mail store), `upcast` (older event versions), `text` (enums in text columns).
#![forbid(unsafe_code)]

mod text;

mod accounts;
mod append;
pub mod bulk;
mod console;
pub mod credentials;
mod directory;
mod erasure;
mod generations;
mod hasher;
mod idempotency;
mod invitation;
pub mod personal;
mod reads;
pub mod registry;
mod retries;
mod upcast;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use onboarding_config::Settings;
use onboarding_domain::code::{CodeId, CodeKeyring, KeyringError};
use onboarding_domain::password::{CommonPasswords, PasswordPolicy};
use onboarding_domain::{
    NewCode, Onboarding, OnboardingCommand, OnboardingError, OnboardingEvent, OnboardingServices,
};
use rand::RngCore;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use uuid::Uuid;

pub use accounts::{run_scheduler, AccountFilter, AccountSummary};
pub use console::{
    record_audit_verification, AdminSession, AuditVerification, NewAuditVerification, Overview,
    RecentJob,
};
pub use credentials::{ActiveCredential, Credential, Credentials};
pub use directory::{AccountField, AccountOrder, Comparison, DirectoryFilter};
pub use erasure::Erasure;
pub use hasher::Argon2Hasher;
pub use idempotency::Idempotency;
pub use invitation::{code_validity, FieldProblems, Invitation, InvitationFields};
pub use personal::{DrawnKey, Erased, PersonalDataError, PersonalKeys};
pub use registry::{
    check_registry_key, key_the_registry, keyed_registry_schema_applied, names_in_clear, HeldTwice,
    RegistryKeyError, RegistryKeying, UsernameRegistry,
};
pub use retries::{MailClaimer, MailRetry, RetriedMail};
pub use text::UnknownValue;
pub use upcast::{upcast, upcast_str, upcasters};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What made a database operation fail (sqlx's, postgres-es' or a migration's error), kept as
/// the [`StoreError`]'s source.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the store could not do what was asked. The message names the cause's message too (log
/// lines and the gateway's logged detail read as they always did); `source()` is the cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The aggregate refused the command; the message is for the user.
    #[error(transparent)]
    Refused(#[from] OnboardingError),
    /// Another command changed the account at the same time (or a uniqueness trigger fired).
    #[error("the account was changed concurrently; retry the request")]
    Conflict,
    /// PostgreSQL could not be reached or did not answer; worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// A stored value could not be read, or a migration failed: retrying cannot help.
    #[error("unexpected store error: {0}")]
    Unexpected(#[source] Cause),
    /// PostgreSQL refused a value of the request as data (SQLSTATE class 22, "data exception":
    /// `22P05` for a `\u0000` in `jsonb`, `22021` for a NUL in `text`, …). The same input will
    /// be refused again, so retrying cannot help: the caller refuses the request instead. The
    /// parsers refuse such values first; this is the net under them.
    #[error("the database refused a value (SQLSTATE {sqlstate}): {cause}")]
    Unstorable {
        /// The five-character SQLSTATE, e.g. `22P05`.
        sqlstate: String,
        #[source]
        cause: Cause,
    },
}

impl StoreError {
    /// `Unstorable` when `cause` is (or was caused by) a PostgreSQL data exception, else `other`.
    fn classify(cause: Cause, other: impl FnOnce(Cause) -> Self) -> Self {
        match data_exception(cause.as_ref()) {
            Some(sqlstate) => Self::Unstorable { sqlstate, cause },
            None => other(cause),
        }
    }
}

/// The SQLSTATE of a PostgreSQL data exception (class 22) in `e` or its sources, if any.
pub(crate) fn data_exception(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
            return db
                .code()
                .filter(|code| code.starts_with("22"))
                .map(|code| code.into_owned());
        }
        next = e.source();
    }
    None
}

/// Why [`Store::execute_all`] did not apply its commands.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The account is no longer at the sequence the caller read (SCIM's `If-Match`).
    #[error("the account is at version {current}, not {expected}: read it again")]
    Stale { expected: i64, current: i64 },
    /// A command was refused, or the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AggregateError<OnboardingError>> for StoreError {
    fn from(e: AggregateError<OnboardingError>) -> Self {
        match e {
            AggregateError::UserError(e) => Self::Refused(e),
            AggregateError::AggregateConflict => Self::Conflict,
            AggregateError::DatabaseConnectionError(e) => Self::Unavailable(e),
            AggregateError::DeserializationError(e) => Self::Unexpected(e),
            // postgres-es reports only I/O and TLS failures as connection errors; a pool that
            // timed out, a server shutting down or a statement timeout arrive as unexpected.
            AggregateError::UnexpectedError(e) if is_unavailable(&*e) => Self::Unavailable(e),
            // So does a data exception (SQLSTATE class 22).
            AggregateError::UnexpectedError(e) => Self::classify(e, Self::Unexpected),
        }
    }
}

/// Whether a failure means that PostgreSQL could not be reached or did not answer in time, so
/// that the same request may succeed later: it looks through the causes for sqlx's error, which
/// cqrs-es and postgres-es wrap.
pub fn is_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<sqlx::Error>() {
            return sqlx_unavailable(e);
        }
        next = e.source();
    }
    false
}

fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => true,
        E::Database(e) => e.code().is_some_and(|code| unavailable_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATEs that mean "not now": a connection exception (class 08), the server shutting down or
/// starting up (57P01 to 57P03), too many connections (53300), and the session limits of
/// `[database]`: a statement cancelled by `statement_timeout` (57014), a lock not granted within
/// `lock_timeout` (55P03), a session ended by `idle_in_transaction_session_timeout` (25P03).
fn unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "57014" | "55P03" | "25P03"
        )
}

/// [`connect`] failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to PostgreSQL: {0}")]
struct ConnectFailed(#[source] sqlx::Error);

/// [`migrate`] failed.
#[derive(Debug, thiserror::Error)]
#[error("migration failed: {0}")]
struct MigrationFailed(#[source] sqlx::migrate::MigrateError);

/// Who or what caused a change; recorded in each event's metadata for auditors.
#[derive(Debug, Clone)]
pub struct Actor {
    pub kind: &'static str,
    pub id: String,
    pub correlation_id: Option<String>,
}

impl Actor {
    pub fn admin(token_id: &str) -> Self {
        Self {
            kind: "admin",
            id: token_id.to_owned(),
            correlation_id: None,
        }
    }

    pub fn user_via_link() -> Self {
        Self {
            kind: "user",
            id: "confirmation-link".to_owned(),
            correlation_id: None,
        }
    }

    pub fn system(component: &str) -> Self {
        Self {
            kind: "system",
            id: component.to_owned(),
            correlation_id: None,
        }
    }

    pub fn with_correlation(mut self, id: Option<String>) -> Self {
        self.correlation_id = id;
        self
    }

    fn metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::from([
            ("actor_kind".to_owned(), self.kind.to_owned()),
            ("actor_id".to_owned(), self.id.clone()),
        ]);
        // Without one from the caller, the events of one command share a fresh id.
        let correlation = self
            .correlation_id
            .clone()
            .unwrap_or_else(|| Uuid::now_v7().to_string());
        m.insert("correlation_id".to_owned(), correlation);
        // The trace the command belongs to (`traceparent`, `tracestate`): the relay carries it to
        // Kafka. Nothing without an OpenTelemetry propagator (docs/adr/0029).
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(
                &tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current()),
                &mut m,
            )
        });
        m
    }
}

/// One stored event, as an auditor reads it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredEvent {
    pub global_position: i64,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

/// A fresh code: 128 random bits from the OS's CSPRNG, signed with the active key.
pub fn new_code(keyring: &CodeKeyring, validity_minutes: i64) -> NewCode {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    NewCode {
        code_id: CodeId::from_random_bytes(bytes),
        key_id: keyring.active_key_id().to_owned(),
        validity: chrono::Duration::minutes(validity_minutes),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("password_hashing: {0}")]
    Hashing(#[source] argon2::Error),
    #[error(
        "password_policy.common_passwords_file {}: cannot be read; point it at a readable list of \
         common passwords, one a line (the repository ships \
         crates/onboarding-domain/data/common-passwords.txt), or remove the key to rely on the \
         strength estimate alone",
        path.display()
    )]
    CommonPasswordsUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "password_policy.common_passwords_file {} holds no passwords; point it at a list of \
         common passwords, one a line, or remove the key to rely on the strength estimate alone",
        path.display()
    )]
    CommonPasswordsEmpty { path: PathBuf },
}

/// Reads `password_policy.common_passwords_file`, once, when the store is opened.
fn common_passwords(path: &Path) -> Result<CommonPasswords, ServicesError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        ServicesError::CommonPasswordsUnreadable {
            path: path.to_owned(),
            source,
        }
    })?;
    let list = CommonPasswords::from_lines(&text);
    if list.is_empty() {
        return Err(ServicesError::CommonPasswordsEmpty {
            path: path.to_owned(),
        });
    }
    Ok(list)
}

/// Builds the aggregate's services from the settings, reading the common-password list if one
/// is configured.
pub fn services(settings: &Settings) -> Result<OnboardingServices, ServicesError> {
    let policy = &settings.password_policy;
    let common_passwords = match &policy.common_passwords_file {
        Some(path) => common_passwords(path)?,
        None => CommonPasswords::default(),
    };
    Ok(OnboardingServices {
        hasher: Arc::new(
            Argon2Hasher::configured(&settings.password_hashing).map_err(ServicesError::Hashing)?,
        ),
        keyring: Arc::new(keyring(settings)?),
        policy: PasswordPolicy {
            min_length: policy.min_length,
            max_length: policy.max_length,
            min_strength: policy.min_strength,
            common_passwords,
        },
    })
}

/// The code keys from the settings. A key that is not valid base64 is reported by id.
pub fn keyring(settings: &Settings) -> Result<CodeKeyring, KeyringError> {
    let mut keys = Vec::new();
    for k in &settings.codes.keys {
        let secret = base64::engine::general_purpose::STANDARD
            .decode(k.secret.expose_secret().trim())
            .map_err(|_| KeyringError::NotBase64(k.id.clone()))?;
        keys.push((k.id.clone(), secret));
    }
    CodeKeyring::new(settings.codes.active_key.clone(), keys)
}

/// The pool of a serving process (and of the admin commands that act like one): every
/// connection starts with the session timeouts of `[database]`, and nobody waits longer than
/// `database.acquire_timeout_seconds` for a connection.
pub async fn connect(settings: &Settings) -> Result<PgPool, StoreError> {
    let options = connect_options(settings)?.options(settings.database.session_timeouts());
    pool(settings, options).await
}

/// The pool of a serving process that does not connect yet: every connection is made when it
/// is needed, so a process can start while PostgreSQL is down and wait for it
/// ([`wait_for_database`]); otherwise as [`connect`].
pub fn connect_lazy(settings: &Settings) -> Result<PgPool, StoreError> {
    let options = connect_options(settings)?.options(settings.database.session_timeouts());
    Ok(pool_options(settings).connect_lazy_with(options))
}

/// A connection idle for longer than this is checked (a round trip) before it is handed out.
const PING_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The pool's settings from `[database]`. sqlx checks every idle connection with a round trip
/// before handing it out, and again when it comes back: a read of an account paid three round
/// trips for its one statement. The check before use is kept only for a connection idle for
/// longer than [`PING_AFTER_IDLE`], the one that may have outlived its server (a restart takes
/// longer); a connection used within the second is not checked again. A statement on a
/// connection that failed meanwhile still fails as unavailable, and sqlx's check on its return
/// closes it (docs/adr/0039).
fn pool_options(settings: &Settings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .acquire_timeout(settings.database.acquire_timeout())
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for <= PING_AFTER_IDLE {
                    return Ok(true);
                }
                // As sqlx's own check: a connection that does not answer is dropped and
                // another one taken.
                match sqlx::Connection::ping(conn).await {
                    Ok(()) => Ok(true),
                    Err(error) => {
                        tracing::info!(%error, "an idle database connection did not answer; dropped");
                        Ok(false)
                    }
                }
            })
        })
}

/// Where `[database]` points, for a log line: host, port and database name, never the user's
/// password.
pub fn database_address(settings: &Settings) -> String {
    match connect_options(settings) {
        Ok(o) => format!(
            "{}:{}/{}",
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or_default()
        ),
        Err(_) => "(database.url cannot be read)".to_owned(),
    }
}

/// Waits until PostgreSQL answers on `pool`, trying again with a backoff from 1 s up to 30 s and
/// logging each wait at WARN with what waits (`waiting`, e.g. "the relay, the intake") and where
/// (`database`: host, port and name, never the password). Returns `Ok(false)` when `stop`
/// resolved first; an error that waiting does not cure (a refused password, a database that does
/// not exist) is returned at once.
pub async fn wait_for_database(
    pool: &PgPool,
    waiting: &str,
    database: &str,
    stop: impl std::future::Future<Output = ()>,
) -> Result<bool, StoreError> {
    let mut backoff = std::time::Duration::from_secs(1);
    tokio::pin!(stop);
    loop {
        let tried = sqlx::query("SELECT 1").execute(pool).await.map_err(db);
        match tried {
            Ok(_) => return Ok(true),
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(
                    %database,
                    error = %e,
                    retry_in_s = backoff.as_secs(),
                    "PostgreSQL does not answer; {waiting} will start once it does, not ready meanwhile"
                );
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = &mut stop => return Ok(false),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
    }
}

/// The pool of `onboard migrate` and `onboard audit`, whose statements may rightly run for
/// long (a migration over the whole log, a replay that streams it): without the session
/// timeouts, whatever the server or role sets.
pub async fn connect_for_maintenance(settings: &Settings) -> Result<PgPool, StoreError> {
    pool(settings, connect_options(settings)?).await
}

fn connect_options(settings: &Settings) -> Result<PgConnectOptions, StoreError> {
    settings
        .database_url()
        .parse::<PgConnectOptions>()
        .map_err(|e| StoreError::Unexpected(Box::new(ConnectFailed(e))))
}

async fn pool(settings: &Settings, options: PgConnectOptions) -> Result<PgPool, StoreError> {
    pool_options(settings)
        .connect_with(options)
        .await
        .map_err(|e| StoreError::Unavailable(Box::new(ConnectFailed(e))))
}

pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| StoreError::Unexpected(Box::new(MigrationFailed(e))))
}

/// cqrs-es' event store over the group-committing repository (`append.rs`): commands are
/// decided on what it loads and their events appended through it.
type Appends = PersistedEventStore<append::GroupCommit, Onboarding>;

/// An account as loaded for a command ([`Store::load_for_command`]): its state and the sequence
/// the command's events follow. [`Store::execute_loaded`] decides a command on it without
/// reading the account again; an append to the account since it was loaded makes that fail as
/// a [`StoreError::Conflict`].
pub struct Loaded(EventStoreAggregateContext<Onboarding>);

impl Loaded {
    /// An id that was never used (one just drawn with `Uuid::now_v7`): it has no events, so
    /// nothing is read for it. Were it taken after all, the log's unique `(aggregate_id,
    /// sequence)` key would refuse the append as a [`StoreError::Conflict`].
    fn unused(user_id: Uuid) -> Self {
        Self(EventStoreAggregateContext {
            aggregate_id: user_id.to_string(),
            aggregate: Onboarding::default(),
            current_sequence: 0,
            current_snapshot: None,
        })
    }

    /// The account, or `None` when nobody invited this id.
    pub fn account(&self) -> Option<&Onboarding> {
        self.0.aggregate.user_id.map(|_| &self.0.aggregate)
    }
}

/// The event-sourced store of `Onboarding` aggregates.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    appends: Arc<Appends>,
    events: Arc<PersistedEventStore<reads::OpenedReads, Onboarding>>,
    services: OnboardingServices,
    keys: PersonalKeys,
}

impl Store {
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Opens the store and starts its appender (group commit, `append.rs`) on the current tokio
    /// runtime. `keys` seal the personal fields of what it appends and open what it reads
    /// (docs/adr/0030).
    pub fn new(pool: PgPool, services: OnboardingServices, keys: PersonalKeys) -> Self {
        let appends = PersistedEventStore::new_event_store(append::GroupCommit::start(
            pool.clone(),
            keys.clone(),
        ))
        .with_upcasters(upcasters());
        let events = PersistedEventStore::new_event_store(reads::OpenedReads::new(
            pool.clone(),
            keys.clone(),
        ))
        .with_upcasters(upcasters());
        Self {
            pool,
            appends: Arc::new(appends),
            events: Arc::new(events),
            services,
            keys,
        }
    }

    /// The keys that seal and open personal data.
    pub fn personal_keys(&self) -> &PersonalKeys {
        &self.keys
    }

    pub fn services(&self) -> &OnboardingServices {
        &self.services
    }

    /// Runs a command on one account through the aggregate; its events commit atomically.
    #[tracing::instrument(skip_all, fields(user_id = %user_id, actor = %actor.kind))]
    pub async fn execute(
        &self,
        user_id: Uuid,
        command: OnboardingCommand,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let loaded = self.load_for_command(user_id).await?;
        self.execute_loaded(loaded, command, actor).await
    }

    /// The account as a command would be decided on it, for [`Store::execute_loaded`]: a
    /// caller that reads the account to decide what to do (the email worker) and then records
    /// what it did reads it once.
    pub async fn load_for_command(&self, user_id: Uuid) -> Result<Loaded, StoreError> {
        self.appends
            .load_aggregate(&user_id.to_string())
            .await
            .map(Loaded)
            .map_err(StoreError::from)
    }

    /// Runs a command on the account as `loaded` holds it; its events commit atomically, right
    /// after the events `loaded` saw. When another command appended to the account since,
    /// nothing is written and the answer is [`StoreError::Conflict`]: load it again and decide
    /// again ([`Store::execute`] does both).
    #[tracing::instrument(skip_all, fields(user_id = %loaded.0.aggregate_id, actor = %actor.kind))]
    pub async fn execute_loaded(
        &self,
        loaded: Loaded,
        command: OnboardingCommand,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let mut context = loaded.0;
        let events = self.decide(&mut context, [command]).await?;
        if events.is_empty() {
            return Ok(());
        }
        self.appends
            .commit(events, context, actor.metadata())
            .await
            .map(drop)
            .map_err(StoreError::from)
    }

    /// The events `commands` make on the account `context` holds, decided one after the other;
    /// nothing is written. A refusal is [`StoreError::Refused`].
    async fn decide(
        &self,
        context: &mut EventStoreAggregateContext<Onboarding>,
        commands: impl IntoIterator<Item = OnboardingCommand>,
    ) -> Result<Vec<OnboardingEvent>, StoreError> {
        let sink = EventSink::default();
        for command in commands {
            context
                .aggregate()
                .handle(command, &self.services, &sink)
                .await
                .map_err(StoreError::Refused)?;
        }
        Ok(sink.collect().await)
    }

    /// [`Store::execute_loaded`] answering the account as its events left it: the events just
    /// committed applied to the state they were decided on, as a later [`Store::load`] would
    /// rebuild it, without reading them back (docs/adr/0045).
    async fn execute_answering(
        &self,
        loaded: Loaded,
        command: OnboardingCommand,
        actor: &Actor,
    ) -> Result<Onboarding, StoreError> {
        let mut context = loaded.0;
        let events = self.decide(&mut context, [command]).await?;
        let mut account = context.aggregate.clone();
        if events.is_empty() {
            return Ok(account);
        }
        let committed = self
            .appends
            .commit(events, context, actor.metadata())
            .await
            .map_err(StoreError::from)?;
        for event in committed {
            account.apply(event.payload);
        }
        Ok(account)
    }

    /// [`Store::execute`] for a command that should not fail because another append to the
    /// account won the race (the email worker recording a mail the moment the user clicks, a
    /// wrong code counted while the mail is recorded): on a conflict the command is made again
    /// and decided on the account as it now is, up to eight times in all (each loser of a round
    /// of concurrent commands tries again, so eight rounds settle eight at once).
    pub async fn execute_retrying(
        &self,
        user_id: Uuid,
        command: impl Fn() -> OnboardingCommand,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let mut attempt = 1;
        loop {
            match self.execute(user_id, command(), actor).await {
                Err(StoreError::Conflict) if attempt < 8 => attempt += 1,
                done => return done,
            }
        }
    }

    /// Runs `commands` on one account, one after another on the same loaded state, and appends
    /// all their events in one transaction: every command takes effect or none does (a SCIM
    /// `PATCH` of several operations). With `expected`, only while the account's newest
    /// sequence is still `expected` (SCIM's `If-Match`); a concurrent append after the check
    /// still fails the append as a [`StoreError::Conflict`]. Answers how many events were
    /// appended (none when every command found nothing to change).
    #[tracing::instrument(skip_all, fields(user_id = %user_id, actor = %actor.kind))]
    pub async fn execute_all(
        &self,
        user_id: Uuid,
        expected: Option<i64>,
        commands: Vec<OnboardingCommand>,
        actor: &Actor,
    ) -> Result<usize, ExecuteError> {
        let mut context = self
            .appends
            .load_aggregate(&user_id.to_string())
            .await
            .map_err(StoreError::from)?;
        let current = i64::try_from(context.current_sequence).unwrap_or(i64::MAX);
        if let Some(expected) = expected.filter(|e| *e != current) {
            return Err(ExecuteError::Stale { expected, current });
        }
        let events = self.decide(&mut context, commands).await?;
        let appended = events.len();
        if appended > 0 {
            self.appends
                .commit(events, context, actor.metadata())
                .await
                .map_err(StoreError::from)?;
        }
        Ok(appended)
    }

    /// The account's current state and its newest sequence (0 for an id nobody invited), read
    /// together: the version a later [`Store::execute_all`] can expect.
    pub async fn load_at(&self, user_id: Uuid) -> Result<(Onboarding, i64), StoreError> {
        let mut context = self
            .events
            .load_aggregate(&user_id.to_string())
            .await
            .map_err(StoreError::from)?;
        let sequence = i64::try_from(context.current_sequence).unwrap_or(i64::MAX);
        Ok((context.aggregate().clone(), sequence))
    }

    /// The account's current state, or `None` when nobody invited this id.
    pub async fn load(&self, user_id: Uuid) -> Result<Option<Onboarding>, StoreError> {
        let mut ctx = self
            .events
            .load_aggregate(&user_id.to_string())
            .await
            .map_err(StoreError::from)?;
        let aggregate = ctx.aggregate().clone();
        Ok(aggregate.user_id.map(|_| aggregate))
    }

    /// Revoked invitations that were made under this username in this domain (a revoked
    /// invitation gives its name back), oldest first.
    pub async fn revoked_under(
        &self,
        domain: &str,
        username_key: &str,
    ) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query_scalar(
            "SELECT user_id FROM account_states WHERE state = 'Revoked' AND domain = $1 \
             AND lower(username COLLATE \"und-x-icu\") = $2 ORDER BY created_at, user_id",
        )
        .bind(domain)
        .bind(username_key)
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    /// Every event of one account, oldest first, its personal fields opened (`<erased>` once
    /// the user was erased).
    pub async fn events_of(&self, user_id: Uuid) -> Result<Vec<StoredEvent>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let rows = sqlx::query(
            "SELECT global_position, aggregate_id, sequence, event_type, event_version, payload, \
             metadata, recorded_at FROM events WHERE aggregate_type = 'Onboarding' AND aggregate_id = $1 \
             ORDER BY sequence",
        )
        .bind(user_id.to_string())
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        let mut events = rows
            .into_iter()
            .map(stored_event)
            .collect::<Result<Vec<_>, _>>()?;
        let mut opened: Vec<personal::ToOpen<'_>> = events
            .iter_mut()
            .map(|e| personal::ToOpen {
                aggregate_id: &e.aggregate_id,
                event_type: &e.event_type,
                payload: &mut e.payload,
            })
            .collect();
        self.keys
            .open(&mut conn, &mut opened, Erased::Text)
            .await
            .map_err(|e| StoreError::Unexpected(Box::new(e)))?;
        Ok(events)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}

/// A failed query: [`StoreError::Unavailable`] when PostgreSQL could not be reached or did not
/// answer in time ([`is_unavailable`]), [`StoreError::Unstorable`] for a data exception,
/// otherwise [`StoreError::Unexpected`].
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    if sqlx_unavailable(&e) {
        StoreError::Unavailable(Box::new(e))
    } else {
        StoreError::classify(Box::new(e), StoreError::Unexpected)
    }
}

/// Reads one `events` row (the columns `events_of` selects).
pub fn stored_event(row: sqlx::postgres::PgRow) -> Result<StoredEvent, StoreError> {
    let get = |e: sqlx::Error| StoreError::Unexpected(Box::new(e));
    Ok(StoredEvent {
        global_position: row.try_get("global_position").map_err(get)?,
        aggregate_id: row.try_get("aggregate_id").map_err(get)?,
        sequence: row.try_get("sequence").map_err(get)?,
        event_type: row.try_get("event_type").map_err(get)?,
        event_version: row.try_get("event_version").map_err(get)?,
        payload: row.try_get("payload").map_err(get)?,
        metadata: row.try_get("metadata").map_err(get)?,
        recorded_at: row.try_get("recorded_at").map_err(get)?,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    /// The name is held; `holder` is the account holding it when it could be read (the caller's
    /// own `user_id` means a retry of a request whose invitation exists).
    #[error("the username `{username}` already exists in domain {domain}")]
    UsernameTaken {
        username: String,
        domain: String,
        holder: Option<Uuid>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Invites a user with a fresh id and code, and answers the account as invited. The username
    /// registry decides uniqueness inside the append's transaction (its unique index makes the
    /// append fail as a conflict), so an invitation costs no look-up before it; the id is new,
    /// so its (empty) log is not read either, and the answer is the invitation's events applied,
    /// not read back (docs/adr/0045).
    pub async fn invite(
        &self,
        invitation: Invitation,
        actor: &Actor,
    ) -> Result<Onboarding, InviteError> {
        let user_id = Uuid::now_v7();
        self.invite_on(Loaded::unused(user_id), user_id, invitation, actor)
            .await
    }

    /// [`Store::invite`] with a user id chosen by the caller: bulk jobs, SCIM and Kafka requests
    /// derive it from what identifies the request, so a retried request finds its own earlier
    /// invitation (`UsernameTaken` whose `holder` is `user_id`).
    pub async fn invite_as(
        &self,
        user_id: Uuid,
        invitation: Invitation,
        actor: &Actor,
    ) -> Result<Uuid, InviteError> {
        let loaded = self.load_for_command(user_id).await?;
        self.invite_on(loaded, user_id, invitation, actor)
            .await
            .map(|_| user_id)
    }

    async fn invite_on(
        &self,
        loaded: Loaded,
        user_id: Uuid,
        invitation: Invitation,
        actor: &Actor,
    ) -> Result<Onboarding, InviteError> {
        let domain = invitation.domain.as_str().to_owned();
        let name = invitation.username.clone();
        let username = invitation.username.as_str().to_owned();
        let command = OnboardingCommand::InviteUser(Box::new(onboarding_domain::InviteUser {
            user_id,
            code: new_code(&self.services.keyring, invitation.validity_minutes),
            username: invitation.username,
            email: invitation.email,
            domain: invitation.domain,
            locale: invitation.locale,
            time_zone: invitation.time_zone,
            claims: invitation.claims,
            now: Utc::now(),
        }));
        match self.execute_answering(loaded, command, actor).await {
            Ok(account) => Ok(account),
            // The registry's unique index fired (the name is held), or this id was invited
            // before (a retry that lost the race with its first attempt).
            Err(StoreError::Conflict | StoreError::Refused(OnboardingError::AlreadyInvited)) => {
                let holder = self.user_id_by_username(&domain, &name).await?;
                Err(InviteError::UsernameTaken {
                    username,
                    domain,
                    holder,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The newest sequence number of an account and when it was recorded (SCIM's `meta.version`
    /// and `meta.lastModified`), or `None` for an unknown id.
    pub async fn version_of(
        &self,
        user_id: Uuid,
    ) -> Result<Option<(i64, DateTime<Utc>)>, StoreError> {
        sqlx::query_as(
            "SELECT sequence, recorded_at FROM events WHERE aggregate_type = 'Onboarding' \
             AND aggregate_id = $1 ORDER BY sequence DESC LIMIT 1",
        )
        .bind(user_id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through_cqrs(e: sqlx::Error) -> StoreError {
        // As postgres-es hands it on: connection errors for I/O and TLS, unexpected otherwise.
        let aggregate = match e {
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                AggregateError::<OnboardingError>::DatabaseConnectionError(Box::new(e))
            }
            e => AggregateError::UnexpectedError(Box::new(e)),
        };
        StoreError::from(aggregate)
    }

    #[test]
    fn a_pool_that_timed_out_is_unavailable_however_it_is_wrapped() {
        assert!(matches!(
            through_cqrs(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            db(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        let refused =
            || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(
            through_cqrs(refused()),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(db(refused()), StoreError::Unavailable(_)));
        // Found as the cause of a cause, too.
        let wrapped = ConnectFailed(sqlx::Error::PoolClosed);
        assert!(is_unavailable(&wrapped));
    }

    #[test]
    fn a_failure_that_waiting_cannot_cure_is_unexpected() {
        assert!(matches!(
            through_cqrs(sqlx::Error::RowNotFound),
            StoreError::Unexpected(_)
        ));
        assert!(matches!(
            db(sqlx::Error::ColumnNotFound("x".into())),
            StoreError::Unexpected(_)
        ));
        assert!(!is_unavailable(&std::io::Error::other("not sqlx")));
    }

    #[test]
    fn timeouts_and_shutdowns_are_the_sqlstates_that_mean_not_now() {
        for code in [
            "08006", "08001", "57P01", "57P03", "53300", "57014", "55P03", "25P03",
        ] {
            assert!(unavailable_sqlstate(code), "{code}");
        }
        for code in ["22P05", "23505", "42P01", "40001"] {
            assert!(!unavailable_sqlstate(code), "{code}");
        }
    }

    fn settings(common_passwords_file: Option<&Path>) -> Settings {
        let mut toml = r#"
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
            [password_policy]
        "#
        .to_owned();
        if let Some(path) = common_passwords_file {
            toml.push_str(&format!(
                "common_passwords_file = {:?}\n",
                path.display().to_string()
            ));
        }
        Settings::from_toml_str(&toml).unwrap()
    }

    #[test]
    fn the_configured_common_password_list_is_read_when_the_store_is_opened() {
        let path = std::env::temp_dir().join(format!("onboard-common-{}.txt", std::process::id()));
        std::fs::write(&path, "Sunflower77\nmarmalade-cat\n").unwrap();
        let read = services(&settings(Some(&path)));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read.unwrap().policy.common_passwords.len(), 2);
        assert!(services(&settings(None))
            .unwrap()
            .policy
            .common_passwords
            .is_empty());
    }

    #[test]
    fn a_missing_common_password_list_stops_the_start_naming_the_key_and_the_path() {
        let path = Path::new("/nonexistent/onboard/common-passwords.txt");
        let Err(err) = services(&settings(Some(path))) else {
            panic!("a missing list was accepted");
        };
        let err = err.to_string();
        assert!(
            err.starts_with(
                "password_policy.common_passwords_file /nonexistent/onboard/common-passwords.txt: cannot be read"
            ),
            "{err}"
        );
        assert!(err.contains("remove the key"), "{err}");

        let empty = std::env::temp_dir().join(format!("onboard-empty-{}.txt", std::process::id()));
        std::fs::write(&empty, "\n\n").unwrap();
        let err = services(&settings(Some(&empty))).map(|_| ());
        std::fs::remove_file(&empty).unwrap();
        assert!(
            matches!(err, Err(ServicesError::CommonPasswordsEmpty { .. })),
            "{err:?}"
        );
    }
}
