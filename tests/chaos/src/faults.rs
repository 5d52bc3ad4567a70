//! The faults, injected one after another at random from a shuffled deck of every kind (so a
//! short run still meets each kind): SIGKILL and SIGSTOP/SIGCONT of each engine role, an
//! immediate stop of PostgreSQL (`pg_ctl -m immediate`, a crash without a checkpoint), a broker
//! restart (tansu's memory:// storage forgets every topic), and the SMTP server refusing, then
//! answering slowly, then coming back. Each fault is undone before the next one starts.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, Rng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use crate::gate;
use crate::processes::{Role, Supervisor};
use crate::Args;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Kill(Role),
    Pause(Role),
    PostgresCrash,
    BrokerRestart,
    SmtpTrouble,
}

impl Kind {
    pub fn label(self) -> String {
        match self {
            Kind::Kill(r) => format!("SIGKILL {}", r.command()),
            Kind::Pause(r) => format!("SIGSTOP/SIGCONT {}", r.command()),
            Kind::PostgresCrash => "PostgreSQL immediate stop".to_owned(),
            Kind::BrokerRestart => "broker restart (topics lost)".to_owned(),
            Kind::SmtpTrouble => "SMTP refusing, then slow".to_owned(),
        }
    }
}

/// One fault as injected.
#[derive(Clone)]
pub struct Injected {
    pub kind: Kind,
    /// Seconds into the run.
    pub at: f64,
    /// What it hit (a process, or the service).
    pub target: String,
    /// What happened, e.g. how long the service was down.
    pub detail: String,
}

impl Injected {
    pub fn json(&self) -> Value {
        json!({"at_seconds": (self.at * 10.0).round() / 10.0, "fault": self.kind.label(),
               "target": self.target, "detail": self.detail})
    }
}

pub struct Campaign {
    supervisor: Arc<Supervisor>,
    service: std::path::PathBuf,
    gate_mode_file: std::path::PathBuf,
    brokers: String,
    intake_topics: Vec<String>,
    intake_partitions: i32,
    started: Instant,
    /// Leave the email workers and intakes running through a broker loss.
    restart_consumers_on_broker_loss: bool,
}

impl Campaign {
    pub fn new(args: &Args, supervisor: Arc<Supervisor>, started: Instant) -> Self {
        Self {
            supervisor,
            service: args.service.clone(),
            gate_mode_file: args.gate_mode_file.clone(),
            brokers: args.brokers.clone(),
            intake_topics: vec![
                args.requests_topic.clone(),
                args.outcomes_topic.clone(),
                args.dead_letter_topic.clone(),
            ],
            intake_partitions: args.intake_partitions,
            started,
            restart_consumers_on_broker_loss: args.restart_consumers_on_broker_loss,
        }
    }

    fn deck(rng: &mut StdRng) -> Vec<Kind> {
        let mut deck: Vec<Kind> = Role::ALL
            .iter()
            .flat_map(|r| [Kind::Kill(*r), Kind::Pause(*r)])
            .chain([Kind::PostgresCrash, Kind::BrokerRestart, Kind::SmtpTrouble])
            .collect();
        deck.shuffle(rng);
        deck
    }

    /// Injects faults until `run_for` has passed since the start; returns what it did.
    pub async fn run(&self, rng: &mut StdRng, run_for: Duration) -> Vec<Injected> {
        let mut done = Vec::new();
        let mut deck = Vec::new();
        while self.started.elapsed() < run_for {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..5000))).await;
            if self.started.elapsed() >= run_for {
                break;
            }
            if deck.is_empty() {
                deck = Self::deck(rng);
            }
            let kind = deck.pop().expect("a full deck");
            match self.inject(rng, kind).await {
                Ok(Some(f)) => {
                    println!(
                        "    {:>6.1} s  {:<34} {} {}",
                        f.at,
                        kind.label(),
                        f.target,
                        f.detail
                    );
                    done.push(f);
                }
                Ok(None) => {}
                Err(e) => println!(
                    "    a fault could not be injected ({}): {e:#}",
                    kind.label()
                ),
            }
        }
        done
    }

    async fn inject(&self, rng: &mut StdRng, kind: Kind) -> anyhow::Result<Option<Injected>> {
        let at = self.started.elapsed().as_secs_f64();
        let injected = |target: String, detail: String| {
            Some(Injected {
                kind,
                at,
                target,
                detail,
            })
        };
        Ok(match kind {
            Kind::Kill(role) => {
                let Some(name) = self.supervisor.running(role).choose(rng).cloned() else {
                    return Ok(None);
                };
                let down = Duration::from_millis(rng.gen_range(500..4000));
                let Some(s) = self.supervisor.kill(&name, Some(down)) else {
                    return Ok(None);
                };
                injected(
                    s.name,
                    format!(
                        "pid {}, started again after {:.1} s",
                        s.pid,
                        down.as_secs_f64()
                    ),
                )
            }
            Kind::Pause(role) => {
                let Some(name) = self.supervisor.running(role).choose(rng).cloned() else {
                    return Ok(None);
                };
                let Some(s) = self.supervisor.pause(&name, true) else {
                    return Ok(None);
                };
                let paused = Duration::from_millis(rng.gen_range(2000..8000));
                tokio::time::sleep(paused).await;
                self.supervisor.pause(&name, false);
                injected(
                    s.name,
                    format!("pid {}, paused {:.1} s", s.pid, paused.as_secs_f64()),
                )
            }
            Kind::PostgresCrash => {
                service(&self.service, "pg-crash").await?;
                let down = Duration::from_millis(rng.gen_range(2000..6000));
                tokio::time::sleep(down).await;
                service(&self.service, "pg-start").await?;
                injected(
                    "postgres".to_owned(),
                    format!("down {:.1} s", down.as_secs_f64()),
                )
            }
            Kind::BrokerRestart => {
                service(&self.service, "broker-stop").await?;
                let down = Duration::from_millis(rng.gen_range(1000..4000));
                // The consumers live through it and read the new topic in the groups of its
                // generation by themselves (docs/adr/0037, 0038); `--restart-consumers-on-broker-loss` restarts them instead:
                // killed while it is down, started once it is back.
                let mut restarted = Vec::new();
                if self.restart_consumers_on_broker_loss {
                    for role in [Role::EmailWorker, Role::Intake] {
                        for name in self.supervisor.running(role) {
                            if let Some(s) = self
                                .supervisor
                                .kill(&name, Some(down + Duration::from_secs(2)))
                            {
                                restarted.push(s.name);
                            }
                        }
                    }
                }
                tokio::time::sleep(down).await;
                service(&self.service, "broker-start").await?;
                self.recreate_intake_topics().await?;
                injected(
                    "tansu".to_owned(),
                    format!(
                        "down {:.1} s, every topic lost; {}",
                        down.as_secs_f64(),
                        if restarted.is_empty() {
                            "the consumers kept running".to_owned()
                        } else {
                            format!("{} restarted meanwhile", restarted.join(", "))
                        }
                    ),
                )
            }
            Kind::SmtpTrouble => {
                let refusing = Duration::from_millis(rng.gen_range(5000..15000));
                // Slower than the worker's 10 s timeout now and then: the gate keeps the mail
                // though the worker gave up on the answer.
                let slow = if rng.gen_bool(0.3) { 12.0 } else { 3.0 };
                let slowly = Duration::from_millis(rng.gen_range(5000..15000));
                gate::set_mode(&self.gate_mode_file, "refuse")?;
                tokio::time::sleep(refusing).await;
                gate::set_mode(&self.gate_mode_file, &format!("slow {slow}"))?;
                tokio::time::sleep(slowly).await;
                gate::set_mode(&self.gate_mode_file, "accept")?;
                injected(
                    "smtp gate".to_owned(),
                    format!(
                        "refused {:.1} s, then {slow} s a mail for {:.1} s",
                        refusing.as_secs_f64(),
                        slowly.as_secs_f64()
                    ),
                )
            }
        })
    }

    /// The intake's topics belong to the operator and upstream (`onboard migrate` made them):
    /// after the broker lost them, they make them again, as this does. The relay recreates the
    /// event topics itself (ADR 0025).
    async fn recreate_intake_topics(&self) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .context("a Kafka admin client")?;
        let topics: Vec<NewTopic> = self
            .intake_topics
            .iter()
            .map(|t| NewTopic::new(t, self.intake_partitions, TopicReplication::Fixed(1)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let results = admin.create_topics(&topics, &AdminOptions::new()).await;
            match results {
                Ok(results) => {
                    let failed: Vec<String> = results
                        .into_iter()
                        .filter_map(|r| match r {
                            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                                let _ = t;
                                None
                            }
                            Err((t, e)) => Some(format!("{t}: {e}")),
                            Ok(_) => None,
                        })
                        .collect();
                    if failed.is_empty() {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        bail!("cannot create the intake's topics: {}", failed.join("; "));
                    }
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("cannot create the intake's topics: {e}")
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Runs tests/chaos/service ACTION (it sources deploy/lib/services.sh).
async fn service(script: &std::path::Path, action: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(script)
        .arg(action)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} {action}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {action} failed: {}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Issue 14's scale-out: half way through, one gateway, the relay that publishes, one email
/// worker and one intake are killed (SIGKILL) and stay down; the others carry on.
pub async fn scale_out(
    supervisor: Arc<Supervisor>,
    run_for: Duration,
    started: Instant,
) -> Vec<Injected> {
    println!(
        "--- load for {:.1} minutes; one of each killed for good half way",
        run_for.as_secs_f64() / 60.0
    );
    tokio::time::sleep(run_for / 2).await;
    let mut done = Vec::new();
    let leader = supervisor.busiest_relay().await;
    for role in [Role::Gateway, Role::Relay, Role::EmailWorker, Role::Intake] {
        let name = match (role, &leader) {
            (Role::Relay, Some(leader)) => leader.clone(),
            _ => match supervisor.running(role).first() {
                Some(n) => n.clone(),
                None => continue,
            },
        };
        if let Some(s) = supervisor.kill(&name, None) {
            let f = Injected {
                kind: Kind::Kill(role),
                at: started.elapsed().as_secs_f64(),
                target: s.name,
                detail: format!(
                    "pid {}, not started again{}",
                    s.pid,
                    if role == Role::Relay {
                        " (the relay that was publishing)"
                    } else {
                        ""
                    }
                ),
            };
            println!(
                "    {:>6.1} s  {:<34} {} {}",
                f.at,
                f.kind.label(),
                f.target,
                f.detail
            );
            done.push(f);
        }
    }
    let rest = run_for.saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    done
}

/// Undoes whatever is still in effect: the gate accepts, PostgreSQL and the broker run, every
/// process runs (but those killed for good).
pub async fn restore(args: &Args, supervisor: &Supervisor) -> anyhow::Result<()> {
    gate::set_mode(&args.gate_mode_file, "accept")?;
    service(&args.service, "pg-start").await?;
    service(&args.service, "broker-start").await?;
    supervisor.restore();
    Ok(())
}
