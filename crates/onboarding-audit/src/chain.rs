//! The hash chain over the event log (migration 0008, docs/adr/0008): recomputes every event's
//! hash from its stored content, independently of the trigger that wrote it, and names what was
//! altered, removed, inserted or reordered.

use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

/// The fields an event's hash covers, as stored.
#[derive(Debug, Clone)]
pub struct ChainRow {
    pub global_position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    /// PostgreSQL's text form of the `jsonb` value (canonical for a given value: keys sorted
    /// by length then bytes, no duplicate keys, `", "` and `": "` separators).
    pub payload: String,
    pub metadata: String,
    pub prev_hash: Option<Vec<u8>>,
    pub hash: Vec<u8>,
}

impl ChainRow {
    /// The canonical content, exactly as `event_hash` in migration 0008 builds it.
    pub fn canonical(&self) -> String {
        let prev = self
            .prev_hash
            .as_deref()
            .map(hex::encode)
            .unwrap_or_default();
        format!(
            "onboard-event-v1\n{prev}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.aggregate_type,
            self.aggregate_id,
            self.sequence,
            self.event_type,
            self.event_version,
            self.recorded_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
            self.payload,
            self.metadata
        )
    }

    pub fn computed_hash(&self) -> Vec<u8> {
        Sha256::digest(self.canonical().as_bytes()).to_vec()
    }

    fn name(&self) -> String {
        format!(
            "position {} ({} of {} {}, sequence {})",
            self.global_position,
            self.event_type,
            self.aggregate_type,
            self.aggregate_id,
            self.sequence
        )
    }
}

/// Something wrong with the log, naming the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The content no longer matches the hash it was stored with.
    Altered { position: i64, detail: String },
    /// The event does not belong between its neighbours: its successor chains to its predecessor.
    Inserted { position: i64, detail: String },
    /// An event is missing just before this one: it chains to a hash that is not its predecessor's.
    Removed { before: i64, detail: String },
    /// Two neighbours are in each other's places.
    Reordered {
        first: i64,
        second: i64,
        detail: String,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Altered { detail, .. } => write!(f, "ALTERED: {detail}"),
            Self::Inserted { detail, .. } => write!(f, "INSERTED: {detail}"),
            Self::Removed { detail, .. } => write!(f, "REMOVED: {detail}"),
            Self::Reordered { detail, .. } => write!(f, "REORDERED: {detail}"),
        }
    }
}

/// The newest event's position and hash: what an auditor keeps to compare later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub position: i64,
    pub hash: Vec<u8>,
}

impl Head {
    /// `<global_position>:<sha256 hex>`.
    pub fn digest(&self) -> String {
        format!("{}:{}", self.position, hex::encode(&self.hash))
    }

    pub fn parse(digest: &str) -> Option<Self> {
        let (pos, hash) = digest.trim().split_once(':')?;
        Some(Self {
            position: pos.parse().ok()?,
            hash: hex::decode(hash).ok().filter(|h| h.len() == 32)?,
        })
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub events: u64,
    pub findings: Vec<Finding>,
    pub head: Option<Head>,
    /// Whether the event named by `--expect` is still in the log with the same hash.
    pub expected_found: Option<bool>,
}

/// Walks the chain in position order, keeping one event of look-ahead and the two last
/// accepted hashes, so each kind of tampering is told apart (see [`Finding`]).
#[derive(Default)]
pub struct Verifier {
    /// Hash of the last accepted event, and of the one before it (with its position).
    last: Option<(i64, Vec<u8>)>,
    before_last: Option<(i64, Vec<u8>)>,
    /// A reordered pair was reported: after accepting its second event, continue from the first.
    resume_after_swap: Option<(i64, Vec<u8>)>,
    expect: Option<Head>,
    pub report: Report,
}

impl Verifier {
    pub fn new(expect: Option<Head>) -> Self {
        Self {
            report: Report {
                expected_found: expect.as_ref().map(|_| false),
                ..Report::default()
            },
            expect,
            ..Self::default()
        }
    }

    fn accept(&mut self, row: &ChainRow) {
        self.before_last = self.last.take();
        self.last = Some((row.global_position, row.hash.clone()));
        if let Some(resume) = self.resume_after_swap.take() {
            self.before_last = self.last.take();
            self.last = Some(resume);
        }
    }

    /// Checks `row`, given the event after it (if any).
    pub fn check(&mut self, row: &ChainRow, next: Option<&ChainRow>) {
        self.report.events += 1;
        self.report.head = Some(Head {
            position: row.global_position,
            hash: row.hash.clone(),
        });
        if let Some(expect) = &self.expect {
            if expect.position == row.global_position && expect.hash == row.hash {
                self.report.expected_found = Some(true);
            }
        }
        let last_hash = self.last.as_ref().map(|(_, h)| h.clone());
        let chains = |r: &ChainRow, h: &Option<Vec<u8>>| r.prev_hash == *h;
        if row.computed_hash() != row.hash {
            self.report.findings.push(Finding::Altered {
                position: row.global_position,
                detail: format!(
                    "{}: its content does not match its hash (payload, metadata or another field was changed)",
                    row.name()
                ),
            });
            self.accept(row);
        } else if chains(row, &last_hash) {
            self.accept(row);
        } else if let Some(next) = next.filter(|n| {
            chains(n, &last_hash) && row.prev_hash.as_deref() == Some(n.hash.as_slice())
        }) {
            self.report.findings.push(Finding::Reordered {
                first: row.global_position,
                second: next.global_position,
                detail: format!(
                    "{} and {} are in each other's places: the first chains to the second",
                    row.name(),
                    next.name()
                ),
            });
            // `next` will chain to our predecessor; after it, continue from this event.
            self.resume_after_swap = Some((row.global_position, row.hash.clone()));
        } else if next.is_some_and(|n| chains(n, &last_hash)) {
            self.report.findings.push(Finding::Inserted {
                position: row.global_position,
                detail: format!(
                    "{} does not belong here: the next event chains to the one before it",
                    row.name()
                ),
            });
        } else if let (Some((pos, _)), true) = (
            &self.last,
            self.before_last
                .as_ref()
                .is_some_and(|(_, h)| row.prev_hash.as_deref() == Some(h.as_slice())),
        ) {
            self.report.findings.push(Finding::Inserted {
                position: *pos,
                detail: format!(
                    "position {pos} does not belong here: {} chains to the event before it",
                    row.name()
                ),
            });
            self.accept(row);
        } else {
            let after = self
                .last
                .as_ref()
                .map(|(p, _)| format!("after position {p}"))
                .unwrap_or_else(|| "at the start of the log".to_owned());
            self.report.findings.push(Finding::Removed {
                before: row.global_position,
                detail: format!(
                    "an event is missing {after}, before {}: it chains to {} which is not in its place",
                    row.name(),
                    row.prev_hash
                        .as_deref()
                        .map(hex::encode)
                        .unwrap_or_else(|| "nothing".into())
                ),
            });
            self.accept(row);
        }
    }
}

/// Streams the log in position order through a [`Verifier`]; memory stays flat.
pub async fn verify(pool: &PgPool, expect: Option<Head>) -> Result<Report, sqlx::Error> {
    let mut verifier = Verifier::new(expect);
    let mut rows = sqlx::query(
        "SELECT global_position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
         recorded_at, payload::text AS payload, metadata::text AS metadata, prev_hash, hash \
         FROM events ORDER BY global_position",
    )
    .fetch(pool);
    let mut current: Option<ChainRow> = None;
    while let Some(row) = rows.try_next().await? {
        let row = ChainRow {
            global_position: row.try_get("global_position")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            recorded_at: row.try_get("recorded_at")?,
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
            prev_hash: row.try_get("prev_hash")?,
            hash: row
                .try_get::<Option<Vec<u8>>, _>("hash")?
                .unwrap_or_default(),
        };
        if let Some(c) = current.take() {
            verifier.check(&c, Some(&row));
        }
        current = Some(row);
    }
    if let Some(c) = current {
        verifier.check(&c, None);
    }
    Ok(verifier.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<ChainRow> {
        let mut rows: Vec<ChainRow> = Vec::new();
        for i in 0..n {
            let mut r = ChainRow {
                global_position: i as i64 + 1,
                aggregate_type: "Onboarding".into(),
                aggregate_id: format!("user-{}", i % 2),
                sequence: i as i64 / 2 + 1,
                event_type: "LinkOpened".into(),
                event_version: "1.0".into(),
                recorded_at: DateTime::from_timestamp(1_700_000_000 + i as i64, 1000).unwrap(),
                payload: format!("{{\"n\": {i}}}"),
                metadata: "{}".into(),
                prev_hash: rows.last().map(|p| p.hash.clone()),
                hash: vec![],
            };
            r.hash = r.computed_hash();
            rows.push(r);
        }
        rows
    }

    fn run(rows: &[ChainRow]) -> Report {
        let mut v = Verifier::new(None);
        for (i, r) in rows.iter().enumerate() {
            v.check(r, rows.get(i + 1));
        }
        v.report
    }

    #[test]
    fn an_intact_chain_has_no_findings_and_a_head() {
        let rows = chain(6);
        let report = run(&rows);
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert_eq!(report.events, 6);
        let head = report.head.unwrap();
        assert_eq!(head.position, 6);
        assert_eq!(Head::parse(&head.digest()), Some(head));
    }

    #[test]
    fn the_canonical_content_is_documented_text() {
        let r = &chain(1)[0];
        assert_eq!(
            r.canonical(),
            "onboard-event-v1\n\nOnboarding\nuser-0\n1\nLinkOpened\n1.0\n2023-11-14T22:13:20.000001Z\n{\"n\": 0}\n{}"
        );
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let mut altered = chain(6);
        altered[2].payload = "{\"n\": 99}".into();
        assert!(matches!(
            run(&altered).findings.as_slice(),
            [Finding::Altered { position: 3, .. }]
        ));

        let mut removed = chain(6);
        removed.remove(3);
        assert!(matches!(
            run(&removed).findings.as_slice(),
            [Finding::Removed { before: 5, .. }]
        ));

        let mut reordered = chain(6);
        reordered.swap(2, 3);
        (reordered[2].global_position, reordered[3].global_position) = (3, 4);
        assert!(
            matches!(
                run(&reordered).findings.as_slice(),
                [Finding::Reordered {
                    first: 3,
                    second: 4,
                    ..
                }]
            ),
            "{:?}",
            run(&reordered).findings
        );

        // Inserted with a valid hash chained to its predecessor: its successor tells.
        let mut inserted = chain(6);
        let mut extra = inserted[2].clone();
        extra.global_position = 100;
        extra.payload = "{\"forged\": true}".into();
        extra.prev_hash = Some(inserted[2].hash.clone());
        extra.hash = extra.computed_hash();
        inserted.insert(3, extra);
        assert!(
            matches!(
                run(&inserted).findings.as_slice(),
                [Finding::Inserted { position: 100, .. }]
            ),
            "{:?}",
            run(&inserted).findings
        );

        // Inserted with a made-up chain link.
        let mut inserted = chain(6);
        let mut extra = inserted[2].clone();
        extra.global_position = 100;
        extra.prev_hash = Some(vec![0; 32]);
        extra.hash = extra.computed_hash();
        inserted.insert(3, extra);
        assert!(matches!(
            run(&inserted).findings.as_slice(),
            [Finding::Inserted { position: 100, .. }]
        ));
    }
}
