//! The question of `GET /Users` (query parameters) and `POST /Users/.search` (a SearchRequest
//! body), read once into a [`Search`]: the filter, parsed by `scim_v2`'s RFC 7644 grammar and
//! turned into the store's [`DirectoryFilter`] within [`MAX_TERMS`] and [`MAX_DEPTH`]; the order;
//! the page; the attributes to return.

use std::collections::HashMap;

use onboarding_store::{AccountField, AccountOrder, Comparison, DirectoryFilter};
use scim_v2::filter::{AttrExp, AttrPath, CompValue, CompareOp, Filter, MaybeFilter, ValFilter};
use scim_v2::models::others::{SearchRequest, SortOrder};

use super::attributes::Selection;
use super::error::ScimError;
use super::USER;

/// The most Users one page holds (`count` above it means this many).
pub(super) const MAX_RESULTS: i64 = 200;
/// The most comparisons one filter may hold.
pub(super) const MAX_TERMS: usize = 12;
/// The deepest nesting of `and`, `or`, `not`, parentheses and `[…]` one filter may have.
pub(super) const MAX_DEPTH: usize = 4;

/// What a search asked for.
#[derive(Debug, PartialEq)]
pub(super) struct Search {
    /// The accounts to keep; `None` lists every User.
    pub filter: Option<DirectoryFilter>,
    /// The order, and whether it is descending.
    pub order: Option<(AccountOrder, bool)>,
    /// 1-based index of the first User of the page.
    pub start: i64,
    /// Users on the page, at most [`MAX_RESULTS`].
    pub count: i64,
    /// The attributes each User is returned with.
    pub selection: Selection,
}

impl Search {
    /// The query of `GET /Users`.
    pub(super) fn from_query(query: &HashMap<String, String>) -> Result<Self, ScimError> {
        for key in query.keys() {
            match key.as_str() {
                "filter" | "startIndex" | "count" | "sortBy" | "sortOrder" | "attributes"
                | "excludedAttributes" => {}
                other => return Err(ScimError::UnknownParameter(other.to_owned())),
            }
        }
        let filter = query
            .get("filter")
            .map(|f| {
                f.parse::<Filter>()
                    .map_err(|e| ScimError::InvalidFilter(e.to_string()))
            })
            .transpose()?;
        let descending = match query.get("sortOrder") {
            None => false,
            Some(o) if o.eq_ignore_ascii_case("ascending") => false,
            Some(o) if o.eq_ignore_ascii_case("descending") => true,
            Some(o) => return Err(ScimError::BadSortOrder(o.clone())),
        };
        Self::new(
            filter,
            query.get("sortBy").map(String::as_str),
            descending,
            index_param(query, "startIndex")?,
            index_param(query, "count")?,
            Selection::parse(
                query.get("attributes").map(String::as_str),
                query.get("excludedAttributes").map(String::as_str),
            )?,
        )
    }

    /// The body of `POST /Users/.search` (RFC 7644 §3.4.3), attribute names in any case.
    pub(super) fn from_body(body: &[u8]) -> Result<Self, ScimError> {
        let value =
            serde_json::from_slice::<serde_json::Value>(body).map_err(ScimError::MalformedJson)?;
        let request: SearchRequest<MaybeFilter> = scim_v2::case_insensitive::from_value(value)
            .map_err(|e| ScimError::NotASearchRequest(e.to_string()))?;
        if !request
            .schemas
            .iter()
            .any(|s| s.eq_ignore_ascii_case(SEARCH_REQUEST))
        {
            return Err(ScimError::NotASearchRequest(format!(
                "`schemas` must list {SEARCH_REQUEST}"
            )));
        }
        let filter = match request.filter {
            None => None,
            Some(MaybeFilter::Valid(f)) => Some(f),
            Some(MaybeFilter::Invalid(e)) => return Err(ScimError::InvalidFilter(e.to_string())),
        };
        let join = |names: &[String]| (!names.is_empty()).then(|| names.join(","));
        Self::new(
            filter,
            request.sort_by.as_deref(),
            matches!(request.sort_order, Some(SortOrder::Descending)),
            request.start_index,
            request.count,
            Selection::parse(
                join(&request.attributes).as_deref(),
                join(&request.excluded_attributes).as_deref(),
            )?,
        )
    }

    fn new(
        filter: Option<Filter>,
        sort_by: Option<&str>,
        descending: bool,
        start: Option<i64>,
        count: Option<i64>,
        selection: Selection,
    ) -> Result<Self, ScimError> {
        let filter = filter
            .map(|f| {
                let mut terms = 0;
                translate(&f, 1, &mut terms)
            })
            .transpose()?;
        let order = sort_by
            .map(|s| sort_order(s).map(|o| o.map(|o| (o, descending))))
            .transpose()?
            .flatten();
        Ok(Self {
            filter,
            order,
            // RFC 7644 §3.4.2.4: startIndex below 1 means 1; a negative count means 0.
            start: start.unwrap_or(1).max(1),
            count: count.unwrap_or(100).clamp(0, MAX_RESULTS),
            selection,
        })
    }
}

const SEARCH_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

fn index_param(
    query: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<i64>, ScimError> {
    query
        .get(name)
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| ScimError::NotAnInteger {
                    name,
                    value: v.clone(),
                })
        })
        .transpose()
}

/// What a filter's attribute path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Field(AccountField),
    Active,
    /// `emails.type`: the one address is of type `work`.
    EmailType,
    /// `emails.primary`: the one address is primary.
    EmailPrimary,
}

/// The attribute `path` names, for filters: userName, emails (its value, type and primary),
/// externalId, id and active, with or without the User schema's URN.
fn target(path: &AttrPath, parent: Option<&str>) -> Result<Target, ScimError> {
    if path
        .uri
        .as_deref()
        .is_some_and(|u| !u.eq_ignore_ascii_case(USER))
    {
        return Err(ScimError::UnsupportedFilterAttribute(path.to_string()));
    }
    let name = path.name.to_ascii_lowercase();
    let sub = path.sub_attr.as_deref().map(str::to_ascii_lowercase);
    // Inside `emails[…]` a name is a sub-attribute of emails.
    let (name, sub) = match parent {
        Some(parent) if sub.is_none() => (parent.to_owned(), Some(name)),
        _ => (name, sub),
    };
    Ok(match (name.as_str(), sub.as_deref()) {
        ("username", None) => Target::Field(AccountField::UserName),
        ("emails", None | Some("value")) => Target::Field(AccountField::Email),
        ("emails", Some("type")) => Target::EmailType,
        ("emails", Some("primary")) => Target::EmailPrimary,
        ("externalid", None) => Target::Field(AccountField::ExternalId),
        ("id", None) => Target::Field(AccountField::Id),
        ("active", None) => Target::Active,
        _ => return Err(ScimError::UnsupportedFilterAttribute(path.to_string())),
    })
}

fn comparison(op: &CompareOp) -> Result<Comparison, ScimError> {
    Ok(match op {
        CompareOp::Eq => Comparison::Equal,
        CompareOp::Ne => Comparison::NotEqual,
        CompareOp::Sw => Comparison::StartsWith,
        CompareOp::Ew => Comparison::EndsWith,
        CompareOp::Co => Comparison::Contains,
        CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le => {
            return Err(ScimError::UnsupportedFilterOperator(op.to_string()))
        }
    })
}

/// A comparison of a value this service knows without asking the store (`emails.type`,
/// `emails.primary`), decided here.
fn constant(actual: &str, comparison: Comparison, value: &str) -> bool {
    let (actual, value) = (actual.to_lowercase(), value.to_lowercase());
    match comparison {
        Comparison::Equal => actual == value,
        Comparison::NotEqual => actual != value,
        Comparison::StartsWith => actual.starts_with(&value),
        Comparison::EndsWith => actual.ends_with(&value),
        Comparison::Contains => actual.contains(&value),
    }
}

fn compare(
    target: Target,
    op: &CompareOp,
    value: &CompValue,
) -> Result<DirectoryFilter, ScimError> {
    let comparison = comparison(op)?;
    let text = |value: &CompValue| match value {
        CompValue::Str(s) => Ok(s.clone()),
        other => Err(ScimError::FilterValueNotAString(other.to_string())),
    };
    let flag = |value: &CompValue| match value {
        CompValue::True => Ok(true),
        CompValue::False => Ok(false),
        CompValue::Str(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        CompValue::Str(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(ScimError::FilterValueNotABoolean(other.to_string())),
    };
    let boolean = |actual: bool, value: &CompValue| -> Result<DirectoryFilter, ScimError> {
        let wanted = flag(value)?;
        match comparison {
            Comparison::Equal => Ok(DirectoryFilter::Always(actual == wanted)),
            Comparison::NotEqual => Ok(DirectoryFilter::Always(actual != wanted)),
            _ => Err(ScimError::UnsupportedFilterOperator(op.to_string())),
        }
    };
    match target {
        Target::Field(field) => Ok(DirectoryFilter::Compare(field, comparison, text(value)?)),
        Target::EmailType => Ok(DirectoryFilter::Always(constant(
            "work",
            comparison,
            &text(value)?,
        ))),
        Target::EmailPrimary => boolean(true, value),
        Target::Active => match comparison {
            Comparison::Equal => Ok(DirectoryFilter::Active(flag(value)?)),
            Comparison::NotEqual => Ok(DirectoryFilter::Active(!flag(value)?)),
            _ => Err(ScimError::UnsupportedFilterOperator(op.to_string())),
        },
    }
}

fn attribute(
    exp: &AttrExp,
    parent: Option<&str>,
    terms: &mut usize,
) -> Result<DirectoryFilter, ScimError> {
    *terms += 1;
    if *terms > MAX_TERMS {
        return Err(ScimError::FilterTooComplex);
    }
    match exp {
        AttrExp::Present(path) => Ok(match target(path, parent)? {
            Target::Field(field) => DirectoryFilter::Present(field),
            Target::Active | Target::EmailType | Target::EmailPrimary => {
                DirectoryFilter::Always(true)
            }
        }),
        AttrExp::Comparison(path, op, value) => compare(target(path, parent)?, op, value),
    }
}

fn deeper(depth: usize) -> Result<usize, ScimError> {
    if depth >= MAX_DEPTH {
        Err(ScimError::FilterTooComplex)
    } else {
        Ok(depth + 1)
    }
}

/// The store's filter for `filter`, at nesting `depth`, counting comparisons in `terms`.
fn translate(
    filter: &Filter,
    depth: usize,
    terms: &mut usize,
) -> Result<DirectoryFilter, ScimError> {
    Ok(match filter {
        Filter::Attr(exp) => attribute(exp, None, terms)?,
        Filter::ValuePath(vp) => {
            if !vp.attr.name.eq_ignore_ascii_case("emails")
                || vp.attr.sub_attr.is_some()
                || vp
                    .attr
                    .uri
                    .as_deref()
                    .is_some_and(|u| !u.eq_ignore_ascii_case(USER))
            {
                return Err(ScimError::UnsupportedFilterAttribute(vp.attr.to_string()));
            }
            translate_value(&vp.filter, deeper(depth)?, terms)?
        }
        Filter::Not(inner) => {
            DirectoryFilter::Not(Box::new(translate(inner, deeper(depth)?, terms)?))
        }
        Filter::And(all) => DirectoryFilter::And(
            all.iter()
                .map(|f| translate(f, deeper(depth)?, terms))
                .collect::<Result<_, _>>()?,
        ),
        Filter::Or(all) => DirectoryFilter::Or(
            all.iter()
                .map(|f| translate(f, deeper(depth)?, terms))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The filter inside `emails[…]`, whose names are sub-attributes of emails.
fn translate_value(
    filter: &ValFilter,
    depth: usize,
    terms: &mut usize,
) -> Result<DirectoryFilter, ScimError> {
    Ok(match filter {
        ValFilter::Attr(exp) => attribute(exp, Some("emails"), terms)?,
        ValFilter::Not(inner) => {
            DirectoryFilter::Not(Box::new(translate_value(inner, deeper(depth)?, terms)?))
        }
        ValFilter::And(all) => DirectoryFilter::And(
            all.iter()
                .map(|f| translate_value(f, deeper(depth)?, terms))
                .collect::<Result<_, _>>()?,
        ),
        ValFilter::Or(all) => DirectoryFilter::Or(
            all.iter()
                .map(|f| translate_value(f, deeper(depth)?, terms))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// `sortBy`: userName, emails (its value), externalId, meta.created; `id` is the order anyway.
fn sort_order(sort_by: &str) -> Result<Option<AccountOrder>, ScimError> {
    let name = sort_by
        .trim()
        .strip_prefix(USER)
        .map(|a| a.trim_start_matches(':'))
        .unwrap_or(sort_by.trim())
        .to_ascii_lowercase();
    Ok(Some(match name.as_str() {
        "username" => AccountOrder::UserName,
        "emails" | "emails.value" => AccountOrder::Email,
        "externalid" => AccountOrder::ExternalId,
        "meta.created" => AccountOrder::Created,
        "id" => return Ok(None),
        _ => return Err(ScimError::UnsupportedSortBy(sort_by.to_owned())),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn filter(f: &str) -> Result<Option<DirectoryFilter>, ScimError> {
        Search::from_query(&query(&[("filter", f)])).map(|s| s.filter)
    }

    fn cmp(field: AccountField, c: Comparison, v: &str) -> DirectoryFilter {
        DirectoryFilter::Compare(field, c, v.into())
    }

    #[test]
    fn the_filters_entra_and_okta_send_are_understood() {
        use AccountField::*;
        assert_eq!(
            filter(r#"userName eq "Test_User_dfeef4c5@testuser.com""#).unwrap(),
            Some(cmp(
                UserName,
                Comparison::Equal,
                "Test_User_dfeef4c5@testuser.com"
            ))
        );
        assert_eq!(
            filter(r#"externalId EQ "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef""#).unwrap(),
            Some(cmp(
                ExternalId,
                Comparison::Equal,
                "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"
            ))
        );
        assert_eq!(
            filter(&format!(r#"{USER}:userName eq "x""#)).unwrap(),
            Some(cmp(UserName, Comparison::Equal, "x"))
        );
        assert_eq!(
            filter(r#"emails[type eq "work" and value co "@pickup"]"#).unwrap(),
            Some(DirectoryFilter::And(vec![
                DirectoryFilter::Always(true),
                cmp(Email, Comparison::Contains, "@pickup"),
            ]))
        );
    }

    #[test]
    fn and_or_not_and_parentheses_nest() {
        use AccountField::*;
        assert_eq!(
            filter(r#"(userName sw "j" or emails.value ew "@a.example") and not (externalId pr)"#)
                .unwrap(),
            Some(DirectoryFilter::And(vec![
                DirectoryFilter::Or(vec![
                    cmp(UserName, Comparison::StartsWith, "j"),
                    cmp(Email, Comparison::EndsWith, "@a.example"),
                ]),
                DirectoryFilter::Not(Box::new(DirectoryFilter::Present(ExternalId))),
            ]))
        );
        assert_eq!(
            filter("active eq true").unwrap(),
            Some(DirectoryFilter::Active(true))
        );
    }

    #[test]
    fn a_filter_beyond_the_bounds_is_too_many() {
        let terms = (0..=MAX_TERMS)
            .map(|i| format!(r#"userName eq "u{i}""#))
            .collect::<Vec<_>>()
            .join(" or ");
        let e = filter(&terms).unwrap_err();
        assert_eq!(e.scim_type(), Some("tooMany"));
        let deep = format!(
            "{}userName pr{}",
            "not (".repeat(MAX_DEPTH),
            ")".repeat(MAX_DEPTH)
        );
        let e = filter(&deep).unwrap_err();
        assert_eq!(e.scim_type(), Some("tooMany"), "{e}");
        let shallow = format!(
            "{}userName pr{}",
            "not (".repeat(MAX_DEPTH - 1),
            ")".repeat(MAX_DEPTH - 1)
        );
        assert!(filter(&shallow).is_ok());
    }

    #[test]
    fn bad_and_unsupported_filters_are_invalid_filters() {
        for bad in [
            "userName eq Jane",
            "userName",
            r#"title eq "x""#,
            r#"meta.created gt "2026-01-01T00:00:00Z""#,
            r#"userName gt "a""#,
            "externalId eq 7",
            r#"urn:example:ext:2.0:User:badge eq "x""#,
        ] {
            let e = filter(bad).unwrap_err();
            assert_eq!(e.scim_type(), Some("invalidFilter"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_page_is_bounded_as_rfc_7644_says() {
        let all = Search::from_query(&query(&[])).unwrap();
        assert_eq!((all.filter, all.start, all.count), (None, 1, 100));
        let page = Search::from_query(&query(&[("startIndex", "-3"), ("count", "5000")])).unwrap();
        assert_eq!((page.start, page.count), (1, MAX_RESULTS));
        let page = Search::from_query(&query(&[("count", " -1 ")])).unwrap();
        assert_eq!(page.count, 0);
    }

    #[test]
    fn sorting_names_an_attribute_and_an_order() {
        let s = Search::from_query(&query(&[
            ("sortBy", "userName"),
            ("sortOrder", "Descending"),
        ]))
        .unwrap();
        assert_eq!(s.order, Some((AccountOrder::UserName, true)));
        let s = Search::from_query(&query(&[("sortBy", "meta.created")])).unwrap();
        assert_eq!(s.order, Some((AccountOrder::Created, false)));
        for q in [
            query(&[("sortBy", "title")]),
            query(&[("sortOrder", "sideways")]),
            query(&[("page", "2")]),
            query(&[("count", "ten")]),
        ] {
            let e = Search::from_query(&q).unwrap_err();
            assert_eq!(e.scim_type(), Some("invalidValue"), "{q:?}");
        }
    }

    #[test]
    fn a_search_request_body_is_read_in_any_case() {
        let s = Search::from_body(
            br#"{"Schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                 "FILTER": "userName sw \"ja\"", "startIndex": 2, "count": 5,
                 "sortBy": "userName", "sortOrder": "descending", "attributes": ["userName"]}"#,
        )
        .unwrap();
        assert_eq!(
            s.filter,
            Some(cmp(AccountField::UserName, Comparison::StartsWith, "ja"))
        );
        assert_eq!((s.start, s.count), (2, 5));
        assert_eq!(s.order, Some((AccountOrder::UserName, true)));
        let e = Search::from_body(
            br#"{"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "userName zz"}"#,
        )
        .unwrap_err();
        assert_eq!(e.scim_type(), Some("invalidFilter"));
        let e = Search::from_body(br#"{"filter": "userName pr"}"#).unwrap_err();
        assert_eq!(e.scim_type(), Some("invalidSyntax"), "{e}");
    }
}

/// Properties of the search query's parsers.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// `word` in a random mix of upper and lower case.
    fn any_case(word: &'static str) -> impl Strategy<Value = String> {
        prop::collection::vec(any::<bool>(), word.len()).prop_map(move |upper| {
            word.chars()
                .zip(upper)
                .map(|(c, u)| {
                    if u {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn any_filter_is_a_search_or_a_filter_refusal(filter in "\\PC{0,60}") {
            let query = HashMap::from([("filter".to_owned(), filter)]);
            if let Err(e) = Search::from_query(&query) {
                prop_assert!(matches!(e.scim_type(), Some("invalidFilter" | "tooMany")), "{e}");
            }
        }

        #[test]
        fn a_printed_user_name_filter_reads_back_the_name(
            name in "[a-zA-Z0-9 ._@/-]{0,40}",
            attr in any_case("userName"),
            op in any_case("eq"),
            urn in any::<bool>(),
        ) {
            let attr = if urn { format!("{USER}:{attr}") } else { attr };
            let quoted = serde_json::to_string(&name).unwrap();
            let query = HashMap::from([("filter".to_owned(), format!("{attr} {op} {quoted}"))]);
            prop_assert_eq!(
                Search::from_query(&query).unwrap().filter,
                Some(DirectoryFilter::Compare(AccountField::UserName, Comparison::Equal, name))
            );
        }

        #[test]
        fn any_query_is_a_bounded_page_or_a_refusal_with_a_scim_type(
            query in prop::collection::hash_map(
                prop_oneof![
                    Just("filter".to_owned()), Just("startIndex".to_owned()),
                    Just("count".to_owned()), Just("sortBy".to_owned()), "[a-zA-Z]{1,12}"
                ],
                prop_oneof!["-?[0-9]{1,22}".boxed(), " ?[0-9]{1,4} ?".boxed(), "\\PC{0,20}".boxed()],
                0..4,
            ),
        ) {
            match Search::from_query(&query) {
                Ok(search) => {
                    prop_assert!(search.start >= 1);
                    prop_assert!((0..=MAX_RESULTS).contains(&search.count));
                }
                Err(e) => prop_assert!(e.scim_type().is_some(), "{e}"),
            }
        }
    }
}
