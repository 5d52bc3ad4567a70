//! Group commit: the events of many commands in one transaction, one fsync (docs/adr/0023).
//!
//! Appends are serialised by an advisory lock that the triggers on `events` take at each
//! `INSERT` and hold through the commit (migrations 0008 and 0023, docs/adr/0007), so one command
//! per transaction meant one fsync per command, one after another. [`GroupCommit`] is cqrs-es' event repository with `persist`
//! handed to one appender task per process: it takes every command that is waiting (up to
//! [`MAX_COMMANDS`]), writes all their events in one transaction, and answers each caller after
//! the commit. The lock, the triggers and the log's layout do not depend on it, so everything
//! they guarantee still holds: position order is commit order, the hash chain has its
//! predecessor, outbox ids are commit-ordered. Reads go straight to postgres-es' repository.
//!
//! The triggers run once per `INSERT` statement, over all its rows (docs/adr/0046): the batch's
//! `account_states` rows are each written once, with the clear values of the fields the
//! appender sealed, which it hands the projection trigger in a transaction-local setting
//! ([`InClear`]) just before the `INSERT`.
//!
//! Each command keeps its own outcome. The batch is first written as one `INSERT`; when that
//! fails for a reason that belongs to one command (its sequence was taken: a lost race; the
//! username is held; a value PostgreSQL refuses as data), the batch is written again command by
//! command, each in a savepoint, so that only the commands that fail are refused. A failure of
//! the connection or of the commit is every caller's failure, as it was when each command had
//! its own transaction.

use std::sync::Arc;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use onboarding_domain::value::Username;
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use crate::personal::{PersonalKeys, ToSeal};
use crate::reads::OpenedReads;
use crate::registry::{UsernameRegistry, APPEND_LOCK};

/// The most commands in one transaction. Each command of a batch that is written again one by
/// one gets a savepoint, and PostgreSQL keeps up to 64 subtransactions per backend in shared
/// memory; more would make every other session's snapshots consult `pg_subtrans`.
pub(crate) const MAX_COMMANDS: usize = 64;

/// Commands waiting for the appender; senders wait when it is full.
const QUEUE: usize = 1024;

const INSERT: &str = "INSERT INTO events \
     (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     SELECT t, a, s, e, v, p, m FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], \
     $5::text[], $6::jsonb[], $7::jsonb[]) WITH ORDINALITY AS r(t, a, s, e, v, p, m, n) \
     ORDER BY n";

/// One command's events on their way to the appender, and where its outcome goes.
struct Append {
    aggregate_type: &'static str,
    events: Vec<SerializedEvent>,
    done: oneshot::Sender<Result<(), PersistenceError>>,
}

/// cqrs-es' event repository for the store: postgres-es reads (opened, `reads.rs`),
/// group-committed appends (sealed, docs/adr/0030).
pub(crate) struct GroupCommit {
    reads: OpenedReads,
    appender: mpsc::Sender<Append>,
}

impl GroupCommit {
    /// Starts this repository's appender task on the current tokio runtime. The task ends when
    /// the repository is dropped, after writing what was already handed to it.
    pub(crate) fn start(pool: PgPool, keys: PersonalKeys) -> Self {
        let (appender, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool.clone(), keys.clone(), queue));
        Self {
            reads: OpenedReads::new(pool, keys),
            appender,
        }
    }
}

impl PersistedEventRepository for GroupCommit {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.reads.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        if snapshot_update.is_some() {
            // The store keeps no snapshots; should it ever, postgres-es writes them with the
            // events in a transaction of their own, as before.
            return self.reads.persist::<A>(events, snapshot_update).await;
        }
        if events.is_empty() {
            return Ok(());
        }
        let (done, outcome) = oneshot::channel();
        let append = Append {
            aggregate_type: A::TYPE,
            events: events.to_vec(),
            done,
        };
        self.appender
            .send(append)
            .await
            .map_err(|_| AppenderGone.into_persistence())?;
        outcome
            .await
            .unwrap_or_else(|_| Err(AppenderGone.into_persistence()))
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_all_events::<A>().await
    }
}

/// The appender stopped (the runtime is shutting down); nothing was written for this command.
#[derive(Debug, thiserror::Error)]
#[error("the event appender has stopped")]
struct AppenderGone;

impl AppenderGone {
    fn into_persistence(self) -> PersistenceError {
        PersistenceError::UnknownError(Box::new(self))
    }
}

/// A database failure that several commands share (the connection, the commit): each caller
/// gets one of these, all naming the same sqlx error, which stays reachable as the source so
/// that the store's classification (`is_unavailable`, data exceptions) finds it.
#[derive(Debug)]
struct Shared(Arc<sqlx::Error>);

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// As postgres-es reports an append's failure: a unique violation (the sequence is taken, or a
/// uniqueness trigger fired) is an optimistic-lock error, which cqrs-es reports as a conflict;
/// an I/O or TLS failure is a connection error; the rest are unknown errors (the store looks
/// at their cause).
fn persistence_error(e: &Arc<sqlx::Error>) -> PersistenceError {
    match &**e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            PersistenceError::ConnectionError(Box::new(Shared(e.clone())))
        }
        _ => PersistenceError::UnknownError(Box::new(Shared(e.clone()))),
    }
}

/// Whether a failed `INSERT` says something about the rows it was given (a constraint, a value
/// PostgreSQL refuses, a check or a trigger's refusal), rather than about the connection or the
/// session: only then is the batch worth writing again command by command.
fn belongs_to_the_rows(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("22") || code.starts_with("23") || code.starts_with("P0")
        }),
        _ => false,
    }
}

async fn run(pool: PgPool, keys: PersonalKeys, mut queue: mpsc::Receiver<Append>) {
    let mut batch = Vec::with_capacity(MAX_COMMANDS);
    while queue.recv_many(&mut batch, MAX_COMMANDS).await > 0 {
        // A caller that stopped waiting (its request timed out) gets nothing written, as when
        // it dropped its own transaction before the commit.
        batch.retain(|a| !a.done.is_closed());
        if !batch.is_empty() {
            metrics::counter!("onboard_append_batches_total").increment(1);
            metrics::counter!("onboard_append_commands_total").increment(batch.len() as u64);
            write(&pool, &keys, std::mem::take(&mut batch)).await;
        }
    }
}

/// Writes one batch and answers every caller in it.
async fn write(pool: &PgPool, keys: &PersonalKeys, batch: Vec<Append>) {
    let all: Vec<&Append> = batch.iter().collect();
    match together(pool, keys, &all).await {
        Ok(()) => answer(batch, |_| Ok(())),
        Err(Failed::Rows(_)) if batch.len() > 1 => one_by_one(pool, keys, batch).await,
        Err(Failed::Rows(e) | Failed::Transaction(e)) => {
            let e = Arc::new(e);
            answer(batch, |_| Err(persistence_error(&e)))
        }
    }
}

fn answer(batch: Vec<Append>, outcome: impl Fn(usize) -> Result<(), PersistenceError>) {
    for (i, append) in batch.into_iter().enumerate() {
        // A caller that stopped waiting is not told.
        let _ = append.done.send(outcome(i));
    }
}

enum Failed {
    /// The `INSERT` was refused for something in its rows.
    Rows(sqlx::Error),
    /// Anything else: the connection, the session, the commit.
    Transaction(sqlx::Error),
}

/// Every command's events in one `INSERT`, one transaction.
async fn together(pool: &PgPool, keys: &PersonalKeys, batch: &[&Append]) -> Result<(), Failed> {
    let mut tx = pool.begin().await.map_err(Failed::Transaction)?;
    append_lock(&mut tx).await.map_err(Failed::Transaction)?;
    insert(&mut tx, keys, batch).await.map_err(|e| {
        if belongs_to_the_rows(&e) {
            Failed::Rows(e)
        } else {
            Failed::Transaction(e)
        }
    })?;
    tx.commit().await.map_err(Failed::Transaction)
}

/// The batch again, each command in a savepoint: a command whose rows are refused is rolled back
/// alone and gets its own error; the others commit together.
async fn one_by_one(pool: &PgPool, keys: &PersonalKeys, batch: Vec<Append>) {
    let mut outcomes: Vec<Option<Arc<sqlx::Error>>> = vec![None; batch.len()];
    let result: Result<(), sqlx::Error> = async {
        let mut tx = pool.begin().await?;
        append_lock(&mut tx).await?;
        for (i, append) in batch.iter().enumerate() {
            sqlx::query("SAVEPOINT command").execute(&mut *tx).await?;
            match insert(&mut tx, keys, &[append]).await {
                Ok(()) => {}
                Err(e) if belongs_to_the_rows(&e) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT command")
                        .execute(&mut *tx)
                        .await?;
                    outcomes[i] = Some(Arc::new(e));
                }
                Err(e) => return Err(e),
            }
            sqlx::query("RELEASE SAVEPOINT command")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
    .await;
    match result {
        Ok(()) => answer(batch, |i| match &outcomes[i] {
            None => Ok(()),
            Some(e) => Err(persistence_error(e)),
        }),
        // Nothing was committed: every command gets the transaction's failure, even one whose
        // rows were refused (the refusal may have come from a command before it in this batch,
        // which is not stored either).
        Err(e) => {
            let e = Arc::new(e);
            answer(batch, |_| Err(persistence_error(&e)))
        }
    }
}

/// Takes the appends' advisory lock before anything else of the batch is written. The
/// `events_chain_head` trigger takes it at the `INSERT` anyway; taken first, no appender holds a
/// row lock (a new account's data key, a name in the registry) while it waits for the lock, so
/// two appenders that write a row with the same key (one request handled by two consumers at
/// once) wait for each other in one order and never deadlock.
async fn append_lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(conn)
        .await
        .map(drop)
}

/// The events of `batch`, in order (command by command, each command's in sequence order), their
/// personal fields sealed, and what the projections keep of those fields in clear.
async fn insert(
    conn: &mut PgConnection,
    keys: &PersonalKeys,
    batch: &[&Append],
) -> Result<(), sqlx::Error> {
    let mut sealed: Vec<Value> = batch
        .iter()
        .flat_map(|a| a.events.iter().map(|e| e.payload.clone()))
        .collect();
    let mut to_seal: Vec<ToSeal<'_>> = batch
        .iter()
        .flat_map(|a| a.events.iter())
        .zip(sealed.iter_mut())
        .map(|(e, payload)| ToSeal {
            aggregate_id: &e.aggregate_id,
            event_type: &e.event_type,
            payload,
        })
        .collect();
    let clear = keys.seal(conn, &mut to_seal).await.map_err(|e| match e {
        crate::personal::PersonalDataError::Database(e) => e,
        other => sqlx::Error::Encode(Box::new(other)),
    })?;
    drop(to_seal);
    let in_clear = InClear::of(
        keys.registry(),
        batch.iter().flat_map(|a| a.events.iter()).zip(clear),
    );
    if let Some(fields) = &in_clear.fields {
        // Read and emptied by the `project_account_state` trigger of the INSERT below
        // (migration 0023), which writes each account's row once, with these values.
        sqlx::query("SELECT set_config('onboard.fields_in_clear', $1, true)")
            .bind(fields)
            .execute(&mut *conn)
            .await?;
    }
    let rows = batch.iter().map(|a| a.events.len()).sum();
    let mut types = Vec::with_capacity(rows);
    let mut ids = Vec::with_capacity(rows);
    let mut sequences = Vec::with_capacity(rows);
    let mut event_types = Vec::with_capacity(rows);
    let mut versions = Vec::with_capacity(rows);
    let mut payloads = Vec::with_capacity(rows);
    let mut metadata = Vec::with_capacity(rows);
    let mut next = sealed.iter();
    for append in batch {
        for event in &append.events {
            types.push(append.aggregate_type);
            ids.push(event.aggregate_id.as_str());
            sequences.push(event.sequence as i64);
            event_types.push(event.event_type.as_str());
            versions.push(event.event_version.as_str());
            payloads.push(next.next().expect("one sealed payload per event"));
            metadata.push(&event.metadata);
        }
    }
    sqlx::query(INSERT)
        .bind(types)
        .bind(ids)
        .bind(sequences)
        .bind(event_types)
        .bind(versions)
        .bind(payloads)
        .bind(metadata)
        .execute(&mut *conn)
        .await?;
    in_clear.register(conn, keys.registry()).await
}

/// What the projections keep of the fields just sealed, until the user is erased: an
/// invitation's username, address and `external_id` claim in clear in `account_states`, and its
/// name in the registry as `registry` stores it (keyed, or in clear without a key-encryption
/// key; docs/adr/0035), whose unique key refuses a name that is held, as the trigger did for
/// payloads in clear; and what SCIM's `EmailChanged` and `ClaimsUpdated` change.
#[derive(Debug, Default)]
struct InClear {
    /// For the projection trigger: `"<aggregate id>/<sequence>"` to the event's username, email
    /// and claims in clear, as JSON; `None` when the batch sealed none of them.
    fields: Option<String>,
    /// The invitations' names, in the batch's order: their domains, their keys as the registry
    /// stores them, their accounts, and their `Username::key`s.
    domains: Vec<String>,
    keys: Vec<String>,
    invited: Vec<uuid::Uuid>,
    clear_keys: Vec<String>,
}

impl InClear {
    fn of<'a>(
        registry: &UsernameRegistry,
        events: impl Iterator<Item = (&'a SerializedEvent, Option<Map<String, Value>>)>,
    ) -> Self {
        let mut this = Self::default();
        let mut fields = Map::new();
        for (event, clear) in events {
            let Some(mut clear) = clear else { continue };
            let Ok(user_id) = uuid::Uuid::parse_str(&event.aggregate_id) else {
                continue;
            };
            let projected: &[&str] = match event.event_type.as_str() {
                "UserInvited" => &["username", "email", "claims"],
                "EmailChanged" => &["email"],
                "ClaimsUpdated" => &["claims"],
                _ => continue,
            };
            if event.event_type == "UserInvited" {
                let domain = event
                    .payload
                    .pointer("/UserInvited/domain")
                    .and_then(Value::as_str);
                if let (Some(Value::String(username)), Some(domain)) =
                    (clear.get("username"), domain)
                {
                    let name_key = Username::parse(username)
                        .map(|u| u.key())
                        .unwrap_or_else(|_| username.to_lowercase());
                    this.keys.push(registry.stored_key(domain, &name_key));
                    this.clear_keys.push(name_key);
                    this.domains.push(domain.to_owned());
                    this.invited.push(user_id);
                }
            }
            let kept: Map<String, Value> = projected
                .iter()
                .filter_map(|f| clear.remove_entry(*f))
                .collect();
            if !kept.is_empty() {
                fields.insert(
                    format!("{}/{}", event.aggregate_id, event.sequence),
                    Value::Object(kept),
                );
            }
        }
        if !fields.is_empty() {
            this.fields = Some(Value::Object(fields).to_string());
        }
        this
    }

    /// Registers the batch's invitations' names, after the events that hold them.
    async fn register(
        self,
        conn: &mut PgConnection,
        registry: &UsernameRegistry,
    ) -> Result<(), sqlx::Error> {
        if self.keys.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO usernames (domain, username_key, user_id) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[])",
        )
        .bind(&self.domains)
        .bind(&self.keys)
        .bind(&self.invited)
        .execute(&mut *conn)
        .await?;
        if registry.keyed_by().is_some() {
            // A row in clear, written before the registry was keyed and not yet rewritten by
            // `onboard migrate`, holds the name as well as a keyed one would (migration 0020).
            sqlx::query("SELECT refuse_names_held_in_clear($1::text[], $2::text[])")
                .bind(&self.domains)
                .bind(&self.clear_keys)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::AggregateError;
    use onboarding_domain::OnboardingError;

    use super::*;
    use crate::StoreError;

    /// What a caller of the store sees for a failure the appender reports.
    fn seen(e: sqlx::Error) -> StoreError {
        let e = Arc::new(e);
        StoreError::from(AggregateError::<OnboardingError>::from(persistence_error(
            &e,
        )))
    }

    #[test]
    fn a_failure_shared_by_a_batch_reaches_each_caller_as_it_would_alone() {
        let refused =
            || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(seen(refused()), StoreError::Unavailable(_)));
        // Found through the shared wrapper, as the cause of the cause.
        assert!(matches!(
            seen(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        let e = seen(sqlx::Error::RowNotFound);
        assert!(matches!(e, StoreError::Unexpected(_)), "{e:?}");
        assert!(e.to_string().contains("no rows returned"), "{e}");
    }

    fn event(id: &str, sequence: usize, event_type: &str, payload: Value) -> SerializedEvent {
        SerializedEvent {
            aggregate_id: id.to_owned(),
            sequence,
            aggregate_type: "Onboarding".to_owned(),
            event_type: event_type.to_owned(),
            event_version: "1.0".to_owned(),
            payload,
            metadata: Value::Null,
        }
    }

    fn clear(value: Value) -> Option<Map<String, Value>> {
        value.as_object().cloned()
    }

    #[test]
    fn the_projection_gets_each_events_clear_fields_and_nothing_else_it_sealed() {
        let jane = "0193b3c4-0000-7000-8000-000000000001";
        let olga = "0193b3c4-0000-7000-8000-000000000002";
        let invited = event(
            jane,
            1,
            "UserInvited",
            serde_json::json!({"UserInvited": {"domain": "PRIMARY", "sealed": "…"}}),
        );
        let issued = event(jane, 2, "CodeIssued", serde_json::json!({"CodeIssued": {}}));
        let changed = event(olga, 4, "EmailChanged", serde_json::json!({}));
        let revoked = event(olga, 5, "InvitationRevoked", serde_json::json!({}));
        let events = [
            (
                &invited,
                clear(
                    serde_json::json!({"username": "Jane", "email": "jane@pickup.example",
                                         "claims": {"external_id": "e-1"}}),
                ),
            ),
            (&issued, None),
            (
                &changed,
                clear(serde_json::json!({"email": "olga@pickup.example"})),
            ),
            (
                &revoked,
                clear(serde_json::json!({"reason": "wrong address"})),
            ),
        ];
        let in_clear = InClear::of(&UsernameRegistry::in_clear(), events.into_iter());
        let fields: Value = serde_json::from_str(in_clear.fields.as_deref().unwrap()).unwrap();
        assert_eq!(
            fields,
            serde_json::json!({
                format!("{jane}/1"): {"username": "Jane", "email": "jane@pickup.example",
                                      "claims": {"external_id": "e-1"}},
                format!("{olga}/4"): {"email": "olga@pickup.example"},
            })
        );
        assert_eq!(in_clear.domains, ["PRIMARY"]);
        assert_eq!(in_clear.keys, ["jane"]);
        assert_eq!(in_clear.invited, [uuid::Uuid::parse_str(jane).unwrap()]);
        // A batch that sealed nothing the projection keeps sets nothing.
        let none = InClear::of(
            &UsernameRegistry::in_clear(),
            [(&revoked, None)].into_iter(),
        );
        assert!(none.fields.is_none() && none.keys.is_empty());
    }

    #[test]
    fn only_a_refusal_of_the_rows_sends_a_batch_back_command_by_command() {
        assert!(!belongs_to_the_rows(&sqlx::Error::PoolTimedOut));
        assert!(!belongs_to_the_rows(&sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::BrokenPipe)
        )));
        assert!(!belongs_to_the_rows(&sqlx::Error::RowNotFound));
    }
}
