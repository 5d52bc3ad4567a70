//! Reading an uploaded file into rows, before anything is stored.

use std::collections::HashMap;

use onboarding_config::UserOnboarding;
use onboarding_domain::value::printable;
use sha2::{Digest, Sha256};

use super::{BulkError, Format, NewRow, RowInput, RowStatus};

const CSV_COLUMNS: [&str; 5] = ["username", "email", "domain", "locale", "time_zone"];

/// Reads a whole file into rows: each line is `pending` (valid), `invalid` (with the reason) or
/// `duplicate` (the same username as an earlier line of the file). Fails only for a file that
/// cannot be read as a whole (an unknown CSV column, no rows at all).
///
/// A line with a control character in a field is `invalid` without its fields: PostgreSQL could
/// not store a NUL in them, and a reason never repeats one unescaped.
pub fn parse(
    format: Format,
    data: &[u8],
    rules: &UserOnboarding,
) -> Result<Vec<NewRow>, BulkError> {
    let rows = match format {
        Format::Csv => parse_csv(data)?,
        Format::Jsonl => parse_jsonl(data),
    };
    if rows.is_empty() {
        return Err(BulkError::File(
            "the file has no rows; send one invitation per line: username,email[,domain,locale,time_zone]"
                .into(),
        ));
    }
    // Validate, and mark later lines with an earlier line's username as duplicates.
    let mut seen: HashMap<(String, String), i32> = HashMap::new();
    Ok(rows
        .into_iter()
        .map(|(line, input)| match input {
            Err(reason) => NewRow {
                line,
                input: None,
                status: RowStatus::Invalid,
                reason: Some(printable(&reason, 1000)),
            },
            Ok(input) => match input
                .control_characters()
                .and_then(|()| input.validate(rules))
            {
                Err(reason) => NewRow {
                    line,
                    // Fields with a control character are not kept (a NUL cannot be).
                    input: input.control_characters().is_ok().then_some(input),
                    status: RowStatus::Invalid,
                    reason: Some(reason),
                },
                Ok(inv) => {
                    let key = (inv.domain.as_str().to_owned(), inv.username.key());
                    match seen.get(&key) {
                        Some(first) => NewRow {
                            line,
                            reason: Some(format!("the same username as line {first} of this file")),
                            input: Some(input),
                            status: RowStatus::Duplicate,
                        },
                        None => {
                            seen.insert(key, line);
                            NewRow {
                                line,
                                input: Some(input),
                                status: RowStatus::Pending,
                                reason: None,
                            }
                        }
                    }
                }
            },
        })
        .collect())
}

type ReadRow = (i32, Result<RowInput, String>);

fn parse_csv(data: &[u8]) -> Result<Vec<ReadRow>, BulkError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(data);
    let mut columns: Vec<usize> = vec![0, 1, 2, 3, 4];
    let mut out = Vec::new();
    let mut first = true;
    let mut record = csv::StringRecord::new();
    let mut lines = Lines {
        data,
        pos: 0,
        line: 1,
    };
    loop {
        // Lines are counted here, not by the csv crate, which counts only `\n`.
        let before = reader.position().byte();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = lines.at(e.position().map_or(before, |p| p.byte()));
                out.push((line, Err(format!("not readable as CSV: {e}"))));
                first = false;
                continue;
            }
        }
        let line = lines.at(record.position().map_or(before, |p| p.byte()));
        if record.iter().all(str::is_empty) {
            continue;
        }
        if first {
            first = false;
            if record.get(0).is_some_and(|f| {
                f.trim_start_matches('\u{feff}')
                    .eq_ignore_ascii_case("username")
            }) {
                let mut map = Vec::new();
                for field in record.iter() {
                    let name = field.trim_start_matches('\u{feff}').to_ascii_lowercase();
                    match CSV_COLUMNS.iter().position(|c| *c == name) {
                        Some(i) if !map.contains(&i) => map.push(i),
                        _ => {
                            return Err(BulkError::File(format!(
                                "unknown or repeated CSV column `{}`; the columns are username,email[,domain,locale,time_zone]",
                                printable(field, 40)
                            )))
                        }
                    }
                }
                if !(map.contains(&0) && map.contains(&1)) {
                    return Err(BulkError::File(
                        "the CSV header must name the columns username and email".into(),
                    ));
                }
                columns = map;
                continue;
            }
        }
        if record.len() > columns.len() || record.len() < 2 {
            out.push((
                line,
                Err(format!(
                    "expected {} fields (username,email[,domain,locale,time_zone]), found {}",
                    if columns.len() == CSV_COLUMNS.len() {
                        format!("2 to {}", CSV_COLUMNS.len())
                    } else {
                        columns.len().to_string()
                    },
                    record.len()
                )),
            ));
            continue;
        }
        let mut input = RowInput::default();
        for (value, column) in record.iter().zip(&columns) {
            let value = value.to_owned();
            match column {
                0 => input.username = value,
                1 => input.email = value,
                2 => input.domain = Some(value),
                3 => input.locale = Some(value),
                _ => input.time_zone = Some(value),
            }
        }
        out.push((line, Ok(input)));
    }
    Ok(out)
}

/// Line numbers of byte offsets, for offsets that only grow (one pass over the file).
struct Lines<'a> {
    data: &'a [u8],
    pos: usize,
    line: i32,
}

impl Lines<'_> {
    /// The 1-based line number of the first non-blank byte at or after `offset` (the csv crate
    /// reports the position of a record after blank lines at the first of them).
    fn at(&mut self, offset: u64) -> i32 {
        let mut start = (offset as usize).clamp(self.pos, self.data.len());
        while start < self.data.len() && (self.data[start] == b'\n' || self.data[start] == b'\r') {
            start += 1;
        }
        self.line += line_breaks(self.data, self.pos, start) as i32;
        self.pos = start;
        self.line
    }
}

/// The line breaks in `data[from..to]`, counted as the csv crate ends records: `\n`, `\r\n` and a
/// lone `\r` (a file saved with classic Mac line endings) each end one line.
fn line_breaks(data: &[u8], from: usize, to: usize) -> usize {
    (from..to)
        .filter(|&i| match data[i] {
            b'\n' => true,
            b'\r' => data.get(i + 1) != Some(&b'\n'),
            _ => false,
        })
        .count()
}

fn parse_jsonl(data: &[u8]) -> Vec<ReadRow> {
    data.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .map(|(i, l)| {
            let line = i as i32 + 1;
            let parsed = serde_json::from_slice::<RowInput>(l).map_err(|e| {
                format!("not a JSON object with username, email and optionally domain, locale: {e}")
            });
            (line, parsed)
        })
        .collect()
}

/// The SHA-256 of an uploaded file (recorded with the job).
pub fn digest(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// Properties of the bulk file parser, over files nobody would write by hand.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A cell: letters, digits and the characters that make CSV quote (no line breaks, which
    /// would move the line numbers, and no control characters).
    fn cell() -> impl Strategy<Value = String> {
        "[A-Za-z0-9@._,\"' -]{0,16}".prop_map(|s| s.trim().to_owned())
    }

    fn row() -> impl Strategy<Value = RowInput> {
        (
            "[A-Za-z0-9@._,\"'-][A-Za-z0-9@._,\"' -]{0,15}".prop_map(|s| s.trim().to_owned()),
            cell(),
            prop::option::of(cell()),
            prop::option::of(cell()),
            prop::option::of(cell()),
        )
            .prop_map(|(username, email, domain, locale, time_zone)| RowInput {
                username,
                email,
                domain,
                locale,
                time_zone,
            })
    }

    /// `rows` as a CSV file with a header, as a spreadsheet writes it.
    fn csv_file(rows: &[RowInput]) -> Vec<u8> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(CSV_COLUMNS).unwrap();
        for r in rows {
            let opt = |v: &Option<String>| v.clone().unwrap_or_default();
            w.write_record([
                r.username.clone(),
                r.email.clone(),
                opt(&r.domain),
                opt(&r.locale),
                opt(&r.time_zone),
            ])
            .unwrap();
        }
        w.into_inner().unwrap()
    }

    fn jsonl_file(rows: &[RowInput]) -> Vec<u8> {
        rows.iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect::<String>()
            .into_bytes()
    }

    /// What a row's input says once an empty cell counts as not given.
    fn normalised(r: &RowInput) -> RowInput {
        let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        RowInput {
            domain: given(&r.domain),
            locale: given(&r.locale),
            time_zone: given(&r.time_zone),
            ..r.clone()
        }
    }

    /// What every parsed file promises, whatever it held.
    fn check_rows(rows: &[NewRow], lines_in_file: usize) -> Result<(), TestCaseError> {
        let rules = UserOnboarding::default();
        let mut previous = 0;
        for row in rows {
            // One result per line, in file order, on a line the file has.
            prop_assert!(row.line > previous && row.line as usize <= lines_in_file.max(1));
            previous = row.line;
            match row.status {
                // Accepted rows satisfy the invitation rules.
                RowStatus::Pending => {
                    let input = row.input.as_ref().unwrap();
                    prop_assert!(input.validate(&rules).is_ok());
                    prop_assert!(row.reason.is_none());
                }
                // Refused rows say why, in one printable line.
                _ => {
                    let reason = row.reason.as_deref().unwrap_or_default();
                    prop_assert!(!reason.is_empty(), "{row:?}");
                    prop_assert!(!reason.chars().any(char::is_control), "{reason:?}");
                }
            }
        }
        Ok(())
    }

    /// The lines of a file as a text editor shows them (`\n`, `\r\n` or a lone `\r` ends one).
    fn lines(data: &[u8]) -> usize {
        line_breaks(data, 0, data.len()) + 1
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_as_rows_or_refused_with_a_reason(
            data in prop::collection::vec(any::<u8>(), 0..400),
            csv in any::<bool>(),
        ) {
            let format = if csv { Format::Csv } else { Format::Jsonl };
            match parse(format, &data, &UserOnboarding::default()) {
                Ok(rows) => {
                    prop_assert!(!rows.is_empty());
                    check_rows(&rows, lines(&data))?;
                }
                Err(BulkError::File(reason)) => prop_assert!(!reason.is_empty()),
                Err(e) => prop_assert!(false, "not a file error: {e}"),
            }
        }

        #[test]
        fn printable_text_in_csv_is_read_as_rows_or_refused_with_a_reason(
            text in "([A-Za-z0-9@._,\"' ;\t\u{feff}-]{0,30}\r?\n){0,8}",
        ) {
            match parse(Format::Csv, text.as_bytes(), &UserOnboarding::default()) {
                Ok(rows) => check_rows(&rows, lines(text.as_bytes()))?,
                Err(BulkError::File(reason)) => prop_assert!(!reason.is_empty()),
                Err(e) => prop_assert!(false, "not a file error: {e}"),
            }
        }

        #[test]
        fn a_written_csv_file_reads_back_row_for_row(rows in prop::collection::vec(row(), 1..12)) {
            let file = csv_file(&rows);
            let parsed = parse(Format::Csv, &file, &UserOnboarding::default()).unwrap();
            prop_assert_eq!(parsed.len(), rows.len());
            check_rows(&parsed, lines(&file))?;
            for (i, (row, written)) in parsed.iter().zip(&rows).enumerate() {
                // The header is line 1.
                prop_assert_eq!(row.line as usize, i + 2);
                if let Some(input) = &row.input {
                    prop_assert_eq!(normalised(input), normalised(written));
                }
            }
        }

        #[test]
        fn a_written_jsonl_file_reads_back_row_for_row(rows in prop::collection::vec(row(), 1..12)) {
            let file = jsonl_file(&rows);
            let parsed = parse(Format::Jsonl, &file, &UserOnboarding::default()).unwrap();
            prop_assert_eq!(parsed.len(), rows.len());
            check_rows(&parsed, lines(&file))?;
            for (i, (row, written)) in parsed.iter().zip(&rows).enumerate() {
                prop_assert_eq!(row.line as usize, i + 1);
                if let Some(input) = &row.input {
                    prop_assert_eq!(input, written);
                }
            }
        }

        #[test]
        fn a_username_given_twice_is_a_duplicate_naming_the_first_line(
            name in "[a-z]{3,12}",
            upper in any::<bool>(),
        ) {
            let again = if upper { name.to_uppercase() } else { name.clone() };
            let file = format!("{name},{name}@pickup.example\n{again},other@pickup.example\n");
            let rows = parse(Format::Csv, file.as_bytes(), &UserOnboarding::default()).unwrap();
            prop_assert_eq!(rows[0].status, RowStatus::Pending);
            prop_assert_eq!(rows[1].status, RowStatus::Duplicate);
            prop_assert_eq!(rows[1].reason.as_deref(), Some("the same username as line 1 of this file"));
        }
    }
}
