//! docs/configuration.md lists every key the code reads, and no other: the keys of each section's
//! table, compared both ways with the keys the settings types accept.
//!
//! The code's keys are asked of serde itself: every section refuses unknown keys, and its refusal
//! names the keys it expects. A key whose value is a section of its own (`[output_adapter.email]`)
//! or an array of them (`[[gateway.admin_tokens]]`) is followed into.

use std::collections::BTreeSet;

use figment::error::Kind;
use figment::providers::{Format, Serialized, Toml};

use crate::test_support::MINIMAL;
use crate::Settings;

const DOCS: &str = include_str!("../../../docs/configuration.md");
const PROBE: &str = "zz_not_a_key";

/// The keys serde expects where it refused the probe, if it refused it as an unknown key.
fn expected_at(path: &str, value: figment::value::Value) -> Option<Vec<&'static str>> {
    let figment = Settings::defaults()
        .merge(Toml::string(MINIMAL))
        .merge(Serialized::default(path, value));
    let Err(errors) = figment.extract::<Settings>() else {
        return None;
    };
    errors.into_iter().find_map(|e| match e.kind {
        Kind::UnknownField(field, expected) if field == PROBE => Some(expected.to_vec()),
        _ => None,
    })
}

/// A table `{zz_not_a_key = 1}`.
fn probe_table() -> figment::value::Value {
    let mut dict = figment::value::Dict::new();
    dict.insert(PROBE.into(), 1.into());
    dict.into()
}

/// The keys of the section at `path` (`""` for the top level), if it is a section.
fn section_keys(path: &str) -> Option<Vec<&'static str>> {
    let at = if path.is_empty() {
        PROBE.to_owned()
    } else {
        format!("{path}.{PROBE}")
    };
    expected_at(&at, 1.into())
}

/// The keys of each element of the array of sections at `path`, if it is one.
fn array_keys(path: &str) -> Option<Vec<&'static str>> {
    expected_at(path, vec![probe_table()].into())
}

/// Every key the code accepts: `section.key`, and `section[].key` inside arrays of sections.
fn code_keys(path: &str, keys: &[&'static str], found: &mut BTreeSet<String>) {
    for key in keys {
        let full = if path.is_empty() {
            (*key).to_owned()
        } else {
            format!("{path}.{key}")
        };
        if let Some(inner) = section_keys(&full) {
            code_keys(&full, &inner, found);
        } else if let Some(inner) = array_keys(&full) {
            found.insert(full.clone());
            code_keys(&format!("{full}[]"), &inner, found);
        } else {
            found.insert(full);
        }
    }
}

/// The keys of the tables under the headings that name a section (`` ### `[kafka]` ``, or
/// `` ### `[[codes.keys]]` `` for the keys of each element): `kafka.topic`, `codes.keys[].id`.
fn documented_keys(docs: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut section: Option<String> = None;
    for line in docs.lines() {
        if line.starts_with('#') {
            section = line.split('`').nth(1).and_then(|name| {
                if let Some(array) = name.strip_prefix("[[").and_then(|n| n.strip_suffix("]]")) {
                    Some(format!("{array}[]"))
                } else {
                    name.strip_prefix('[')?.strip_suffix(']').map(str::to_owned)
                }
            });
            continue;
        }
        let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) else {
            continue;
        };
        if let Some((key, _)) = row.split_once('`') {
            found.insert(format!("{section}.{key}"));
        }
    }
    found
}

/// Every key the code accepts, walked from the top level.
fn all_code_keys() -> BTreeSet<String> {
    let top = section_keys("").expect("the top level refuses unknown keys");
    let mut code = BTreeSet::new();
    code_keys("", &top, &mut code);
    code
}

/// The keys on one side only, named.
fn compare(code: &BTreeSet<String>, docs: &BTreeSet<String>) -> Result<(), String> {
    let undocumented: Vec<_> = code.difference(docs).collect();
    let unknown: Vec<_> = docs.difference(code).collect();
    if undocumented.is_empty() && unknown.is_empty() {
        return Ok(());
    }
    Err(format!(
        "docs/configuration.md and the code disagree.\n\
         Keys the code reads that no table in docs/configuration.md lists: {undocumented:?}\n\
         Keys docs/configuration.md lists that the code does not read: {unknown:?}"
    ))
}

#[test]
fn every_key_of_the_code_is_documented_and_every_documented_key_exists() {
    let code = all_code_keys();
    // The walk found the sections and arrays it must (it would find none if serde's refusal
    // changed shape).
    for key in [
        "identity_mgt.user_onboarding.ask_password_email_validity",
        "output_adapter.email.enable_start_tls",
        "gateway.admin_tokens[].sha256",
        "codes.keys[].secret",
        "kafka.properties",
    ] {
        assert!(code.contains(key), "{key} not found in the code: {code:?}");
    }
    if let Err(disagreement) = compare(&code, &documented_keys(DOCS)) {
        panic!("{disagreement}");
    }
}

#[test]
fn the_check_names_a_key_missing_from_the_docs_and_one_the_code_lacks() {
    // A doctored copy of the page: the row of `kafka.topic` misspelt.
    let doctored = DOCS.replacen("| `topic` |", "| `topics` |", 1);
    assert_ne!(doctored, DOCS, "the row to doctor exists");
    let disagreement = compare(&all_code_keys(), &documented_keys(&doctored)).unwrap_err();
    assert!(
        disagreement.contains(r#"lists: ["kafka.topic"]"#),
        "{disagreement}"
    );
    assert!(
        disagreement.contains(r#"read: ["kafka.topics"]"#),
        "{disagreement}"
    );
}
