//! The benchmark's load generators and measurements (`tests/bench/run` drives them; see
//! docs/performance.md). Each `limits` subcommand measures one of the machine's limits and
//! writes it as JSON; `engine` drives a running `onboard serve`, then prints the table of every
//! figure beside its limit and writes all results as JSON.
//!
//! It fails (exit 1) only when the engine lost work: an invitation refused or never mailed, a
//! password not set. It never fails because of a time.

mod backlog;
mod delivery;
mod engine;
mod limits;
mod memory;
mod report;
mod sink;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmark load generators for the onboarding engine (run by tests/bench/run)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// argon2id hashes a second on every core, at the engine's cost (m = 19 MiB, t = 2, p = 1).
    Argon2 {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Mails a second the SMTP server accepts from one sequential client.
    Smtp {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// smtp-sink's counter log, to check the mails were counted.
        #[arg(long)]
        sink_log: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Mails a second through the engine's SMTP client (`Mailer`) and, for comparison, through
    /// lettre's pooled transport as the worker used it before ADR 0022; one sender, then 32.
    Mailer {
        #[arg(long)]
        host: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Records a second the broker accepts from rdkafka (acks=all, idempotent).
    Kafka {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// What sealing personal data costs (the store's own code, CPU only), without a
    /// key-encryption key and with one.
    Seal {
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// The mail path alone: accepts invitations while no email worker runs and waits until
    /// the relay published them all (they wait in Kafka).
    BacklogInvite(backlog::InviteArgs),
    /// The mail path alone: measures the email worker(s) just started mailing that backlog.
    BacklogMail(backlog::MailArgs),
    /// Drives the engine, prints the table and writes every result.
    Engine(engine::Args),
    /// Chosen phases alone against a running engine, to profile it while one runs.
    Phases(engine::PhaseArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Argon2 { seconds, out } => limits::argon2(seconds, &out),
        Command::Seal { seconds, out } => limits::seal(seconds, &out),
        Command::Smtp {
            addr,
            seconds,
            sink_log,
            out,
        } => limits::smtp(&addr, seconds, &sink_log, &out),
        Command::Mailer {
            host,
            port,
            seconds,
            out,
        } => limits::mailer(&host, port, seconds, &out).await,
        Command::Kafka {
            brokers,
            topic,
            seconds,
            out,
        } => limits::kafka(&brokers, &topic, seconds, &out).await,
        Command::BacklogInvite(args) => backlog::invite(args).await,
        Command::BacklogMail(args) => backlog::mail(args).await,
        Command::Engine(args) => engine::run(args).await,
        Command::Phases(args) => engine::phases(args).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
