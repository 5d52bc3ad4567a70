//! `onboard audit …`: the auditors' commands (library: `onboarding-audit`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::{Subcommand, ValueEnum};
use futures::TryStreamExt;
use onboarding_audit::{chain, log, replay};
use onboarding_config::Settings;
use onboarding_domain::value::UserDomain;
use onboarding_store::PersonalKeys;
use onboarding_store::Store;

/// The command ran, and what it found makes the exit status this code (the findings are
/// already printed).
#[derive(Debug, thiserror::Error)]
#[error("audit failed with status {0}")]
pub struct Failed(pub u8);

/// Tampering found by `verify`, or differences found by `replay`.
const FOUND: u8 = 3;
/// `verify --expect`: the kept head is not in the log.
const HEAD_MISSING: u8 = 4;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute every event's hash and the chain linking them; name any event that was altered,
    /// removed, inserted or reordered, and print the head digest to keep.
    Verify {
        /// A head digest printed earlier (`<position>:<sha256>`): fail unless the log still holds
        /// that event with that hash (the log only grows, so an old head stays in it).
        #[arg(long)]
        expect: Option<String>,
    },
    /// Rebuild the projections (account_states, usernames) from the log and compare them with
    /// the live ones; print every difference.
    Replay {
        #[arg(long, value_enum)]
        from: Source,
        /// Also write the rebuilt projections and a copy of the live ones into a scratch schema,
        /// and keep it (its name is printed), to query them with SQL.
        #[arg(long)]
        keep: bool,
    },
    /// One account's timeline: every event with its time, actor and correlation id.
    History {
        /// User id, or username (with --domain).
        user: String,
        #[arg(long, default_value = UserDomain::PRIMARY)]
        domain: String,
        /// JSON lines (every stored field, hashes included) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The account's state at an instant (RFC 3339, e.g. 2026-11-28T10:00:00Z), from its events
    /// recorded until then.
    AsOf {
        user: String,
        instant: String,
        #[arg(long, default_value = UserDomain::PRIMARY)]
        domain: String,
    },
    /// The log as JSON lines, in position order, with hashes (password hashes redacted).
    Export {
        /// Only events recorded at or after this instant (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only events recorded before this instant (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Source {
    Postgres,
    Kafka,
}

fn instant(flag: &str, raw: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| {
            format!("{flag}: `{raw}` is not an RFC 3339 instant such as 2026-11-28T10:00:00Z")
        })
}

pub async fn run(settings: &Settings, command: AuditCommand) -> Result<()> {
    let pool = onboarding_store::connect_for_maintenance(settings).await?;
    match command {
        AuditCommand::Verify { expect } => {
            let expect = expect
                .map(|d| {
                    chain::Head::parse(&d).with_context(|| {
                        format!("--expect: `{d}` is not a head digest (<position>:<64 hex digits>) as verify prints it")
                    })
                })
                .transpose()?;
            let report = chain::verify(&pool, expect.clone())
                .await
                .context("cannot read the event log")?;
            for finding in &report.findings {
                println!("{finding}");
            }
            // The console's overview shows the last result. Recording it is best effort: an
            // auditor may verify through a role that can only read.
            let run = onboarding_store::NewAuditVerification {
                events: i64::try_from(report.events).unwrap_or(i64::MAX),
                head: report.head.as_ref().map(|h| h.digest()),
                findings: report.findings.len(),
                expected_head_missing: matches!(
                    (&expect, report.expected_found),
                    (Some(_), Some(false))
                ),
            };
            if let Err(e) = onboarding_store::record_audit_verification(&pool, &run).await {
                eprintln!("note: this result was not recorded for the console ({e})");
            }
            println!("events: {}", report.events);
            match &report.head {
                Some(head) => println!("head: {}", head.digest()),
                None => println!("head: (empty log)"),
            }
            if !report.findings.is_empty() {
                eprintln!(
                    "the event log was tampered with: {} finding(s)",
                    report.findings.len()
                );
                return Err(Failed(FOUND).into());
            }
            if let (Some(expect), Some(false)) = (expect, report.expected_found) {
                eprintln!(
                    "the log does not hold the expected head {}: events up to it were changed or removed",
                    expect.digest()
                );
                return Err(Failed(HEAD_MISSING).into());
            }
            println!("chain intact");
            Ok(())
        }
        AuditCommand::Replay { from, keep } => {
            let keys = PersonalKeys::from_settings(settings)?;
            let scratch = match keep {
                true => Some(replay::Scratch::create(&pool).await?),
                false => None,
            };
            let result = match from {
                Source::Postgres => replay::from_postgres(&pool, &keys, scratch.as_ref()).await,
                Source::Kafka => {
                    let pending = replay::unpublished(&pool).await?;
                    if pending > 0 {
                        eprintln!("note: {pending} event(s) are still in the outbox, not yet on the topic; expect differences until the relay has published them");
                    }
                    replay::from_kafka(&pool, keys.registry(), &settings.kafka, scratch.as_ref())
                        .await
                }
            };
            if let Some(scratch) = scratch {
                println!("scratch schema kept: {}", scratch.schema);
            }
            let replay::Replayed {
                events,
                differences,
                names_in_clear,
            } = result?;
            println!("events replayed: {events}");
            if names_in_clear > 0 {
                eprintln!(
                    "note: {names_in_clear} name(s) in the username registry are still in clear \
                     (compared in their keyed form); `onboard migrate` keys them (docs/adr/0035)"
                );
            }
            for d in &differences {
                println!("{d}");
            }
            if differences.is_empty() {
                println!("projections match the log");
                Ok(())
            } else {
                eprintln!(
                    "{} row(s) differ between the live projections and the replay",
                    differences.len()
                );
                Err(Failed(FOUND).into())
            }
        }
        AuditCommand::History { user, domain, json } => {
            let store = Store::new(
                pool.clone(),
                onboarding_store::services(settings)?,
                PersonalKeys::from_settings(settings)?,
            );
            let id = crate::user::resolve(&store, &user, &domain).await?;
            let events = log::history(&pool, store.personal_keys(), id).await?;
            anyhow::ensure!(!events.is_empty(), "no user with id {id}");
            for e in &events {
                if json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!("{}", log::history_line(e));
                }
            }
            Ok(())
        }
        AuditCommand::AsOf {
            user,
            instant: at,
            domain,
        } => {
            let at = instant("INSTANT", &at)?;
            let store = Store::new(
                pool.clone(),
                onboarding_store::services(settings)?,
                PersonalKeys::from_settings(settings)?,
            );
            let id = crate::user::resolve(&store, &user, &domain).await?;
            let (account, position) = log::as_of(&pool, store.personal_keys(), id, at)
                .await?
                .with_context(|| {
                    format!(
                        "user {id} did not exist at {}",
                        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    )
                })?;
            let mut view = onboarding_gateway::user_view(&account, at);
            view["as_of"] = serde_json::json!(at);
            view["last_position"] = serde_json::json!(position);
            println!("{}", serde_json::to_string_pretty(&view)?);
            Ok(())
        }
        AuditCommand::Export {
            since,
            until,
            output,
        } => {
            let window = log::Window {
                since: since
                    .as_deref()
                    .map(|s| instant("--since", s))
                    .transpose()?,
                until: until
                    .as_deref()
                    .map(|s| instant("--until", s))
                    .transpose()?,
            };
            let progress = if std::io::stderr().is_terminal() {
                let bar = indicatif::ProgressBar::new(log::count(&pool, window).await? as u64);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} events ({per_sec}, {eta} left)",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar
            } else {
                indicatif::ProgressBar::hidden()
            };
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut events = log::export(&pool, window);
            let mut n: u64 = 0;
            while let Some(e) = events.try_next().await? {
                serde_json::to_writer(&mut out, &e)?;
                out.write_all(b"\n")?;
                n += 1;
                if n.is_multiple_of(1000) {
                    progress.set_position(n);
                }
            }
            out.flush()?;
            progress.finish_and_clear();
            eprintln!("exported {n} event(s)");
            Ok(())
        }
    }
}
