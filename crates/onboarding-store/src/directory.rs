//! Searching accounts as a directory (SCIM's `GET /Users?filter=…` and `/.search`): a small
//! filter language over the attributes `account_states` keeps ([`DirectoryFilter`]), turned into
//! one SQL condition with every value bound, never spliced. Revoked invitations and erased users
//! are not in the directory (for SCIM they are deleted Users).

use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::{db, Store, StoreError};

/// An attribute the directory compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountField {
    /// SCIM's `userName`: `DOMAIN/name`, or the name alone in `PRIMARY`. Ignores case.
    UserName,
    /// The account's address. Ignores case.
    Email,
    /// The `external_id` claim. Case-exact, as SCIM's `externalId` is.
    ExternalId,
    /// The account's id, as lower-case UUID text.
    Id,
}

impl AccountField {
    /// The column (or expression) holding the attribute.
    fn column(self) -> &'static str {
        match self {
            Self::UserName => {
                "(CASE WHEN domain = 'PRIMARY' THEN username ELSE domain || '/' || username END)"
            }
            Self::Email => "email",
            Self::ExternalId => "external_id",
            Self::Id => "user_id::text",
        }
    }

    fn ignores_case(self) -> bool {
        !matches!(self, Self::ExternalId)
    }
}

/// How a value is compared with an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Equal,
    NotEqual,
    StartsWith,
    EndsWith,
    Contains,
}

/// Which accounts a search keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectoryFilter {
    /// The attribute compared with a value.
    Compare(AccountField, Comparison, String),
    /// The attribute has a value.
    Present(AccountField),
    /// The account is (or is not) active.
    Active(bool),
    /// Every account, or none.
    Always(bool),
    And(Vec<DirectoryFilter>),
    Or(Vec<DirectoryFilter>),
    Not(Box<DirectoryFilter>),
}

/// The order of a search's results; ties (and no order) go by account id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountOrder {
    UserName,
    Email,
    ExternalId,
    Created,
}

impl DirectoryFilter {
    /// Appends the condition, with its values bound.
    fn push(&self, q: &mut QueryBuilder<'_, Postgres>) {
        match self {
            Self::Compare(field, comparison, value) => {
                let (column, fold) = (field.column(), field.ignores_case());
                let side = |q: &mut QueryBuilder<'_, Postgres>, what: Side| {
                    match (what, fold) {
                        (Side::Column, true) => {
                            q.push(format!("lower({column} COLLATE \"und-x-icu\")"))
                        }
                        (Side::Column, false) => q.push(column),
                        (Side::Value, true) => q
                            .push("lower(")
                            .push_bind(value.clone())
                            .push("::text COLLATE \"und-x-icu\")"),
                        (Side::Value, false) => q.push_bind(value.clone()).push("::text"),
                    };
                };
                q.push("(");
                match comparison {
                    Comparison::Equal => {
                        side(q, Side::Column);
                        q.push(" = ");
                        side(q, Side::Value);
                    }
                    Comparison::NotEqual => {
                        q.push(format!("{column} IS NULL OR "));
                        side(q, Side::Column);
                        q.push(" <> ");
                        side(q, Side::Value);
                    }
                    Comparison::StartsWith => {
                        q.push("starts_with(");
                        side(q, Side::Column);
                        q.push(", ");
                        side(q, Side::Value);
                        q.push(")");
                    }
                    Comparison::EndsWith => {
                        q.push("starts_with(reverse(");
                        side(q, Side::Column);
                        q.push("), reverse(");
                        side(q, Side::Value);
                        q.push("))");
                    }
                    Comparison::Contains => {
                        q.push("strpos(");
                        side(q, Side::Column);
                        q.push(", ");
                        side(q, Side::Value);
                        q.push(") > 0");
                    }
                }
                q.push(")");
            }
            Self::Present(field) => {
                let column = field.column();
                q.push(format!("({column} IS NOT NULL AND {column} <> '')"));
            }
            Self::Active(true) => {
                q.push("(state = 'Active')");
            }
            Self::Active(false) => {
                q.push("(state <> 'Active')");
            }
            Self::Always(true) => {
                q.push("TRUE");
            }
            Self::Always(false) => {
                q.push("FALSE");
            }
            Self::And(all) | Self::Or(all) => {
                let joint = if matches!(self, Self::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                q.push("(");
                for (i, f) in all.iter().enumerate() {
                    if i > 0 {
                        q.push(joint);
                    }
                    f.push(q);
                }
                if all.is_empty() {
                    q.push(if matches!(self, Self::And(_)) {
                        "TRUE"
                    } else {
                        "FALSE"
                    });
                }
                q.push(")");
            }
            Self::Not(inner) => {
                // A comparison with an absent attribute is SQL's unknown but SCIM's false, so
                // `not` of it keeps the account.
                q.push("(NOT COALESCE(");
                inner.push(q);
                q.push(", FALSE))");
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Column,
    Value,
}

impl AccountOrder {
    fn column(self) -> &'static str {
        match self {
            Self::UserName => "lower(CASE WHEN domain = 'PRIMARY' THEN username ELSE domain || '/' || username END COLLATE \"und-x-icu\")",
            Self::Email => "lower(email COLLATE \"und-x-icu\")",
            Self::ExternalId => "external_id",
            Self::Created => "created_at",
        }
    }
}

/// Where a search starts the condition: the directory holds every account but revoked and
/// erased ones.
fn base(select: &str) -> QueryBuilder<'static, Postgres> {
    QueryBuilder::new(format!(
        "SELECT {select} FROM account_states WHERE state NOT IN ('Revoked', 'Erased') AND "
    ))
}

impl Store {
    /// The accounts `filter` keeps (all when `None`), in `order` (`descending` reverses it;
    /// ties by id), `limit` of them after the first `offset`, and how many it keeps in all.
    pub async fn search_accounts(
        &self,
        filter: Option<&DirectoryFilter>,
        order: Option<(AccountOrder, bool)>,
        offset: i64,
        limit: i64,
    ) -> Result<(i64, Vec<Uuid>), StoreError> {
        let all = DirectoryFilter::Always(true);
        let filter = filter.unwrap_or(&all);
        let mut count = base("count(*)");
        filter.push(&mut count);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let mut page = base("user_id");
        filter.push(&mut page);
        page.push(" ORDER BY ");
        if let Some((order, descending)) = order {
            let direction = if descending {
                " DESC NULLS LAST"
            } else {
                " ASC NULLS LAST"
            };
            page.push(order.column()).push(direction).push(", ");
        }
        page.push("user_id OFFSET ")
            .push_bind(offset)
            .push(" LIMIT ")
            .push_bind(limit);
        let ids = page
            .build_query_scalar()
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok((total, ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(filter: &DirectoryFilter) -> String {
        let mut q = base("user_id");
        filter.push(&mut q);
        q.into_sql()
    }

    #[test]
    fn values_are_bound_and_never_spliced() {
        let f = DirectoryFilter::Or(vec![
            DirectoryFilter::Compare(
                AccountField::UserName,
                Comparison::StartsWith,
                "x'); DROP TABLE events; --".into(),
            ),
            DirectoryFilter::Not(Box::new(DirectoryFilter::Compare(
                AccountField::ExternalId,
                Comparison::Equal,
                "hr-1".into(),
            ))),
        ]);
        let sql = sql(&f);
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(sql.contains("$1") && sql.contains("$2"), "{sql}");
        assert!(sql.contains("state NOT IN ('Revoked', 'Erased')"), "{sql}");
        // externalId is case-exact, userName is not.
        assert!(sql.contains("external_id = $2::text"), "{sql}");
        assert!(sql.contains("lower((CASE"), "{sql}");
    }
}
