//! `onboard`: the engine's single binary. Reads configuration, sets up telemetry, and runs one
//! component (or all of them, with `serve`); the components live in the library crates.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use onboarding_config::Settings;
use onboarding_domain::value::{Locale, UserDomain, Username};
use onboarding_email_worker::EmailWorker;
use onboarding_gateway::AppState;
use onboarding_relay::Relay;
use onboarding_store::{Actor, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "onboard",
    version,
    about = "User onboarding engine: invite users, mail them a one-time link, let them set a password"
)]
struct Cli {
    /// Configuration file (TOML). Every key can be overridden with ONBOARD__SECTION__KEY.
    #[arg(
        long,
        short,
        global = true,
        env = "ONBOARD_CONFIG",
        default_value = "onboard.toml"
    )]
    config: PathBuf,
    /// Log format: `text` or `json`. The level comes from ONBOARD_LOG (default `info`).
    #[arg(
        long,
        global = true,
        env = "ONBOARD_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every component in one process: gateway, relay, email worker, scheduler and intake (the default on one machine).
    Serve,
    /// Run only the HTTP gateway (admin API, password page, health, metrics).
    Gateway,
    /// Run only the outbox relay (PostgreSQL to Kafka). Several may run; one is active at a time.
    Relay,
    /// Run only the email worker (Kafka consumer group; run several to share partitions).
    EmailWorker,
    /// Run only the scheduler, which marks invitations whose code passed its expiry `Expired`.
    Scheduler,
    /// Run only the intake: invitation requests from upstream services on Kafka.
    Intake,
    /// Create or upgrade the database schema and create the Kafka topic. Safe to run again.
    Migrate {
        /// Only the database; leave Kafka alone.
        #[arg(long)]
        skip_kafka: bool,
    },
    /// Invite a user: records the invitation and lets the engine mail the link. With --file,
    /// invite every row of a CSV (username,email[,domain,locale,time_zone]) or JSON-lines file.
    Invite {
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        username: Option<String>,
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        email: Option<String>,
        /// A CSV (`.csv`: username,email[,domain,locale,time_zone]) or JSON-lines (`.jsonl`) file: one
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
    },
    /// Inspect users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Mail templates: preview them, or send a test through the configured SMTP server.
    Email {
        #[command(subcommand)]
        command: EmailCommand,
    },
    /// Print one user's events, oldest first, as JSON lines (password hashes redacted).
    Events {
        /// User id, or username (with --domain).
        user: String,
        #[arg(long, default_value = UserDomain::PRIMARY)]
        domain: String,
    },
    /// For auditors: verify the log, rebuild projections from it, read an account's history.
    /// Exit status: 0 all good, 1 the command could not run, 3 tampering or differences found,
    /// 4 the head given with --expect is not in the log.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
}

#[derive(Subcommand)]
enum EmailCommand {
    /// Render a template (`invitation` or `welcome`) with sample values: subject, text and HTML.
    Preview {
        template: String,
        #[arg(long)]
        locale: Option<String>,
        /// Show times in this IANA time zone (e.g. Europe/Berlin), as for a user invited with it.
        #[arg(long)]
        time_zone: Option<String>,
        /// Write the HTML part to this file instead of printing it.
        #[arg(long)]
        html_out: Option<PathBuf>,
    },
    /// Send a sample invitation mail to ADDRESS and print the SMTP server's answer.
    TestSend {
        address: String,
        #[arg(long)]
        locale: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Show a user's state as JSON (never a secret).
    Show {
        /// User id, or username (with --domain).
        user: String,
        #[arg(long, default_value = UserDomain::PRIMARY)]
        domain: String,
    },
}

mod audit;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<audit::Failed>() {
            Some(failed) => std::process::ExitCode::from(failed.0),
            None => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ONBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> Result<()> {
    let settings = Arc::new(Settings::load(&cli.config)?);
    // A misspelt or invalid librdkafka property is named at start, without its value.
    onboarding_relay::kafka::check_config(&settings.kafka).map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Migrate { skip_kafka } => migrate(&settings, skip_kafka).await,
        Command::Serve => components(settings, Components::ALL).await,
        Command::Gateway => {
            components(
                settings,
                Components {
                    gateway: true,
                    ..Components::NONE
                },
            )
            .await
        }
        Command::Relay => {
            components(
                settings,
                Components {
                    relay: true,
                    ..Components::NONE
                },
            )
            .await
        }
        Command::EmailWorker => {
            components(
                settings,
                Components {
                    worker: true,
                    ..Components::NONE
                },
            )
            .await
        }
        Command::Scheduler => {
            components(
                settings,
                Components {
                    scheduler: true,
                    ..Components::NONE
                },
            )
            .await
        }
        Command::Intake => {
            components(
                settings,
                Components {
                    intake: true,
                    ..Components::NONE
                },
            )
            .await
        }
        Command::Invite {
            file: Some(file), ..
        } => invite_file(&settings, &file).await,
        Command::Invite {
            username,
            email,
            domain,
            locale,
            time_zone,
            code_validity_minutes,
            file: None,
        } => {
            invite(
                &settings,
                username.as_deref().unwrap_or_default(),
                email.as_deref().unwrap_or_default(),
                &domain,
                (locale.as_deref(), time_zone.as_deref()),
                code_validity_minutes,
            )
            .await
        }
        Command::User {
            command: UserCommand::Show { user, domain },
        } => {
            let store = store(&settings).await?;
            let id = resolve(&store, &user, &domain).await?;
            let account = store
                .load(id)
                .await?
                .with_context(|| format!("no user with id {id}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&onboarding_gateway::user_view(&account))?
            );
            Ok(())
        }
        Command::Email { command } => email(&settings, command).await,
        Command::Audit { command } => audit::run(&settings, command).await,
        Command::Events { user, domain } => {
            let store = store(&settings).await?;
            let id = resolve(&store, &user, &domain).await?;
            for mut event in store.events_of(id).await? {
                if let Some(hash) = event.payload.pointer_mut("/PasswordSet/password_hash") {
                    *hash = serde_json::Value::String("<redacted>".into());
                }
                println!("{}", serde_json::to_string(&event)?);
            }
            Ok(())
        }
    }
}

pub(crate) async fn store(settings: &Settings) -> Result<Store> {
    let pool = onboarding_store::connect(settings).await?;
    let services = onboarding_store::services(settings)?;
    Ok(Store::new(pool, services))
}

pub(crate) async fn resolve(store: &Store, user: &str, domain: &str) -> Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(user) {
        return Ok(id);
    }
    let username = Username::parse(user).map_err(|e| anyhow::anyhow!(e.0))?;
    let domain = UserDomain::parse(domain).map_err(|e| anyhow::anyhow!(e.0))?;
    let key = username.key();
    if let Some(id) = store.user_id_by_username(domain.as_str(), &key).await? {
        return Ok(id);
    }
    // A revoked invitation gave its name back; it is still found by name while nobody holds it.
    match store.revoked_under(domain.as_str(), &key).await?.as_slice() {
        [] => bail!("no user `{username}` in domain {domain}"),
        [id] => Ok(*id),
        several => bail!(
            "no live user `{username}` in domain {domain}, but {} revoked invitations were made under \
             that name; name one by its id: {}",
            several.len(),
            several
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn migrate(settings: &Settings, skip_kafka: bool) -> Result<()> {
    let pool = onboarding_store::connect(settings).await?;
    onboarding_store::migrate(&pool).await?;
    println!("database schema is up to date");
    if !skip_kafka {
        onboarding_relay::kafka::create_topics(&settings.kafka)
            .await
            .with_context(|| {
                format!(
                    "cannot create Kafka topic `{}` on {}",
                    settings.kafka.topic, settings.kafka.bootstrap_servers
                )
            })?;
        println!("kafka topic `{}` is ready", settings.kafka.topic);
        onboarding_intake::create_topics(settings)
            .await
            .with_context(|| {
                format!(
                    "cannot create the intake topics on {}",
                    settings.kafka.bootstrap_servers
                )
            })?;
        println!(
            "kafka topics `{}`, `{}`, `{}` are ready",
            settings.intake.requests_topic,
            settings.intake.outcomes_topic,
            settings.intake.dead_letter_topic
        );
    }
    Ok(())
}

async fn invite(
    settings: &Settings,
    username: &str,
    email: &str,
    domain: &str,
    (locale, time_zone): (Option<&str>, Option<&str>),
    validity: Option<i64>,
) -> Result<()> {
    let cfg = &settings.identity_mgt.user_onboarding;
    cfg.invitations_enabled()?;
    let invitation = onboarding_store::InvitationFields {
        username: Some(username),
        email: Some(email),
        domain: Some(domain),
        locale,
        time_zone,
        code_validity_minutes: validity,
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
    let store = store(settings).await?;
    let user_id = store.invite(invitation, &Actor::admin("cli")).await?;
    let account = store
        .load(user_id)
        .await?
        .context("the invitation was not stored")?;
    println!(
        "{}",
        serde_json::to_string_pretty(&onboarding_gateway::user_view(&account))?
    );
    Ok(())
}

/// `onboard invite --file`: records the file as a bulk job (as `POST /api/v1/bulk-invites`
/// does) and applies its rows in this process, with a progress bar on a terminal.
async fn invite_file(settings: &Settings, path: &std::path::Path) -> Result<()> {
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
    let store = store(settings).await?;
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

fn metrics() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

#[derive(Clone, Copy)]
struct Components {
    gateway: bool,
    relay: bool,
    worker: bool,
    scheduler: bool,
    intake: bool,
}

impl Components {
    const ALL: Self = Self {
        gateway: true,
        relay: true,
        worker: true,
        scheduler: true,
        intake: true,
    };
    const NONE: Self = Self {
        gateway: false,
        relay: false,
        worker: false,
        scheduler: false,
        intake: false,
    };
}

/// Runs the chosen components until SIGTERM or Ctrl-C, then stops them gracefully.
async fn components(settings: Arc<Settings>, run: Components) -> Result<()> {
    let Components {
        gateway,
        relay,
        worker,
        scheduler,
        intake,
    } = run;
    let handle = metrics()?;
    let pool = onboarding_store::connect(&settings).await?;
    let store = Store::new(pool.clone(), onboarding_store::services(&settings)?);
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    if relay {
        let relay = Relay::new(pool.clone(), &settings.kafka)?;
        let token = shutdown.clone();
        tasks.spawn(async move { relay.run(token).await.context("relay") });
    }
    if worker {
        let worker = EmailWorker::new(&settings, store.clone())?;
        let token = shutdown.clone();
        tasks.spawn(async move { worker.run(token).await.context("email worker") });
    }
    if scheduler {
        let every = Duration::from_secs(
            settings
                .identity_mgt
                .user_onboarding
                .expiry_scan_seconds
                .max(1),
        );
        let (store, token) = (store.clone(), shutdown.clone());
        tasks.spawn(async move {
            onboarding_store::run_scheduler(store, every, token).await;
            Ok(())
        });
    }
    if intake {
        let intake = onboarding_intake::Intake::new(settings.clone(), store.clone())?;
        let token = shutdown.clone();
        tasks.spawn(async move { intake.run(token).await.context("intake") });
    }
    if let (false, Some(addr)) = (gateway, settings.observability.metrics_bind) {
        let (handle, token) = (handle.clone(), shutdown.clone());
        tasks.spawn(async move {
            onboarding_gateway::serve_metrics(addr, handle, token)
                .await
                .context("metrics endpoint")
        });
    }
    if gateway {
        let state = Arc::new(AppState::new(
            settings.clone(),
            store.clone(),
            Some(handle),
        )?);
        let (runner, wake) = state.bulk_runner();
        let token = shutdown.clone();
        tasks.spawn(async move {
            runner.run(wake, token).await;
            Ok(())
        });
        let token = shutdown.clone();
        tasks.spawn(async move {
            onboarding_gateway::serve(state, token, None)
                .await
                .context("gateway")
        });
    }

    let signal = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; stopping"),
        }
    };
    let mut failure = None;
    tokio::select! {
        _ = signal => {}
        Some(done) = tasks.join_next() => {
            // A component stopped on its own: that is a failure; stop the others too.
            failure = Some(match done {
                Ok(Ok(())) => anyhow::anyhow!("a component stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("a component panicked: {e}"),
            });
        }
    }
    shutdown.cancel();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::error!(error = %format!("{e:#}"), "component failed while stopping");
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn sample(
    mailer: &onboarding_email_worker::Mailer,
    kind: &str,
    locale: Option<&str>,
    time_zone: Option<&str>,
) -> Result<onboarding_email_worker::templates::Rendered> {
    let expires = chrono::Utc::now() + chrono::Duration::hours(24);
    let rendered = match onboarding_email_worker::templates::Kind::parse(kind) {
        Some(onboarding_email_worker::templates::Kind::Invitation) => {
            mailer.render(&onboarding_email_worker::Invitation {
                to: "jane@pickup.example",
                username: "Jane",
                link: "https://id.example/confirm?code=SAMPLE",
                revoke_link: "https://id.example/revoke?code=SAMPLE",
                locale,
                time_zone,
                expires_at: expires,
            })
        }
        Some(onboarding_email_worker::templates::Kind::Welcome) => {
            mailer.render_welcome("Jane", chrono::Utc::now(), locale, time_zone)
        }
        None => bail!("unknown template `{kind}`; use invitation or welcome"),
    };
    rendered.context("the template does not render")
}

fn locale_arg(locale: Option<String>) -> Result<Option<String>> {
    locale
        .map(|l| Locale::parse(&l).map(|l| l.as_str().to_owned()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--locale: {}", e.0))
}

async fn email(settings: &Settings, command: EmailCommand) -> Result<()> {
    let mailer = onboarding_email_worker::Mailer::new(
        &settings.output_adapter.email,
        &settings.organisation.name,
        1,
    )?;
    match command {
        EmailCommand::Preview {
            template,
            locale,
            time_zone,
            html_out,
        } => {
            let time_zone = time_zone
                .as_deref()
                .map(onboarding_domain::value::TimeZone::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--time-zone: {}", e.0))?;
            let time_zone = time_zone.as_ref().map(|t| t.as_str());
            let r = sample(
                &mailer,
                &template,
                locale_arg(locale)?.as_deref(),
                time_zone,
            )?;
            println!(
                "template: {} version {} locale {}",
                r.template.id, r.template.version, r.template.locale
            );
            println!("subject: {}\n\n{}", r.subject, r.text);
            match html_out {
                Some(path) => {
                    std::fs::write(&path, &r.html)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!("(HTML part written to {})", path.display());
                }
                None => println!("--- HTML ---\n{}", r.html),
            }
            Ok(())
        }
        EmailCommand::TestSend { address, locale } => {
            let r = sample(&mailer, "invitation", locale_arg(locale)?.as_deref(), None)?;
            let accepted = mailer
                .send(&address, &r)
                .await
                .map_err(|e| anyhow::anyhow!("the SMTP server did not accept the mail: {e}"))?;
            println!(
                "accepted: {} (Message-ID {})",
                accepted.smtp_response, accepted.message_id
            );
            Ok(())
        }
    }
}
