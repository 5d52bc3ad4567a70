//! `onboard`: the engine's single binary. Reads configuration, sets up telemetry, and runs one
//! component (or all of them, with `serve`); the components live in the library crates.
//!
//! This file only parses the command line and dispatches; each subcommand group has a file of
//! its own (as the crates.io admin binary does).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use onboarding_config::Settings;

mod audit;
mod config;
mod email;
mod invite;
mod logging;
mod migrate;
#[cfg(feature = "otlp")]
mod otlp;
mod serve;
mod user;

use serve::Components;

/// jemalloc, which returns what a burst of work allocated to the system once it is freed
/// (docs/adr/0048). Its unprefixed `malloc` (the workspace's tikv-jemallocator feature) also
/// serves the C code linked in: librdkafka's allocations go back to the system as well.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        default_value = "text",
        value_parser = one_of::<logging::LogFormat>("log format")
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every component in one process: gateway, relay, email worker, scheduler, intake, and the provisioner when [user_store] is configured (the default on one machine).
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
    /// Run only the provisioner, which writes each activated account into the [user_store] directory.
    Provisioner,
    /// Create or upgrade the database schema and create the Kafka topic. Safe to run again.
    Migrate(migrate::Args),
    /// Invite a user: records the invitation and lets the engine mail the link. With --file,
    /// invite every row of a CSV (`username,email[,domain,locale,time_zone]`) or JSON-lines file.
    Invite(invite::Args),
    /// Inspect users.
    User {
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// Mail templates: preview them, or send a test through the configured SMTP server.
    Email {
        #[command(subcommand)]
        command: email::EmailCommand,
    },
    /// The configuration: check it as every role does at start, without connecting anywhere.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Print one user's events, oldest first, as JSON lines (password hashes redacted).
    Events(user::EventsArgs),
    /// For auditors: verify the log, rebuild projections from it, read an account's history.
    /// Exit status: 0 all good, 1 the command could not run, 3 tampering or differences found,
    /// 4 the head given with --expect is not in the log.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
}

/// A value parser for a closed set: a `ValueEnum`, written as clap spells its variants, and a
/// refusal that names the value and lists the ones accepted ("unknown template `x`; use
/// invitation or welcome").
fn one_of<E: ValueEnum + Clone + Send + Sync + 'static>(
    what: &'static str,
) -> impl Fn(&str) -> Result<E, String> + Clone + Send + Sync + 'static {
    move |value: &str| {
        E::from_str(value, false).map_err(|_| {
            let names: Vec<String> = E::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|v| v.get_name().to_owned())
                .collect();
            let accepted = match names.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            };
            format!("unknown {what} `{value}`; use {accepted}")
        })
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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

async fn run(cli: Cli) -> Result<()> {
    let settings = Arc::new(Settings::load(&cli.config)?);
    let telemetry = logging::init(
        cli.log_format,
        &settings.observability,
        cli.command.service_name(),
    )?;
    let result = dispatch(cli, settings).await;
    telemetry.shutdown();
    result
}

impl Command {
    /// The name the process's spans carry (`service.name`): the role it runs.
    fn service_name(&self) -> &'static str {
        match self {
            Command::Serve => "onboard",
            Command::Gateway => "onboard-gateway",
            Command::Relay => "onboard-relay",
            Command::EmailWorker => "onboard-email-worker",
            Command::Scheduler => "onboard-scheduler",
            Command::Intake => "onboard-intake",
            Command::Provisioner => "onboard-provisioner",
            _ => "onboard-cli",
        }
    }
}

async fn dispatch(cli: Cli, settings: Arc<Settings>) -> Result<()> {
    // A misspelt or invalid librdkafka property is named at start, without its value.
    onboarding_kafka::check_config(&settings.kafka).map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Serve => serve::run(settings, Components::ALL).await,
        Command::Gateway => serve::run(settings, Components::GATEWAY).await,
        Command::Relay => serve::run(settings, Components::RELAY).await,
        Command::EmailWorker => serve::run(settings, Components::WORKER).await,
        Command::Scheduler => serve::run(settings, Components::SCHEDULER).await,
        Command::Intake => serve::run(settings, Components::INTAKE).await,
        Command::Provisioner => serve::run(settings, Components::PROVISIONER).await,
        Command::Migrate(args) => migrate::run(&settings, args).await,
        Command::Invite(args) => invite::run(&settings, args).await,
        Command::User { command } => user::run(&settings, command).await,
        Command::Events(args) => user::events(&settings, args).await,
        Command::Email { command } => email::run(&settings, command).await,
        Command::Config { command } => config::run(&settings, &cli.config, command),
        Command::Audit { command } => audit::run(&settings, command).await,
    }
}
