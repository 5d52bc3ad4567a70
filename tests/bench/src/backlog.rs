//! The mail path alone, from a backlog: tests/bench/run starts `onboard gateway` and
//! `onboard relay` (no email worker) on a database and topic of their own, `invite` accepts the
//! invitations over the API and waits until the relay published them all, so that they wait in
//! Kafka; the script then starts `onboard email-worker` and `mail` measures how fast it mails
//! that backlog, with what it cost: CPU seconds of the worker and the relay, PostgreSQL
//! transactions, all per mail.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

#[derive(clap::Args)]
pub struct InviteArgs {
    /// The gateway, e.g. http://127.0.0.1:14080.
    #[arg(long)]
    base_url: String,
    #[arg(long)]
    admin_token: String,
    /// The backlog's database.
    #[arg(long)]
    database_url: String,
    /// Invitations to accept.
    #[arg(long)]
    invitations: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Processes whose CPU time is counted while the invitations are accepted and published, as
    /// NAME=PID (the gateway, the relay, the services; `postgres` counts its backends too).
    #[arg(long = "process")]
    processes: Vec<String>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct MailArgs {
    /// The backlog's database.
    #[arg(long)]
    database_url: String,
    /// Invitations waiting to be mailed.
    #[arg(long)]
    invitations: usize,
    /// Processes whose CPU time is counted, as NAME=PID (the email worker, the relay, the
    /// services; `postgres` counts its backends too).
    #[arg(long = "process")]
    processes: Vec<String>,
    /// How many email worker processes mail the backlog.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// smtp-sink's counter log: the mails are followed there while they go out, so that the
    /// benchmark puts no load on the database it measures.
    #[arg(long)]
    sink_log: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

/// The processes whose CPU a phase counts, and their CPU time when it started.
struct Cpu {
    processes: Vec<(String, u32)>,
    before: Vec<f64>,
}

impl Cpu {
    /// Parses `NAME=PID` arguments and reads each process's CPU time so far.
    fn start(args: &[String]) -> anyhow::Result<Self> {
        let processes = args
            .iter()
            .map(|p| {
                let (name, pid) = p.split_once('=').context("--process takes NAME=PID")?;
                Ok((
                    name.to_owned(),
                    pid.parse::<u32>().context("--process takes NAME=PID")?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let before = processes
            .iter()
            .map(|(name, pid)| cpu_seconds(*pid, name == "postgres"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { processes, before })
    }

    /// Each process's CPU seconds since `start`.
    fn spent(&self) -> anyhow::Result<Vec<(String, f64)>> {
        self.processes
            .iter()
            .zip(&self.before)
            .map(|((name, pid), before)| {
                Ok((
                    name.clone(),
                    cpu_seconds(*pid, name == "postgres")? - before,
                ))
            })
            .collect()
    }
}

/// The committed and rolled-back transactions of the connection's database so far.
async fn transactions(db: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(db)
    .await?)
}

/// `seconds` per item in microseconds, by process, as JSON.
fn per_item_us(cpu: &[(String, f64)], items: usize) -> serde_json::Map<String, serde_json::Value> {
    cpu.iter()
        .map(|(name, s)| (name.clone(), json!(s / items as f64 * 1e6)))
        .collect()
}

async fn database(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .context("connecting to the backlog's database")
}

/// Accepts `invitations` over `POST /api/v1/users` from many clients, then waits until the
/// relay published every event (the outbox is empty).
pub async fn invite(args: InviteArgs) -> anyhow::Result<()> {
    let db = database(&args.database_url).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(120))
        .build()?;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let url = format!("{}/api/v1/users", args.base_url);
    let cpu = Cpu::start(&args.processes)?;
    let xacts_before = transactions(&db).await?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| {
            let (http, url, token) = (http.clone(), url.clone(), args.admin_token.clone());
            let (next, failed, tag, n) = (next.clone(), failed.clone(), tag.clone(), args.invitations);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let r = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"username": format!("q{i}x{tag}"), "email": format!("q{i}.{tag}@pickup.example")}))
                        .send()
                        .await?;
                    if r.status() != 201 {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("an invitation was refused: {status} {body}");
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let accepted = args.invitations as f64 / started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    ensure!(
        failed == 0,
        "{failed} of {} invitations were refused",
        args.invitations
    );
    println!("    accepted at {accepted:.0}/s; waiting until the relay published them all");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&db)
            .await?;
        if waiting == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the relay left {waiting} outbox rows unpublished for 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let published = started.elapsed().as_secs_f64();
    let spent = cpu.spent()?;
    let xacts = transactions(&db).await? - xacts_before;
    let mailed: i64 = mailed_count(&db).await?;
    ensure!(
        mailed == 0,
        "{mailed} invitations were mailed with no email worker running"
    );
    let n = args.invitations;
    println!(
        "    {n} invitations wait in Kafka, none mailed; accepting and publishing them, per invitation: {:.1} PostgreSQL transactions{}",
        xacts as f64 / n as f64,
        spent
            .iter()
            .map(|(name, s)| format!(", {:.0} µs CPU in {name}", s / n as f64 * 1e6))
            .collect::<String>()
    );
    let result = json!({
        "invitations": n,
        "accepted_per_second": accepted,
        "seconds_to_published": published,
        "transactions_per_invitation": xacts as f64 / n as f64,
        "cpu_microseconds_per_invitation": per_item_us(&spent, n),
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}

async fn mailed_count(db: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'InvitationMailSent'")
            .fetch_one(db)
            .await?,
    )
}

/// The fields of /proc/PID/stat after the command name (which is in parentheses and may hold
/// spaces): the state first, then the parent's pid, …
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Ticks of the kernel's USER_HZ (100 on Linux) in seconds.
fn ticks(fields: &[String], at: usize) -> f64 {
    fields
        .get(at)
        .and_then(|f| f.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 100.0
}

/// A process's CPU time so far (user and system: fields 14 and 15 of the line, 12 and 13 after
/// the name and state); with `children`, also its children's, live (a postmaster's backends)
/// and ended (fields 16 and 17).
pub fn cpu_seconds(pid: u32, children: bool) -> anyhow::Result<f64> {
    let own = stat_fields(pid).with_context(|| format!("process {pid} is gone"))?;
    let mut seconds = ticks(&own, 11) + ticks(&own, 12);
    if children {
        seconds += ticks(&own, 13) + ticks(&own, 14);
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(fields) = stat_fields(child) else {
                continue;
            };
            if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
                seconds += ticks(&fields, 11) + ticks(&fields, 12);
            }
        }
    }
    Ok(seconds)
}

/// Waits until every waiting invitation was mailed, from the email worker(s) just started;
/// the rate is taken from the `InvitationMailSent` events' times in the log, from the first to
/// the last.
pub async fn mail(args: MailArgs) -> anyhow::Result<()> {
    let db = database(&args.database_url).await?;
    let cpu = Cpu::start(&args.processes)?;
    let xacts_before = transactions(&db).await?;
    let started = Instant::now();
    let n = args.invitations as i64;
    // While the mails go out, smtp-sink's counter (a file) says how far they are: counting the
    // log's InvitationMailSent events instead, five times a second, scanned the whole log each
    // time and added PostgreSQL CPU to the figures measured here. The log is counted once the
    // server accepted them all, or when the counter stops moving (mails the worker sent before
    // the counter was first read are not in it), until every mail is recorded.
    let sink = crate::sink::Sink::new(&args.sink_log);
    let sunk_before = sink.accepted()?;
    let (mut last, mut moved) = (0, Instant::now());
    let (mut last_sunk, mut sunk_moved) = (0, Instant::now());
    loop {
        let sunk = i64::try_from(sink.accepted()?.saturating_sub(sunk_before))?;
        if sunk != last_sunk {
            (last_sunk, sunk_moved) = (sunk, Instant::now());
        }
        let mailed = if sunk >= n || sunk_moved.elapsed() >= Duration::from_secs(1) {
            mailed_count(&db).await?
        } else {
            sunk.min(n - 1)
        };
        if mailed >= n {
            break;
        }
        if mailed != last {
            (last, moved) = (mailed, Instant::now());
        }
        ensure!(
            moved.elapsed() < Duration::from_secs(120),
            "no invitation was mailed for two minutes ({mailed} of {n})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let xacts = transactions(&db).await? - xacts_before;
    let cpu = cpu.spent()?;
    let times: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT recorded_at FROM events WHERE event_type = 'InvitationMailSent' ORDER BY recorded_at",
    )
    .fetch_all(&db)
    .await?;
    ensure!(
        times.len() as i64 == n,
        "{} invitation mails were recorded for {n} invitations",
        times.len()
    );
    let (first, last) = (times[0], times[times.len() - 1]);
    let window = (last - first).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let rate = if window > 0.0 {
        (times.len() - 1) as f64 / window
    } else {
        0.0
    };
    let per_mail = |x: f64| x / n as f64;
    println!(
        "    {rate:.0} mails/s over {window:.0} s ({n} in {elapsed:.0} s from the worker's start); per mail: {:.1} PostgreSQL transactions{}",
        per_mail(xacts as f64),
        cpu.iter()
            .map(|(name, s)| format!(", {:.0} µs CPU in {name}", per_mail(*s) * 1e6))
            .collect::<String>()
    );
    let result = json!({
        "invitations": n,
        "workers": args.workers,
        "mails_per_second": rate,
        "window_seconds": window,
        "seconds_from_start": elapsed,
        "transactions_per_mail": per_mail(xacts as f64),
        "cpu_microseconds_per_mail": per_item_us(&cpu, n as usize),
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}
