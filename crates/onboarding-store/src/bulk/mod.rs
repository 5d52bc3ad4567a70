//! Bulk invitations: a file (CSV `username,email[,domain,locale,time_zone]` or JSON lines) becomes a job
//! with one row per line; a runner applies the rows through [`crate::Store::invite_as`], the one
//! invitation path, and records each row's outcome.
//!
//! Invariants:
//! - A row is applied whole or not at all: it is one invitation (one append transaction), and
//!   its outcome is recorded after that append.
//! - Nobody is invited twice. A row's user id is a UUIDv5 of (job, line): a runner that resumes
//!   a job after a crash finds the rows it already applied (the username is held by that very
//!   id) and records them `created`; a file uploaded again meets the username registry and its
//!   rows are recorded `duplicate`, with the existing user's id.
//! - Jobs survive restarts: the rows are in PostgreSQL before the upload is answered, and every
//!   runner picks up `pending` rows of `running` jobs. Two runners on one job are harmless (both
//!   rules above hold), only wasted work.
//!
//! `file.rs` reads a file into rows, `jobs.rs` stores jobs and rows and shows them, `runner.rs`
//! applies pending rows.

mod file;
mod jobs;
mod runner;

use onboarding_config::UserOnboarding;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use onboarding_domain::value::{check_text, TextKind};

use crate::text::text_enum;
use crate::{Invitation, InvitationFields, StoreError};

pub use file::{digest, parse};
pub use jobs::{JobView, RowView, Totals};
pub use runner::BulkRunner;

/// Namespace of the user ids derived from (job, line).
const BULK_NAMESPACE: Uuid = Uuid::from_u128(0x6f6e_626f_6172_642d_6275_6c6b_2d72_6f77);

text_enum! {
    /// The format of an uploaded file (`bulk_jobs.format`).
    pub enum Format {
        /// `username,email[,domain,locale,time_zone]`, with or without that header line.
        Csv => "csv",
        /// One JSON object per line: `{"username", "email", "domain"?, "locale"?}`.
        Jsonl => "jsonl",
    }
}

text_enum! {
    /// Where a job stands (`bulk_jobs.status`).
    pub enum JobStatus {
        /// Some row is still `pending`.
        Running => "running",
        /// Every row has its outcome.
        Done => "done",
    }
}

text_enum! {
    /// Where a row stands (`bulk_job_rows.status`): `pending` until it is applied, then its
    /// outcome; `invalid` and `duplicate` may be known from the file alone.
    pub enum RowStatus {
        Pending => "pending",
        Created => "created",
        Duplicate => "duplicate",
        Invalid => "invalid",
        Failed => "failed",
    }
}

impl Format {
    /// From a media type (`text/csv`, `application/x-ndjson`, `application/jsonl`, …).
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        let essence = media_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "text/csv" | "application/csv" => Some(Self::Csv),
            "application/x-ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines" => Some(Self::Jsonl),
            _ => None,
        }
    }

    /// From a file name's extension (`.csv`, `.jsonl`, `.ndjson`).
    pub fn from_file_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Some(Self::Csv)
        } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            Some(Self::Jsonl)
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The file as a whole cannot be used (e.g. an unknown CSV column); nothing was recorded.
    #[error("{0}")]
    File(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One row's fields as read from the file (the strings, before validation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowInput {
    pub username: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// IANA time zone (`Europe/Berlin`), for the expiry in the user's mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// A line of the file, ready to be stored: `pending` when valid, else `invalid`/`duplicate`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRow {
    pub line: i32,
    pub input: Option<RowInput>,
    pub status: RowStatus,
    pub reason: Option<String>,
}

impl RowInput {
    /// Every field that holds a control character, named as [`RowInput::validate`] would
    /// (`username: username must not contain control characters such as NUL (U+0000) …`).
    pub(crate) fn control_characters(&self) -> Result<(), String> {
        let fields = [
            ("username", Some(&self.username)),
            ("email", Some(&self.email)),
            ("domain", self.domain.as_ref()),
            ("locale", self.locale.as_ref()),
            ("time_zone", self.time_zone.as_ref()),
        ];
        let problems: Vec<String> = fields
            .into_iter()
            .filter_map(|(field, value)| {
                let e = check_text(field, value?, TextKind::Name).err()?;
                Some(format!("{field}: {e}"))
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The parsed, validated invitation of a row, or the reason it is invalid.
    pub(crate) fn validate(&self, rules: &UserOnboarding) -> Result<Invitation, String> {
        InvitationFields {
            username: Some(&self.username),
            email: Some(&self.email),
            domain: self.domain.as_deref(),
            locale: self.locale.as_deref(),
            time_zone: self.time_zone.as_deref(),
            ..Default::default()
        }
        .validate(rules)
        .map_err(|problems| problems.to_string())
    }
}

/// What became of one row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    Created(Uuid),
    /// The username exists (the holder's id, when known).
    Duplicate(Option<Uuid>, String),
    Invalid(String),
    Failed(String),
}

impl RowOutcome {
    /// The row's status once this outcome is recorded.
    pub fn status(&self) -> RowStatus {
        match self {
            Self::Created(_) => RowStatus::Created,
            Self::Duplicate(..) => RowStatus::Duplicate,
            Self::Invalid(_) => RowStatus::Invalid,
            Self::Failed(_) => RowStatus::Failed,
        }
    }
}

/// The user id a row of a job invites (stable across restarts of the job).
pub fn row_user_id(job_id: Uuid, line: i32) -> Uuid {
    Uuid::new_v5(&BULK_NAMESPACE, format!("{job_id}/{line}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::parse`] under the default rules.
    fn parse(format: Format, data: &[u8]) -> Result<Vec<NewRow>, BulkError> {
        super::parse(format, data, &UserOnboarding::default())
    }

    fn statuses(rows: &[NewRow]) -> Vec<(i32, &str)> {
        rows.iter().map(|r| (r.line, r.status.as_str())).collect()
    }

    #[test]
    fn a_file_with_classic_mac_line_endings_numbers_each_line() {
        // Two rows on line 1 would be one row id, and the job's second row would not be stored.
        for file in [
            "ann,ann@pickup.example\rbob,bob@pickup.example\r",
            "ann,ann@pickup.example\r\nbob,bob@pickup.example\r\n",
            "ann,ann@pickup.example\n\rbob,bob@pickup.example",
        ] {
            let rows = parse(Format::Csv, file.as_bytes()).unwrap();
            let lines: Vec<i32> = rows.iter().map(|r| r.line).collect();
            let want = if file.contains("\n\r") {
                vec![1, 3]
            } else {
                vec![1, 2]
            };
            assert_eq!(lines, want, "{file:?}");
        }
    }

    #[test]
    fn csv_with_header_names_columns_and_reports_each_bad_line() {
        let file = b"username,email,locale\nJane,jane@pickup.example,de\n\nBob,not-an-address\nJANE,jane2@pickup.example\nToo,many@x.example,de,extra\n";
        let rows = parse(Format::Csv, file).unwrap();
        assert_eq!(
            statuses(&rows),
            vec![
                (2, "pending"),
                (4, "invalid"),
                (5, "duplicate"),
                (6, "invalid")
            ]
        );
        assert_eq!(
            rows[0].input.as_ref().unwrap().locale.as_deref(),
            Some("de")
        );
        assert!(rows[1].reason.as_ref().unwrap().starts_with("email: "));
        assert!(rows[2].reason.as_ref().unwrap().contains("line 2"));
    }

    #[test]
    fn csv_without_header_is_positional() {
        let rows = parse(Format::Csv, b"jane,jane@pickup.example,EMPLOYEES,en\n").unwrap();
        assert_eq!(statuses(&rows), vec![(1, "pending")]);
        let input = rows[0].input.as_ref().unwrap();
        assert_eq!(input.domain.as_deref(), Some("EMPLOYEES"));
        // The same name in another domain is no duplicate.
        let rows = parse(
            Format::Csv,
            b"jane,a@pickup.example,EMPLOYEES\njane,b@pickup.example\n",
        )
        .unwrap();
        assert_eq!(statuses(&rows), vec![(1, "pending"), (2, "pending")]);
    }

    #[test]
    fn unknown_csv_column_refuses_the_file() {
        let e = parse(
            Format::Csv,
            b"username,email,password\njane,j@x.example,pw\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`password`"), "{e}");
        assert!(parse(Format::Csv, b"\n\n").is_err());
    }

    #[test]
    fn json_lines_with_unknown_keys_are_invalid_rows() {
        let file = b"{\"username\":\"jane\",\"email\":\"jane@pickup.example\"}\n\n{\"username\":\"bob\",\"email\":\"b@x.example\",\"password\":\"x\"}\nnot json\n";
        let rows = parse(Format::Jsonl, file).unwrap();
        assert_eq!(
            statuses(&rows),
            vec![(1, "pending"), (3, "invalid"), (4, "invalid")]
        );
    }

    #[test]
    fn a_nul_in_a_csv_or_json_line_makes_that_row_invalid_without_its_fields() {
        let csv = b"username,email\njane,jane@pickup.example\nbo\0b,bob@pickup.example\ncarl,carl@pickup.example\n";
        let rows = parse(Format::Csv, csv).unwrap();
        assert_eq!(
            statuses(&rows),
            vec![(2, "pending"), (3, "invalid"), (4, "pending")]
        );
        assert_eq!(rows[1].input, None);
        let reason = rows[1].reason.as_deref().unwrap();
        assert!(
            reason.starts_with(
                "username: username must not contain control characters such as NUL (U+0000)"
            ),
            "{reason}"
        );
        let jsonl = b"{\"username\":\"jane\",\"email\":\"jane@pickup.example\",\"locale\":\"d\\u0000e\"}\n{\"username\":\"bob\",\"email\":\"bob@pickup.example\",\"pass\\u0000\":\"x\"}\n";
        let rows = parse(Format::Jsonl, jsonl).unwrap();
        assert_eq!(statuses(&rows), vec![(1, "invalid"), (2, "invalid")]);
        assert!(rows[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("locale: locale must not contain control"));
        // serde names the unknown key; the reason repeats it escaped, never a raw NUL.
        let reason = rows[1].reason.as_deref().unwrap();
        assert!(reason.contains("pass\\0"), "{reason}");
        assert!(!reason.contains('\0'));
    }

    #[test]
    fn line_numbers_stay_right_over_a_large_file() {
        let mut csv = String::from("username,email\n");
        for i in 0..20_000 {
            csv.push_str(&format!("u{i},u{i}@pickup.example\n"));
            if i % 1000 == 0 {
                csv.push('\n');
            }
        }
        let rows = parse(Format::Csv, csv.as_bytes()).unwrap();
        assert_eq!(rows.len(), 20_000);
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[1].line, 4);
        assert_eq!(rows[19_999].line, 20_001 + 20);
        assert_eq!(rows[19_999].input.as_ref().unwrap().username, "u19999");
    }

    #[test]
    fn row_ids_are_stable_per_job_and_line() {
        let job = Uuid::now_v7();
        assert_eq!(row_user_id(job, 2), row_user_id(job, 2));
        assert_ne!(row_user_id(job, 2), row_user_id(job, 3));
    }

    #[test]
    fn media_types_and_file_names_choose_the_format() {
        assert_eq!(
            Format::from_media_type("text/csv; charset=utf-8"),
            Some(Format::Csv)
        );
        assert_eq!(
            Format::from_media_type("application/x-ndjson"),
            Some(Format::Jsonl)
        );
        assert_eq!(Format::from_media_type("application/json"), None);
        assert_eq!(Format::from_file_name("Users.CSV"), Some(Format::Csv));
        assert_eq!(Format::from_file_name("users.jsonl"), Some(Format::Jsonl));
    }
}
