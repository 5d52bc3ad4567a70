//! The comparison of the rebuilt projections with the live ones, made in memory as the rows
//! arrive (docs/adr/0043): a rebuilt row and a live row that are equal cancel out; what is left
//! at the end is the difference, each row on the side it is only in. That is `EXCEPT ALL` both
//! ways, as the replay computed it in SQL before, without writing the rows anywhere.
//!
//! Rows wait for their other side keyed by user id. Both sides arrive in the same order (the log
//! by account, the live projections by user id), so only rows that differ stay held: memory grows
//! with the differences, not with the log. Order only bounds the memory; the result does not
//! depend on it.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use onboarding_store::UsernameRegistry;
use serde_json::{json, Value};
use uuid::Uuid;

/// A row of `account_states`, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    pub user_id: Uuid,
    pub state: Option<String>,
    pub state_since: Option<DateTime<Utc>>,
    pub code_expires_at: Option<DateTime<Utc>>,
    pub username: Option<String>,
    pub domain: Option<String>,
    pub email: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub delivery: Option<String>,
    pub provisioning: Option<String>,
    pub external_id: Option<String>,
}

/// The columns of `account_states` read from the live table, in [`AccountState`]'s order.
pub(crate) const ACCOUNT_COLUMNS: &str = "user_id, state, state_since, code_expires_at, \
     username, domain, email, created_at, delivery, provisioning, external_id";

impl AccountState {
    /// A live row, read with [`ACCOUNT_COLUMNS`].
    pub(crate) fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            user_id: row.try_get(0)?,
            state: row.try_get(1)?,
            state_since: row.try_get(2)?,
            code_expires_at: row.try_get(3)?,
            username: row.try_get(4)?,
            domain: row.try_get(5)?,
            email: row.try_get(6)?,
            created_at: row.try_get(7)?,
            delivery: row.try_get(8)?,
            provisioning: row.try_get(9)?,
            external_id: row.try_get(10)?,
        })
    }

    fn to_json(&self) -> Value {
        let time =
            |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true));
        json!({
            "user_id": self.user_id,
            "state": self.state,
            "state_since": time(&self.state_since),
            "code_expires_at": time(&self.code_expires_at),
            "username": self.username,
            "domain": self.domain,
            "email": self.email,
            "created_at": time(&self.created_at),
            "delivery": self.delivery,
            "provisioning": self.provisioning,
            "external_id": self.external_id,
        })
    }
}

/// PostgreSQL keeps microseconds: a rebuilt instant is compared as a `timestamptz` column would
/// hold it (sqlx truncates to microseconds when it writes one).
pub(crate) fn as_stored(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    t.map(|t| t.trunc_subsecs(6))
}

/// A row of `usernames`, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRow {
    pub domain: String,
    pub username_key: String,
    pub user_id: Uuid,
}

/// The columns of `usernames` read from the live table, in [`NameRow`]'s order.
pub(crate) const NAME_COLUMNS: &str = "domain, username_key, user_id";

impl NameRow {
    pub(crate) fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            domain: row.try_get(0)?,
            username_key: row.try_get(1)?,
            user_id: row.try_get(2)?,
        })
    }

    fn to_json(&self) -> Value {
        json!({"domain": self.domain, "username_key": self.username_key, "user_id": self.user_id})
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Live,
    Replay,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Replay => "replay",
        }
    }
}

/// Rows of one projection still waiting for an equal row on the other side, by user id.
struct Held<R> {
    live: HashMap<Uuid, Vec<R>>,
    replay: HashMap<Uuid, Vec<R>>,
}

impl<R: PartialEq> Held<R> {
    fn new() -> Self {
        Self {
            live: HashMap::new(),
            replay: HashMap::new(),
        }
    }

    /// Cancels `row` against an equal row held for the other side, or holds it.
    fn add(&mut self, side: Side, user_id: Uuid, row: R) {
        let (mine, other) = match side {
            Side::Live => (&mut self.live, &mut self.replay),
            Side::Replay => (&mut self.replay, &mut self.live),
        };
        if let Some(rows) = other.get_mut(&user_id) {
            if let Some(i) = rows.iter().position(|r| *r == row) {
                rows.swap_remove(i);
                if rows.is_empty() {
                    other.remove(&user_id);
                }
                return;
            }
        }
        mine.entry(user_id).or_default().push(row);
    }

    fn len(&self) -> usize {
        self.live
            .values()
            .chain(self.replay.values())
            .map(Vec::len)
            .sum()
    }

    fn into_rows(self) -> impl Iterator<Item = (Side, R)> {
        let live = self.live.into_values().flatten().map(|r| (Side::Live, r));
        let replay = self
            .replay
            .into_values()
            .flatten()
            .map(|r| (Side::Replay, r));
        live.chain(replay)
    }
}

/// The comparison of both projections: fed the rebuilt rows and the live ones in any order.
pub struct Comparison {
    registry: UsernameRegistry,
    accounts: Held<AccountState>,
    names: Held<NameRow>,
    /// Rows of the live registry that held a name in clear while names are keyed (written before
    /// the registry was keyed, and not yet rewritten by `onboard migrate`): compared in their
    /// keyed form, which means the same name.
    pub names_in_clear: u64,
}

impl Comparison {
    /// `registry`: how the registry keys names (the replay rebuilds `usernames` in that form).
    pub fn new(registry: UsernameRegistry) -> Self {
        Self {
            registry,
            accounts: Held::new(),
            names: Held::new(),
            names_in_clear: 0,
        }
    }

    pub fn registry(&self) -> &UsernameRegistry {
        &self.registry
    }

    /// An account's rebuilt row, and her rebuilt `usernames` row if she holds a name.
    pub fn replayed(&mut self, account: AccountState, name: Option<NameRow>) {
        if let Some(name) = name {
            self.names.add(Side::Replay, name.user_id, name);
        }
        self.accounts.add(Side::Replay, account.user_id, account);
    }

    pub fn live_account(&mut self, account: AccountState) {
        self.accounts.add(Side::Live, account.user_id, account);
    }

    pub fn live_name(&mut self, mut name: NameRow) {
        if self.registry.keyed_by().is_some() && !name.username_key.contains('/') {
            name.username_key = self.registry.stored_key(&name.domain, &name.username_key);
            self.names_in_clear += 1;
        }
        self.names.add(Side::Live, name.user_id, name);
    }

    /// Rows held, waiting for an equal row on the other side.
    pub fn held(&self) -> usize {
        self.accounts.len() + self.names.len()
    }

    /// What is left: `account_states` first, by user id, then `usernames` by domain and key;
    /// the live side of a row before the replayed one.
    pub fn differences(self) -> Vec<Difference> {
        let mut accounts: Vec<(Side, AccountState)> = self.accounts.into_rows().collect();
        accounts.sort_by_key(|(side, r)| (r.user_id, *side));
        let mut names: Vec<(Side, NameRow)> = self.names.into_rows().collect();
        names.sort_by(|(a_side, a), (b_side, b)| {
            (&a.domain, &a.username_key, a_side).cmp(&(&b.domain, &b.username_key, b_side))
        });
        let accounts = accounts.into_iter().map(|(side, r)| Difference {
            projection: "account_states",
            side: side.name().to_owned(),
            row: r.to_json(),
        });
        let names = names.into_iter().map(|(side, r)| Difference {
            projection: "usernames",
            side: side.name().to_owned(),
            row: r.to_json(),
        });
        accounts.chain(names).collect()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn account(n: u8, state: &str) -> AccountState {
        AccountState {
            user_id: id(n),
            state: Some(state.into()),
            state_since: DateTime::from_timestamp(1_700_000_000, 1_000),
            code_expires_at: None,
            username: Some(format!("user{n}")),
            domain: Some("PRIMARY".into()),
            email: Some(format!("user{n}@pickup.example")),
            created_at: DateTime::from_timestamp(1_700_000_000, 1_000),
            delivery: Some("sent".into()),
            provisioning: None,
            external_id: None,
        }
    }

    fn name(n: u8, key: &str) -> NameRow {
        NameRow {
            domain: "PRIMARY".into(),
            username_key: key.into(),
            user_id: id(n),
        }
    }

    #[test]
    fn equal_rows_cancel_in_either_order_and_hold_nothing() {
        let mut c = Comparison::new(UsernameRegistry::default());
        c.replayed(account(1, "Invited"), Some(name(1, "user1")));
        c.live_account(account(1, "Invited"));
        c.live_account(account(2, "Active"));
        c.live_name(name(1, "user1"));
        c.live_name(name(2, "user2"));
        c.replayed(account(2, "Active"), Some(name(2, "user2")));
        assert_eq!(c.held(), 0);
        assert!(c.differences().is_empty());
    }

    #[test]
    fn a_changed_row_is_named_on_both_sides_and_a_missing_one_on_its_own() {
        let mut c = Comparison::new(UsernameRegistry::default());
        // Account 1 was made active by hand; account 2 is missing from the live table; the
        // registry holds a name for account 3, which has no events.
        c.live_account(account(1, "Active"));
        c.replayed(account(1, "Revoked"), None);
        c.replayed(account(2, "Invited"), Some(name(2, "user2")));
        c.live_name(name(2, "user2"));
        c.live_name(name(3, "mallory"));
        let d: Vec<String> = c.differences().iter().map(ToString::to_string).collect();
        assert_eq!(d.len(), 4, "{d:#?}");
        assert!(d[0].starts_with("account_states only in live: ") && d[0].contains("\"Active\""));
        assert!(
            d[1].starts_with("account_states only in replay: ") && d[1].contains("\"Revoked\"")
        );
        assert!(d[2].starts_with("account_states only in replay: ") && d[2].contains("user2"));
        assert!(d[3].starts_with("usernames only in live: ") && d[3].contains("\"mallory\""));
    }

    #[test]
    fn rows_are_compared_as_multisets_like_except_all() {
        // Two replayed rows for one user (two aggregate ids that name the same uuid) and one
        // live row equal to the second: the first is left over.
        let mut c = Comparison::new(UsernameRegistry::default());
        c.replayed(account(1, "Invited"), None);
        c.replayed(account(1, "Active"), None);
        c.live_account(account(1, "Active"));
        let d = c.differences();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].side, "replay");
        assert_eq!(d[0].row["state"], "Invited");
    }

    #[test]
    fn an_instant_differing_by_a_microsecond_is_a_difference() {
        let mut c = Comparison::new(UsernameRegistry::default());
        let mut later = account(1, "Invited");
        later.state_since = DateTime::from_timestamp(1_700_000_000, 2_000);
        c.live_account(account(1, "Invited"));
        c.replayed(later, None);
        let d = c.differences();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].row["state_since"], "2023-11-14T22:13:20.000001Z");
        assert_eq!(d[1].row["state_since"], "2023-11-14T22:13:20.000002Z");
    }

    #[test]
    fn a_live_name_in_clear_is_compared_in_its_keyed_form_and_counted() {
        let registry = UsernameRegistry::keyed(&[1u8; 32]);
        let keyed = registry.stored_key("PRIMARY", "jane");
        assert!(keyed.contains('/'), "{keyed}");
        let mut c = Comparison::new(registry);
        c.replayed(account(1, "Invited"), Some(name(1, &keyed)));
        c.live_account(account(1, "Invited"));
        c.live_name(name(1, "jane"));
        assert_eq!(c.names_in_clear, 1);
        assert!(c.differences().is_empty());
    }

    #[test]
    fn rebuilt_instants_are_compared_at_the_microsecond_postgresql_keeps() {
        let t = DateTime::from_timestamp(1_700_000_000, 1_000_999);
        assert_eq!(
            as_stored(t),
            DateTime::from_timestamp(1_700_000_000, 1_000_000)
        );
        assert_eq!(as_stored(None), None);
    }
}
