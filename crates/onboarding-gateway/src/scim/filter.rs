//! The query of `GET /Users`: `filter=userName eq "…"`, `startIndex` and `count`, read once
//! into a [`Search`]. Anything else (another filter, sorting, attribute selection) is refused.

use std::collections::HashMap;

use super::error::ScimError;
use super::USER;

/// The most Users one page holds (`count` above it means this many).
pub(super) const MAX_RESULTS: i64 = 200;

/// What `GET /Users` asked for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Search {
    /// The `userName` the filter names; `None` lists every User.
    pub user_name: Option<String>,
    /// 1-based index of the first User of the page.
    pub start: i64,
    /// Users on the page, at most [`MAX_RESULTS`].
    pub count: i64,
}

impl Search {
    pub(super) fn parse(query: &HashMap<String, String>) -> Result<Self, ScimError> {
        for key in query.keys() {
            match key.as_str() {
                "filter" | "startIndex" | "count" => {}
                "sortBy" | "sortOrder" => return Err(ScimError::SortingUnsupported),
                "attributes" | "excludedAttributes" => {
                    return Err(ScimError::AttributeSelectionUnsupported)
                }
                other => return Err(ScimError::UnknownParameter(other.to_owned())),
            }
        }
        // RFC 7644 §3.4.2.4: startIndex below 1 means 1; a negative count means 0.
        let start = index_param(query, "startIndex", 1)?.max(1);
        let count = index_param(query, "count", 100)?.clamp(0, MAX_RESULTS);
        let user_name = query.get("filter").map(|f| parse_filter(f)).transpose()?;
        Ok(Self {
            user_name,
            start,
            count,
        })
    }
}

fn index_param(
    query: &HashMap<String, String>,
    name: &'static str,
    default: i64,
) -> Result<i64, ScimError> {
    match query.get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map_err(|_| ScimError::NotAnInteger {
                name,
                value: v.clone(),
            }),
    }
}

/// `userName eq "…"` → the value; any other filter is `invalidFilter`. The attribute may carry
/// the User schema's URN; attribute and operator are case-insensitive.
fn parse_filter(filter: &str) -> Result<String, ScimError> {
    let unsupported = || ScimError::UnsupportedFilter(filter.to_owned());
    let (attr, rest) = filter
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(unsupported)?;
    let (op, value) = rest
        .trim_start()
        .split_once(char::is_whitespace)
        .ok_or_else(unsupported)?;
    let attr = attr
        .strip_prefix(USER)
        .map(|a| a.trim_start_matches(':'))
        .unwrap_or(attr);
    if !attr.eq_ignore_ascii_case("userName") || !op.eq_ignore_ascii_case("eq") {
        return Err(unsupported());
    }
    serde_json::from_str::<String>(value.trim()).map_err(|_| unsupported())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_user_name_eq_filters_are_understood() {
        assert_eq!(parse_filter(r#"userName eq "Jane""#).unwrap(), "Jane");
        assert_eq!(parse_filter(r#"USERNAME EQ "a \"b\"""#).unwrap(), "a \"b\"");
        assert_eq!(
            parse_filter(&format!(r#"{USER}:userName eq "x""#)).unwrap(),
            "x"
        );
        for bad in [
            r#"userName co "J""#,
            r#"emails eq "x""#,
            "userName eq Jane",
            "",
            "userName",
        ] {
            let e = parse_filter(bad).unwrap_err();
            assert_eq!(e.scim_type(), Some("invalidFilter"), "{bad}");
        }
    }

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_page_is_bounded_as_rfc_7644_says() {
        let all = Search::parse(&query(&[])).unwrap();
        assert_eq!((all.user_name, all.start, all.count), (None, 1, 100));
        let page = Search::parse(&query(&[("startIndex", "-3"), ("count", "5000")])).unwrap();
        assert_eq!((page.start, page.count), (1, MAX_RESULTS));
        let page = Search::parse(&query(&[("count", " -1 ")])).unwrap();
        assert_eq!(page.count, 0);
    }

    #[test]
    fn unknown_parameters_and_non_numbers_are_invalid_values() {
        for q in [
            query(&[("sortBy", "userName")]),
            query(&[("attributes", "userName")]),
            query(&[("page", "2")]),
            query(&[("count", "ten")]),
        ] {
            let e = Search::parse(&q).unwrap_err();
            assert_eq!(e.scim_type(), Some("invalidValue"), "{q:?}");
        }
        let e = Search::parse(&query(&[("count", "ten")])).unwrap_err();
        assert_eq!(e.to_string(), "count must be an integer, got `ten`");
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
        fn any_filter_is_a_user_name_or_an_invalid_filter_naming_what_works(filter in "\\PC{0,60}") {
            match parse_filter(&filter) {
                Ok(_) => prop_assert!(filter.to_ascii_lowercase().contains("username")),
                Err(e) => {
                    prop_assert_eq!(e.scim_type(), Some("invalidFilter"));
                    prop_assert!(e.to_string().contains("userName eq \"<name>\""));
                }
            }
        }

        #[test]
        fn a_printed_user_name_filter_reads_back_the_name(
            name in "\\PC{0,40}",
            attr in any_case("userName"),
            op in any_case("eq"),
            urn in any::<bool>(),
            space in "[ \t]{1,3}",
        ) {
            let attr = if urn { format!("{USER}:{attr}") } else { attr };
            let quoted = serde_json::to_string(&name).unwrap();
            let filter = format!("{space}{attr}{space}{op}{space}{quoted}{space}");
            prop_assert_eq!(parse_filter(&filter).unwrap(), name);
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
            match Search::parse(&query) {
                Ok(search) => {
                    prop_assert!(search.start >= 1);
                    prop_assert!((0..=MAX_RESULTS).contains(&search.count));
                }
                Err(e) => prop_assert!(e.scim_type().is_some(), "{e}"),
            }
        }
    }
}
