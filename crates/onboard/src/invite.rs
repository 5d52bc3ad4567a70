//! `onboard invite`: one user from the flags, or every row of a file as a bulk job.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use onboarding_config::Settings;
use onboarding_domain::value::UserDomain;
use onboarding_store::Actor;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    username: Option<String>,
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    email: Option<String>,
    /// A CSV (`.csv`: `username,email[,domain,locale,time_zone]`) or JSON-lines (`.jsonl`) file: one
    /// invitation per row, shown with a progress bar; a file invited again invites nobody twice.
    #[arg(long, conflicts_with_all = ["domain", "locale", "code_validity_minutes"])]
    file: Option<PathBuf>,
    #[arg(long, default_value = UserDomain::PRIMARY)]
    domain: String,
    /// Language tag for the user's mails, e.g. `en` or `de-AT` (falls back to its language, then the default locale).
    #[arg(long)]
    locale: Option<String>,
    /// IANA time zone for the user's mails, e.g. `Europe/Berlin`.
    #[arg(long)]
    time_zone: Option<String>,
    /// Minutes the code stays valid (default: identity_mgt.user_onboarding.ask_password_email_validity).
    #[arg(long)]
    code_validity_minutes: Option<i64>,
}

pub async fn run(settings: &Settings, args: Args) -> Result<()> {
    match args.file {
        Some(file) => file_rows(settings, &file).await,
        None => one(settings, &args).await,
    }
}

/// `onboard invite --username … --email …`: one invitation, printed as the user view.
async fn one(settings: &Settings, args: &Args) -> Result<()> {
    let cfg = &settings.identity_mgt.user_onboarding;
    cfg.invitations_enabled()?;
    let invitation = onboarding_store::InvitationFields {
        username: Some(args.username.as_deref().unwrap_or_default()),
        email: Some(args.email.as_deref().unwrap_or_default()),
        domain: Some(args.domain.as_str()),
        locale: args.locale.as_deref(),
        time_zone: args.time_zone.as_deref(),
        code_validity_minutes: args.code_validity_minutes,
        claims: Default::default(),
    }
    .validate(cfg)
    .map_err(|problems| {
        // The flags are named as the user typed them.
        let flags: Vec<String> = problems
            .0
            .iter()
            .map(|(field, message)| format!("--{}: {message}", field.replace('_', "-")))
            .collect();
        anyhow::anyhow!(flags.join("; "))
    })?;
    let store = crate::user::store(settings).await?;
    let account = store.invite(invitation, &Actor::admin("cli")).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&onboarding_gateway::user_view(&account, chrono::Utc::now()))?
    );
    Ok(())
}

/// `onboard invite --file`: records the file as a bulk job (as `POST /api/v1/bulk-invites`
/// does) and applies its rows in this process, with a progress bar on a terminal.
async fn file_rows(settings: &Settings, path: &Path) -> Result<()> {
    use onboarding_store::bulk::{self, BulkRunner, Format};
    settings
        .identity_mgt
        .user_onboarding
        .invitations_enabled()?;
    let format = Format::from_file_name(&path.to_string_lossy()).with_context(|| {
        format!(
            "{}: name the file .csv (username,email[,domain,locale,time_zone]) or .jsonl (JSON lines)",
            path.display()
        )
    })?;
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size > settings.bulk.max_file_bytes {
        bail!(
            "{} has {size} bytes, more than bulk.max_file_bytes ({}); split it or raise the limit",
            path.display(),
            settings.bulk.max_file_bytes
        );
    }
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let rows = bulk::parse(format, &data, &settings.identity_mgt.user_onboarding)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let store = crate::user::store(settings).await?;
    let job_id = store
        .create_bulk_job("cli", format, &bulk::digest(&data), &rows)
        .await?;
    let pending = rows
        .iter()
        .filter(|r| r.status == bulk::RowStatus::Pending)
        .count() as u64;
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(pending),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} inviting [{bar:40}] {pos}/{len} rows ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let runner = BulkRunner {
        store: store.clone(),
        rules: settings.identity_mgt.user_onboarding.clone(),
        concurrency: settings.bulk.concurrency,
    };
    let actor = Actor::admin("cli").with_correlation(Some(format!("bulk-job:{job_id}")));
    let shutdown = CancellationToken::new();
    let progress = {
        let bar = bar.clone();
        move |n: u64| bar.set_position(n)
    };
    let mut attempts = 0;
    loop {
        match runner.run_job(job_id, &actor, &shutdown, &progress).await {
            Ok(_) => break,
            Err(e) if attempts < 5 => {
                attempts += 1;
                bar.println(format!("database error, retrying: {e}"));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                bar.abandon();
                return Err(e).with_context(|| {
                    format!("bulk job {job_id} stopped; its remaining rows are applied by a running gateway")
                });
            }
        }
    }
    bar.finish_and_clear();
    let job = store
        .bulk_job(job_id)
        .await?
        .context("the bulk job was not stored")?;
    for row in job
        .rows
        .iter()
        .filter(|r| r.status != bulk::RowStatus::Created)
    {
        eprintln!(
            "line {}: {}{}",
            row.line,
            row.status,
            row.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    let t = &job.totals;
    eprintln!(
        "{} rows: {} created, {} duplicate, {} invalid, {} failed (job {job_id})",
        t.rows, t.created, t.duplicate, t.invalid, t.failed
    );
    println!("{}", serde_json::to_string_pretty(&job)?);
    if t.invalid + t.failed > 0 {
        bail!(
            "{} row(s) were not invited; fix them and run the file again (rows already invited are reported as duplicate)",
            t.invalid + t.failed
        );
    }
    Ok(())
}
