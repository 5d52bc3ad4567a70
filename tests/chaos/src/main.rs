//! The fault campaign behind `tests/chaos/run` (docs/operations.md, "The fault campaign"):
//! the engine's roles run as separate release processes (`processes.rs`) on the PostgreSQL,
//! tansu and SMTP gate the script started; load of every kind runs (`load.rs`) while faults are
//! injected at random (`faults.rs`); then the faults end, the engine is left to finish its work,
//! and the checker (`check.rs`) reads the event log, the topic and the mail the gate kept, and
//! reports every invariant with its counts (`report.rs`).
//!
//! With `--scale-out`, 2 gateways, 2 relays, 3 email workers and 2 intakes share one stack under
//! the same load; half way through one of each is killed for good, and the checker adds that
//! every worker sent and that the survivors took the work over.
//!
//! It exits 1 when an invariant is broken, 2 when the campaign could not run. It never decides
//! by time: the only wait with a limit is for the engine to make progress after the faults.

mod check;
mod faults;
mod gate;
mod load;
mod processes;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::{rngs::StdRng, SeedableRng};
use serde_json::json;

use crate::processes::{Supervisor, Topology};

#[derive(Parser, Clone)]
#[command(about = "The onboarding engine's fault campaign (run by tests/chaos/run)")]
pub struct Args {
    /// The release `onboard` binary.
    #[arg(long)]
    pub onboard: PathBuf,
    /// The engine's configuration (every process reads it; ports and names come from the
    /// environment).
    #[arg(long)]
    pub config: PathBuf,
    /// Where the processes' logs and pidfiles go.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// The script that crashes and restarts PostgreSQL and the broker (tests/chaos/service).
    #[arg(long)]
    pub service: PathBuf,
    /// Minutes of load and faults.
    #[arg(long)]
    pub minutes: f64,
    /// 2 gateways, 2 relays, 3 email workers and 2 intakes; one of each killed half way.
    #[arg(long)]
    pub scale_out: bool,
    /// The first of the ports the engine's processes listen on (one each).
    #[arg(long)]
    pub first_port: u16,
    /// The SMTP gate's output (its DELIVERED lines are the users' mailboxes).
    #[arg(long)]
    pub gate_log: PathBuf,
    /// The file the gate reads its mode from (accept, refuse, slow SECONDS).
    #[arg(long)]
    pub gate_mode_file: PathBuf,
    #[arg(long)]
    pub database_url: String,
    #[arg(long)]
    pub brokers: String,
    /// The public event topic.
    #[arg(long)]
    pub topic: String,
    #[arg(long)]
    pub requests_topic: String,
    #[arg(long)]
    pub outcomes_topic: String,
    #[arg(long)]
    pub dead_letter_topic: String,
    /// Partitions of the intake's topics (as `[intake] partitions`).
    #[arg(long)]
    pub intake_partitions: i32,
    #[arg(long)]
    pub email_group: String,
    #[arg(long)]
    pub intake_group: String,
    /// An admin token the engine accepts.
    #[arg(long)]
    pub admin_token: String,
    /// Where the results go (JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// Restart the email workers and intakes around each broker restart (killed while the broker
    /// is down, started once it is back), as operators had to before the consumers started their
    /// partitions over by themselves (docs/adr/0037). By default they live through it.
    #[arg(long)]
    pub restart_consumers_on_broker_loss: bool,
    /// The random seed (printed, so that a run's fault sequence can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: the campaign could not run: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Runs the campaign; `Ok(false)` when an invariant was broken.
async fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("--- seed {seed} (--seed {seed} repeats this run's choices)");
    let topology = if args.scale_out {
        Topology::scale_out()
    } else {
        Topology::campaign()
    };
    let supervisor = Arc::new(Supervisor::new(&args, &topology)?);
    let result = campaign(&args, seed, &topology, supervisor.clone()).await;
    println!("--- stopping the engine's processes");
    supervisor.stop_all().await;
    result
}

async fn campaign(
    args: &Args,
    seed: u64,
    topology: &Topology,
    supervisor: Arc<Supervisor>,
) -> anyhow::Result<bool> {
    gate::set_mode(&args.gate_mode_file, "accept")?;
    println!("--- starting the engine: {}", topology.describe());
    supervisor.start_all().await?;
    let watcher = supervisor.clone().watch();
    let relays = supervisor.clone().sample_relays();

    let started = Instant::now();
    let load = load::Load::start(args, supervisor.gateways(), started).await?;
    let run_for = Duration::from_secs_f64(args.minutes * 60.0);
    let mut rng = StdRng::seed_from_u64(seed);
    let injected = if args.scale_out {
        faults::scale_out(supervisor.clone(), run_for, started).await
    } else {
        println!(
            "--- load and faults for {:.1} minutes",
            run_for.as_secs_f64() / 60.0
        );
        let campaign = faults::Campaign::new(args, supervisor.clone(), started);
        campaign.run(&mut rng, run_for).await
    };
    println!("--- load stops; every fault is undone");
    let ledger = load.stop().await;
    faults::restore(args, &supervisor).await?;

    println!(
        "--- waiting for the engine to finish its work (it fails only if nothing moves for {} s)",
        check::STALL_SECONDS
    );
    let checker = check::Checker::connect(args).await?;
    let settled = checker.settle().await?;
    watcher.abort();
    let relay_samples = relays.stop();

    println!("--- checking the history");
    let mut invariants = checker
        .check(&ledger, &injected, &supervisor, settled)
        .await
        .context("the checker could not read the history")?;
    if args.scale_out {
        invariants.extend(checker.check_scale_out(&injected, &relay_samples, &supervisor));
    }
    let held = invariants.iter().all(|i| i.held);
    let exits = supervisor.unexpected_exits();
    let results = json!({
        "mode": if args.scale_out { "scale-out" } else { "campaign" },
        "minutes": args.minutes,
        "seed": seed,
        "topology": topology.json(),
        "faults": report::fault_table(&injected),
        "fault_log": injected.iter().map(|f| f.json()).collect::<Vec<_>>(),
        "unexpected_exits": exits,
        "load": ledger.summary(),
        "relays": relay_samples.json(),
        "invariants": invariants.iter().map(|i| i.json()).collect::<Vec<_>>(),
        "held": held,
    });
    report::print(&results);
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("results written to {}", args.out.display());
    Ok(held)
}
