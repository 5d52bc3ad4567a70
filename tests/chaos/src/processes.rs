//! The engine's processes: one `onboard <role>` each, all on one configuration file, each with
//! its own port (`ONBOARD__GATEWAY__BIND` or `ONBOARD__OBSERVABILITY__METRICS_BIND`) and, for
//! the email workers, its own EHLO name (`ONBOARD__OUTPUT_ADAPTER__EMAIL__HELLO_NAME`), so that
//! the gate tells which worker sent each mail. Like systemd's `Restart=always`, the supervisor
//! starts again a process that was killed (after the fault's pause) or that exited on its own
//! (counted and reported). Each process has a pidfile in the format of deploy/lib/services.sh
//! (`pid start-time`), so that tests/chaos/run stops whatever is left if this program dies.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::Args;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Role {
    Gateway,
    Relay,
    EmailWorker,
    Intake,
    Scheduler,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Gateway,
        Role::Relay,
        Role::EmailWorker,
        Role::Intake,
        Role::Scheduler,
    ];

    /// The `onboard` subcommand, also the role's name in the report.
    pub fn command(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Relay => "relay",
            Role::EmailWorker => "email-worker",
            Role::Intake => "intake",
            Role::Scheduler => "scheduler",
        }
    }
}

/// How many processes of each role run.
pub struct Topology {
    pub counts: Vec<(Role, usize)>,
}

impl Topology {
    /// The fault campaign: one process per role.
    pub fn campaign() -> Self {
        Self {
            counts: Role::ALL.iter().map(|r| (*r, 1)).collect(),
        }
    }

    /// Issue 14's scale-out on one machine.
    pub fn scale_out() -> Self {
        Self {
            counts: vec![
                (Role::Gateway, 2),
                (Role::Relay, 2),
                (Role::EmailWorker, 3),
                (Role::Intake, 2),
                (Role::Scheduler, 1),
            ],
        }
    }

    pub fn describe(&self) -> String {
        self.counts
            .iter()
            .map(|(r, n)| format!("{n} {}", r.command()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn json(&self) -> Value {
        Value::Object(
            self.counts
                .iter()
                .map(|(r, n)| (r.command().to_owned(), json!(n)))
                .collect(),
        )
    }
}

struct Proc {
    role: Role,
    /// e.g. `email-worker-2`.
    name: String,
    port: u16,
    child: Option<Child>,
    pidfile: PathBuf,
    log: PathBuf,
    /// Killed by a fault: start it again once this instant has passed (`None`: never).
    restart_at: Option<Instant>,
    /// Killed by a fault, so its exit is expected.
    killed: bool,
    /// Paused with SIGSTOP.
    stopped: bool,
    /// Killed for good (scale-out).
    gone: bool,
    starts: u32,
}

pub struct Supervisor {
    onboard: PathBuf,
    config: PathBuf,
    procs: Mutex<Vec<Proc>>,
    /// Exits nobody asked for: (process, exit status, seconds into the run).
    exits: Mutex<Vec<(String, String)>>,
}

/// What a signal did.
pub struct Signalled {
    pub name: String,
    pub pid: u32,
}

impl Supervisor {
    pub fn new(args: &Args, topology: &Topology) -> anyhow::Result<Self> {
        let dir = args.run_dir.join("engine");
        std::fs::create_dir_all(&dir)?;
        let mut port = args.first_port;
        let mut procs = Vec::new();
        for (role, n) in &topology.counts {
            for i in 1..=*n {
                let name = format!("{}-{i}", role.command());
                procs.push(Proc {
                    role: *role,
                    port,
                    child: None,
                    pidfile: dir.join(format!("{name}.pid")),
                    log: dir.join(format!("{name}.log")),
                    name,
                    restart_at: None,
                    killed: false,
                    stopped: false,
                    gone: false,
                    starts: 0,
                });
                port += 1;
            }
        }
        Ok(Self {
            onboard: args.onboard.clone(),
            config: args.config.clone(),
            procs: Mutex::new(procs),
            exits: Mutex::default(),
        })
    }

    fn spawn(&self, p: &mut Proc) -> anyhow::Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(&p.log)?;
        use std::io::Write as _;
        writeln!(
            &log,
            "=== {} start: onboard {}",
            chrono::Utc::now().to_rfc3339(),
            p.role.command()
        )?;
        let mut command = Command::new(&self.onboard);
        command
            .arg("--config")
            .arg(&self.config)
            .arg(p.role.command())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let address = format!("127.0.0.1:{}", p.port);
        match p.role {
            Role::Gateway => command.env("ONBOARD__GATEWAY__BIND", &address),
            _ => command.env("ONBOARD__OBSERVABILITY__METRICS_BIND", &address),
        };
        if p.role == Role::EmailWorker {
            command.env(
                "ONBOARD__OUTPUT_ADAPTER__EMAIL__HELLO_NAME",
                format!("{}.chaos.example", p.name),
            );
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", p.name))?;
        let pid = child.id().context("the process has no pid")?;
        std::fs::write(&p.pidfile, format!("{pid} {}\n", start_time(pid)))?;
        p.child = Some(child);
        p.starts += 1;
        p.killed = false;
        p.stopped = false;
        p.restart_at = None;
        Ok(())
    }

    /// Starts every process and waits until each answers `/readyz`.
    pub async fn start_all(&self) -> anyhow::Result<()> {
        {
            let mut procs = self.procs.lock().expect("processes");
            for p in procs.iter_mut() {
                self.spawn(p)?;
            }
        }
        let http = reqwest::Client::new();
        let ports: Vec<(String, u16, PathBuf)> = self
            .procs
            .lock()
            .expect("processes")
            .iter()
            .map(|p| (p.name.clone(), p.port, p.log.clone()))
            .collect();
        for (name, port, log) in ports {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let ready = http
                    .get(format!("http://127.0.0.1:{port}/readyz"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{name} did not become ready within 120 s; its log: {}",
                        log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        Ok(())
    }

    /// Every half second: collects exits and starts again what is due.
    pub fn watch(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut procs = self.procs.lock().expect("processes");
                for p in procs.iter_mut() {
                    if let Some(child) = p.child.as_mut() {
                        if let Ok(Some(status)) = child.try_wait() {
                            p.child = None;
                            if !p.killed && !p.gone {
                                println!(
                                    "    {} exited on its own ({status}); starting it again in 1 s",
                                    p.name
                                );
                                self.exits
                                    .lock()
                                    .expect("exits")
                                    .push((p.name.clone(), status.to_string()));
                                p.restart_at = Some(Instant::now() + Duration::from_secs(1));
                            }
                        }
                    }
                    if p.child.is_none()
                        && !p.gone
                        && p.restart_at.is_some_and(|t| Instant::now() >= t)
                    {
                        if let Err(e) = self.spawn(p) {
                            println!("    cannot start {} again: {e:#}", p.name);
                        }
                    }
                }
            }
        })
    }

    /// The gateways' base URLs.
    pub fn gateways(&self) -> Vec<String> {
        self.procs
            .lock()
            .expect("processes")
            .iter()
            .filter(|p| p.role == Role::Gateway)
            .map(|p| format!("http://127.0.0.1:{}", p.port))
            .collect()
    }

    /// The relays' metrics addresses, by name.
    pub fn relays(&self) -> Vec<(String, u16)> {
        self.procs
            .lock()
            .expect("processes")
            .iter()
            .filter(|p| p.role == Role::Relay)
            .map(|p| (p.name.clone(), p.port))
            .collect()
    }

    /// Names of the processes of `role` that run now (not paused, not killed).
    pub fn running(&self, role: Role) -> Vec<String> {
        self.procs
            .lock()
            .expect("processes")
            .iter()
            .filter(|p| p.role == role && p.child.is_some() && !p.stopped && !p.killed)
            .map(|p| p.name.clone())
            .collect()
    }

    /// Every process's name and how often it was started.
    pub fn starts(&self) -> BTreeMap<String, u32> {
        self.procs
            .lock()
            .expect("processes")
            .iter()
            .map(|p| (p.name.clone(), p.starts))
            .collect()
    }

    /// SIGKILL; started again after `down` (never, with `None`).
    pub fn kill(&self, name: &str, down: Option<Duration>) -> Option<Signalled> {
        let mut procs = self.procs.lock().expect("processes");
        let p = procs.iter_mut().find(|p| p.name == name)?;
        let pid = p.child.as_ref()?.id()?;
        signal(pid, "KILL");
        p.killed = true;
        p.stopped = false;
        match down {
            Some(d) => p.restart_at = Some(Instant::now() + d),
            None => p.gone = true,
        }
        Some(Signalled {
            name: p.name.clone(),
            pid,
        })
    }

    /// SIGSTOP (`pause`) or SIGCONT.
    pub fn pause(&self, name: &str, pause: bool) -> Option<Signalled> {
        let mut procs = self.procs.lock().expect("processes");
        let p = procs.iter_mut().find(|p| p.name == name)?;
        let pid = p.child.as_ref()?.id()?;
        signal(pid, if pause { "STOP" } else { "CONT" });
        p.stopped = pause;
        Some(Signalled {
            name: p.name.clone(),
            pid,
        })
    }

    /// Undoes every fault: continues the paused, starts the killed (but those gone for good).
    pub fn restore(&self) {
        let mut procs = self.procs.lock().expect("processes");
        for p in procs.iter_mut() {
            if p.stopped {
                if let Some(pid) = p.child.as_ref().and_then(Child::id) {
                    signal(pid, "CONT");
                }
                p.stopped = false;
            }
            if p.child.is_none() && !p.gone {
                p.restart_at = Some(Instant::now());
            }
        }
    }

    pub fn unexpected_exits(&self) -> Value {
        json!(self
            .exits
            .lock()
            .expect("exits")
            .iter()
            .map(|(name, status)| json!({"process": name, "status": status}))
            .collect::<Vec<_>>())
    }

    /// SIGCONT and SIGTERM to all, then SIGKILL to those still there after 10 s.
    pub async fn stop_all(&self) {
        let mut children: Vec<(String, Child, PathBuf)> = Vec::new();
        {
            let mut procs = self.procs.lock().expect("processes");
            for p in procs.iter_mut() {
                p.gone = true;
                if let Some(child) = p.child.take() {
                    if let Some(pid) = child.id() {
                        signal(pid, "CONT");
                        signal(pid, "TERM");
                    }
                    children.push((p.name.clone(), child, p.pidfile.clone()));
                }
            }
        }
        for (name, mut child, pidfile) in children {
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    println!("    {name} did not stop within 10 s of SIGTERM; killed");
                    let _ = child.kill().await;
                }
            }
            let _ = std::fs::remove_file(pidfile);
        }
    }

    /// The relay whose published count grows over two seconds (the one holding the lock).
    pub async fn busiest_relay(&self) -> Option<String> {
        let http = reqwest::Client::new();
        let relays = self.relays();
        let mut before = Vec::new();
        for (_, port) in &relays {
            before.push(read_counter(&http, port, "onboard_relay_published_total").await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut best: Option<(f64, String)> = None;
        for ((name, port), b) in relays.iter().zip(before) {
            let after = read_counter(&http, port, "onboard_relay_published_total").await;
            if let (Some(a), Some(b)) = (after, b) {
                if a - b > best.as_ref().map_or(0.0, |(g, _)| *g) {
                    best = Some((a - b, name.clone()));
                }
            }
        }
        best.map(|(_, name)| name)
    }

    /// Samples every relay's `onboard_relay_published_total` once a second.
    pub fn sample_relays(self: Arc<Self>) -> RelaySampler {
        let samples: Arc<Mutex<Vec<RelaySample>>> = Arc::default();
        let relays = self.relays();
        let task = {
            let samples = samples.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let mut published = BTreeMap::new();
                    for (name, port) in &relays {
                        let counted =
                            read_counter(&http, port, "onboard_relay_published_total").await;
                        published.insert(name.clone(), counted);
                    }
                    samples.lock().expect("samples").push(RelaySample {
                        at: started.elapsed().as_secs_f64(),
                        published,
                    });
                }
            })
        };
        RelaySampler { samples, task }
    }
}

/// Each relay's published count at one instant (`None`: it did not answer).
#[derive(Clone)]
pub struct RelaySample {
    pub at: f64,
    pub published: BTreeMap<String, Option<f64>>,
}

pub struct RelaySampler {
    samples: Arc<Mutex<Vec<RelaySample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RelaySampler {
    pub fn stop(self) -> RelaySamples {
        self.task.abort();
        RelaySamples(self.samples.lock().expect("samples").clone())
    }
}

pub struct RelaySamples(pub Vec<RelaySample>);

impl RelaySamples {
    /// Per relay: events it published (summed over its lives: a counter that went down means a
    /// restart), and the seconds in which it published.
    pub fn per_relay(&self) -> BTreeMap<String, (f64, Vec<f64>)> {
        let mut out: BTreeMap<String, (f64, Vec<f64>)> = BTreeMap::new();
        let mut last: BTreeMap<String, f64> = BTreeMap::new();
        for s in &self.0 {
            for (name, value) in &s.published {
                let entry = out.entry(name.clone()).or_default();
                let Some(v) = value else { continue };
                let before = last.get(name).copied().unwrap_or(0.0);
                let grew = if *v >= before { v - before } else { *v };
                if grew > 0.0 {
                    entry.0 += grew;
                    entry.1.push(s.at);
                }
                last.insert(name.clone(), *v);
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        Value::Object(
            self.per_relay()
                .into_iter()
                .map(|(name, (n, secs))| {
                    (
                        name,
                        json!({"published": n, "seconds_publishing": secs.len()}),
                    )
                })
                .collect(),
        )
    }
}

/// A counter's value (summed over its labels) from a process's `/metrics`.
async fn read_counter(http: &reqwest::Client, port: &u16, name: &str) -> Option<f64> {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_millis(800))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut sum = 0.0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(name) {
            if rest.starts_with(' ') || rest.starts_with('{') {
                sum += rest
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    Some(sum)
}

fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), as
/// deploy/lib/services.sh records it.
fn start_time(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(19).map(str::to_owned))
        })
        .unwrap_or_default()
}
