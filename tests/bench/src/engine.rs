//! The engine's figures, measured against a running `onboard serve` (release build) that
//! tests/bench/run started with PostgreSQL, tansu and smtp-sink:
//! 1. invitations over `POST /api/v1/users` from many concurrent clients, each a new user;
//! 2. the same through one bulk file, and through the Kafka intake;
//! 3. meanwhile, the mails: the sustained rate is taken from the `InvitationMailSent` events in
//!    the log (each appended right after the SMTP server accepted the mail) while the backlog
//!    lasts, from the first until 98 % of those invitations were mailed; smtp-sink's count is
//!    sampled five times a second beside it (kept in the JSON) and checks the total;
//! 4. the time from invitation to mail at half the lower of the HTTP and mail rates;
//! 5. `GET /confirm` page views from many clients, and password submissions;
//! 6. every invitation mailed (from PostgreSQL's log and smtp-sink's count), every password
//!    set; the only checks that fail the run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use onboarding_domain::code::{CodeBinding, CodeId, CodeKeyring};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::memory::{Process, Sampler};
use crate::report;
use crate::sink::Sink;

#[derive(clap::Args)]
pub struct Args {
    /// The gateway, e.g. http://127.0.0.1:14080.
    #[arg(long)]
    base_url: String,
    /// An admin token the engine accepts.
    #[arg(long)]
    admin_token: String,
    /// The engine's database.
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    brokers: String,
    /// The public event topic.
    #[arg(long)]
    topic: String,
    #[arg(long)]
    requests_topic: String,
    #[arg(long)]
    outcomes_topic: String,
    /// smtp-sink's counter log.
    #[arg(long)]
    sink_log: PathBuf,
    /// The engine's code key `k1` (base64), to mint the links its mails carry.
    #[arg(long)]
    code_key: String,
    /// Invitations in all.
    #[arg(long, default_value_t = 100_000)]
    invitations: usize,
    /// Processes whose memory is sampled, as NAME=PID (`postgres` counts its backends too).
    #[arg(long = "process")]
    processes: Vec<String>,
    /// Where the limit measurements are (pgbench.json, argon2.json, smtp.json, kafka.json).
    #[arg(long)]
    limits_dir: PathBuf,
    /// Where the results go.
    #[arg(long)]
    out: PathBuf,
    /// A short run (tests/run): shorter timed phases.
    #[arg(long)]
    quick: bool,
    /// The `onboard` binary and its configuration, for the auditor's replay of the log.
    #[arg(long)]
    onboard: PathBuf,
    #[arg(long)]
    onboard_config: PathBuf,
}

/// `onboarding-bench phases`: chosen phases of [`run`] alone, against an engine that is already
/// running (a profiling aid: `perf record -p` the engine while one phase runs). Prints each
/// figure; no table, no checks beyond each phase's own.
#[derive(clap::Args)]
pub struct PhaseArgs {
    #[arg(long)]
    base_url: String,
    #[arg(long)]
    admin_token: String,
    #[arg(long)]
    database_url: String,
    /// The engine's code key `k1` (base64).
    #[arg(long)]
    code_key: String,
    /// smtp-sink's counter log (with --invite, to wait until every invitation was mailed).
    #[arg(long)]
    sink_log: PathBuf,
    /// Invitations over `POST /api/v1/users` (64 clients) first, then waits for their mails.
    #[arg(long, default_value_t = 0)]
    invite: usize,
    /// `GET /confirm` page views for this many seconds (64 clients).
    #[arg(long, default_value_t = 0.0)]
    views_seconds: f64,
    /// Password submissions (form and post, 8 clients), on links not used before.
    #[arg(long, default_value_t = 0)]
    passwords: usize,
    /// `onboard audit replay --from postgres` beside a raw SELECT, with this binary and
    /// `--onboard-config`.
    #[arg(long)]
    onboard: Option<PathBuf>,
    #[arg(long)]
    onboard_config: Option<PathBuf>,
    /// Invitations at `--latency-rate` a second (open loop), timed from invitation to mail, after
    /// `--invite`.
    #[arg(long, default_value_t = 0)]
    latency: usize,
    #[arg(long, default_value_t = 100.0)]
    latency_rate: f64,
    /// Each latency invitation's times (CSV: user id, the request's start in microseconds since
    /// the epoch, then milliseconds from it to the answer, to `UserInvited`'s and to
    /// `InvitationMailSent`'s recorded time).
    #[arg(long)]
    latency_out: Option<PathBuf>,
}

pub async fn phases(p: PhaseArgs) -> anyhow::Result<()> {
    let args = Args {
        base_url: p.base_url,
        admin_token: p.admin_token,
        database_url: p.database_url,
        brokers: String::new(),
        topic: String::new(),
        requests_topic: String::new(),
        outcomes_topic: String::new(),
        sink_log: p.sink_log,
        code_key: p.code_key,
        invitations: p.invite,
        processes: Vec::new(),
        limits_dir: PathBuf::new(),
        out: PathBuf::new(),
        quick: false,
        onboard: p.onboard.clone().unwrap_or_default(),
        onboard_config: p.onboard_config.clone().unwrap_or_default(),
    };
    let db = PgPoolOptions::new()
        .max_connections(4)
        .connect(&args.database_url)
        .await
        .context("connecting to the engine's database")?;
    let bench = Bench {
        sink: Sink::new(&args.sink_log),
        args,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(120))
            .build()?,
        db,
        mails: Arc::default(),
        started: Instant::now(),
    };
    if p.invite > 0 {
        let before = bench.sink.accepted()?;
        let rate = bench.invite_over_http(p.invite, 64).await?;
        println!("invitations over HTTP: {rate:.0}/s");
        bench.wait_for_mails(before + p.invite as u64).await?;
        println!("all {} mailed", p.invite);
    }
    if p.latency > 0 {
        let latency = bench.latency(p.latency, p.latency_rate).await?;
        latency.print(p.latency_rate);
        if let Some(out) = &p.latency_out {
            latency.write_csv(out)?;
        }
    }
    // Links of accounts whose password is not set yet, oldest first.
    let unused: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'CodeIssued'")
            .fetch_one(&bench.db)
            .await?;
    if p.views_seconds > 0.0 || p.passwords > 0 {
        let links = bench.links(unused).await?;
        let set: std::collections::HashSet<Uuid> = sqlx::query_scalar::<_, String>(
            "SELECT aggregate_id FROM events WHERE event_type = 'PasswordSet'",
        )
        .fetch_all(&bench.db)
        .await?
        .into_iter()
        .filter_map(|id| id.parse().ok())
        .collect();
        let links: Vec<Link> = links
            .into_iter()
            .filter(|l| !set.contains(&l.user_id))
            .collect();
        if p.views_seconds > 0.0 {
            let n = links.len().min(1_000);
            let views = bench
                .confirm_views(&links[..n], p.views_seconds, 64)
                .await?;
            println!("GET /confirm (64 clients): {views:.0}/s");
        }
        if p.passwords > 0 {
            ensure!(
                links.len() > 1_000 + p.passwords,
                "only {} unused links: invite more",
                links.len()
            );
            let rate = bench
                .submit_passwords(&links[links.len() - p.passwords..], 8)
                .await?;
            println!("password submissions (8 clients): {rate:.1}/s");
        }
    }
    if p.onboard.is_some() {
        let replay = bench.replay().await?;
        println!(
            "replay {:.0} events/s ({} events in {:.2} s), raw SELECT {:.0} events/s ({:.2} s): {:.0} %",
            replay.replay_per_second,
            replay.events,
            replay.replay_seconds,
            replay.select_per_second,
            replay.select_seconds,
            100.0 * replay.replay_per_second / replay.select_per_second
        );
    }
    Ok(())
}

struct Bench {
    args: Args,
    http: reqwest::Client,
    db: PgPool,
    sink: Sink,
    /// Mails smtp-sink accepted, sampled: (seconds since the start, count).
    mails: Arc<Mutex<Vec<(f64, u64)>>>,
    started: Instant,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let processes = args
        .processes
        .iter()
        .map(|p| {
            let (name, pid) = p.split_once('=').context("--process takes NAME=PID")?;
            Ok(Process {
                name: name.to_owned(),
                pid: pid.parse().context("--process takes NAME=PID")?,
                with_children: name == "postgres",
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let memory = Sampler::start(processes);
    let limits = report::Limits::read(&args.limits_dir)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(120))
        .build()?;
    let db = PgPoolOptions::new()
        .max_connections(4)
        .connect(&args.database_url)
        .await
        .context("connecting to the engine's database")?;
    let bench = Bench {
        sink: Sink::new(&args.sink_log),
        args,
        http,
        db,
        mails: Arc::default(),
        started: Instant::now(),
    };
    let watch = bench.watch_mails();
    let mails_at_start = bench.sink.accepted()?;
    // Every path the run measures, once and at its own concurrency, before memory is compared:
    // a path's first use allocates its caches, its connections and glibc's arenas for its
    // threads, which is not growth across the run.
    let warm_up = bench.warm_up().await?;
    let warmed_up = bench.now();
    let mut heap = vec![("after_warm_up", bench.heap().await)];
    let n = bench.args.invitations;
    let (n_http, n_bulk) = (n * 3 / 10, n * 3 / 10);
    let n_kafka = n.saturating_sub(n_http + n_bulk) * 3 / 4;
    let n_latency_max = n - n_http - n_bulk - n_kafka;

    let mails_before = bench.sink.accepted()?;
    let xacts_before = bench.xacts().await?;
    let records_before = bench.relay_published().await;
    let invitations_started = Utc::now();

    let mut phases: Vec<(&str, f64)> = vec![("warm_up", 0.0), ("http", bench.now())];
    println!("--- engine: {n_http} invitations over POST /api/v1/users, 64 clients");
    let over_http = bench.invite_over_http(n_http, 64).await?;
    println!("    {:.0}/s", over_http);
    phases.push(("bulk", bench.now()));
    println!("--- engine: {n_bulk} invitations in one bulk file");
    let bulk = bench.invite_in_bulk(n_bulk).await?;
    println!("    {:.0}/s", bulk);
    phases.push(("kafka_intake", bench.now()));
    println!("--- engine: {n_kafka} invitations through the Kafka intake");
    let intake = bench.invite_through_kafka(n_kafka).await?;
    println!("    {:.0}/s", intake);

    let backlog = (n_http + n_bulk + n_kafka) as u64;
    phases.push(("mail_backlog", bench.now()));
    heap.push(("after_invitations", bench.heap().await));
    println!("--- engine: waiting until all {backlog} invitations were mailed");
    bench.wait_for_mails(mails_before + backlog).await?;
    let mailed = bench
        .sustained_mail_rate(backlog, invitations_started)
        .await?;
    println!(
        "    {:.0} mails/s over {:.0} s",
        mailed.rate, mailed.window_seconds
    );
    // Where the cores went meanwhile: the engine's processes, the load generator, idle.
    let sustained_cpu = memory.cpu_between(mailed.first, mailed.last);
    if let Some(w) = &sustained_cpu {
        println!(
            "    meanwhile the machine's {:.1} cores were {:.2} busy: {}",
            w.all_cores,
            w.busy_cores,
            w.cores
                .iter()
                .map(|(name, c)| format!("{name} {c:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Each invitation's own transactions and records: everything the engine did meanwhile.
    let xacts = bench.xacts().await? - xacts_before;
    let records = bench.relay_published().await - records_before;
    // The relay's Kafka batches so far (librdkafka's statistics, reported every 5 s; an engine
    // that does not count them reports none).
    let (batches, batched) = bench.relay_batches().await;
    if batches > 0.0 {
        println!(
            "    the relay sent {batched:.0} records in {batches:.0} Kafka batches ({:.1} records a batch)",
            batched / batches
        );
    }

    let latency_rate = (0.5 * mailed.rate.min(over_http)).max(1.0);
    let latency_seconds = if bench.args.quick { 5.0 } else { 30.0 };
    let n_latency = ((latency_rate * latency_seconds) as usize).clamp(1, n_latency_max.max(1));
    println!(
        "--- engine: {n_latency} invitations at {latency_rate:.0}/s (half the lower of the HTTP and mail rates)"
    );
    phases.push(("latency", bench.now()));
    let latency = bench.latency(n_latency, latency_rate).await?;
    latency.print(latency_rate);

    let tokens = bench.links(2_000).await?;
    let views_seconds = if bench.args.quick { 3.0 } else { 10.0 };
    println!("--- engine: GET /confirm for {views_seconds} s, 64 clients");
    phases.push(("confirm_views", bench.now()));
    let views = bench
        .confirm_views(&tokens[..tokens.len() / 2], views_seconds, 64)
        .await?;
    println!("    {views:.0}/s");
    // About 15 s of hashing at the machine's argon2 rate (20 in a quick run).
    let argon2_rate = limits.json["argon2"]["hashes_per_second"]
        .as_f64()
        .unwrap_or(10.0);
    let n_passwords = if bench.args.quick {
        20
    } else {
        ((argon2_rate * 15.0) as usize).clamp(20, 800)
    }
    .min(tokens.len() / 2);
    println!("--- engine: {n_passwords} password submissions, 8 clients");
    phases.push(("passwords", bench.now()));
    let passwords = bench
        .submit_passwords(&tokens[tokens.len() / 2..][..n_passwords], 8)
        .await?;
    println!("    {passwords:.1}/s");

    phases.push(("end", bench.now()));
    // The password phase can be shorter than the sampler's second: a sample after it, always.
    memory.sample_now();
    heap.push(("end", bench.heap().await));
    let invited = warm_up + backlog + n_latency as u64;
    println!("--- engine: checking that every invitation was mailed");
    let checked = bench
        .check_all_mailed(
            invited,
            mails_at_start,
            &tokens[tokens.len() / 2..][..n_passwords],
        )
        .await?;
    println!("--- auditor: onboard audit replay, beside a raw SELECT of the same events");
    let replay = bench.replay().await?;
    println!(
        "    replay {:.0} events/s ({} events in {:.1} s), raw SELECT {:.0} events/s",
        replay.replay_per_second, replay.events, replay.replay_seconds, replay.select_per_second
    );
    watch.abort();
    let series = memory.series();
    let cpu_series = memory.cpu_series();
    let memory = memory.summary(warmed_up);
    let mails = bench.mails.lock().expect("mail samples").clone();
    // The broker alone at the latency phase's rate, after the memory figures: a record's way
    // from producer to consumer on a fresh topic, and on one holding as many batches a partition
    // as the event topic did (the relay's batches over its partitions).
    let delivery = if bench.args.brokers.is_empty() {
        None
    } else {
        let partitions = bench.event_partitions()?;
        let (batches, _) = bench.relay_batches().await;
        let fill = (batches / f64::from(partitions.max(1))).round() as u64;
        let seconds = if bench.args.quick { 3.0 } else { 10.0 };
        println!("--- limit: tansu alone, a record from producer to consumer at {latency_rate:.0}/s, on a fresh topic and on one of {fill} batches a partition");
        let tag = bench.unique();
        let fresh = crate::delivery::probe(
            &bench.args.brokers,
            &format!("bench.delivery.fresh.{tag}"),
            partitions,
            0,
            latency_rate,
            seconds,
        )
        .await?;
        let grown = crate::delivery::probe(
            &bench.args.brokers,
            &format!("bench.delivery.grown.{tag}"),
            partitions,
            fill,
            latency_rate,
            seconds,
        )
        .await?;
        println!(
            "    fresh: p50 {:.1} ms, p99 {:.1} ms; {fill} batches a partition: p50 {:.1} ms, p99 {:.1} ms",
            fresh.p50_ms, fresh.p99_ms, grown.p50_ms, grown.p99_ms
        );
        Some(json!({"fresh": fresh, "grown": grown}))
    };

    // The engine's own settings, as `onboard serve` read them (the defaults when unset).
    let settings = onboarding_config::Settings::load(&bench.args.onboard_config)
        .context("reading the engine's configuration")?;
    let results = json!({
        "invitations": invited,
        "machine": {"cores": std::thread::available_parallelism().map_or(0, |n| n.get())},
        "limits": limits.json,
        "engine": {
            "invitations_per_second_http": over_http,
            "invitations_per_second_bulk": bulk,
            "invitations_per_second_kafka_intake": intake,
            "bulk_concurrency": settings.bulk.concurrency.get(),
            "intake_concurrency": settings.intake.concurrency.get(),
            "mails_per_second_sustained": mailed.rate,
            "mail_from_backlog": limits.mail_from_backlog,
            "invitations_to_backlog": limits.invitations_to_backlog,
            "mail_window_seconds": mailed.window_seconds,
            "mail_window_cpu_cores": sustained_cpu,
            "latency": {"rate_per_second": latency_rate, "invitations": n_latency,
                        "p50_ms": latency.p50_ms, "p99_ms": latency.p99_ms, "max_ms": latency.max_ms,
                        "recorded_p50_ms": latency.recorded_p50_ms, "recorded_p99_ms": latency.recorded_p99_ms,
                        "answered_p50_ms": latency.answered_p50_ms, "answered_p99_ms": latency.answered_p99_ms,
                        "after_answer_p50_ms": latency.after_p50_ms, "after_answer_p99_ms": latency.after_p99_ms,
                        "accepted_to_recorded_p50_ms": latency.append_p50_ms, "accepted_to_recorded_p99_ms": latency.append_p99_ms,
                        "answer_to_record_p50_ms": latency.published.as_ref().map(|p| p.relay_p50_ms),
                        "answer_to_record_p99_ms": latency.published.as_ref().map(|p| p.relay_p99_ms),
                        "record_to_accepted_p50_ms": latency.published.as_ref().map(|p| p.delivered_p50_ms),
                        "record_to_accepted_p99_ms": latency.published.as_ref().map(|p| p.delivered_p99_ms)},
            "kafka_delivery": delivery,
            "confirm_views_per_second": views,
            "password_submissions_per_second": passwords,
            "transactions_per_invitation": xacts as f64 / backlog as f64,
            "event_records_per_invitation": records / backlog as f64,
            "relay_kafka_batches": batches,
            "relay_kafka_batch_records": batched,
            "audit_replay": {"events": replay.events, "replay_seconds": replay.replay_seconds,
                             "replay_events_per_second": replay.replay_per_second,
                             "select_seconds": replay.select_seconds,
                             "select_events_per_second": replay.select_per_second},
        },
        "checks": checked,
        "memory": memory,
        "engine_heap": heap.iter().map(|(at, h)| (at.to_string(), h.clone())).collect::<serde_json::Map<_, _>>(),
        "phases_started_at_seconds": phases.iter().map(|(p, t)| json!([p, t])).collect::<Vec<_>>(),
        "series": {"memory_kib": series, "cpu_seconds": cpu_series, "smtp_sink_accepted": mails},
    });
    report::print(&results);
    std::fs::write(&bench.args.out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", bench.args.out.display()))?;
    println!("results written to {}", bench.args.out.display());
    Ok(())
}

struct Mailed {
    rate: f64,
    window_seconds: f64,
    /// The window: the first mail recorded and the last counted.
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

struct Replay {
    events: u64,
    replay_seconds: f64,
    replay_per_second: f64,
    select_seconds: f64,
    select_per_second: f64,
}

struct Latency {
    /// From the request's start to the SMTP server accepting the mail (`InvitationMailSent`'s
    /// `sent_at`, which the worker takes as the server answers), the figure.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// From the request's start to `InvitationMailSent` recorded (its transaction's start,
    /// `recorded_at`): the acceptance as the engine knows it.
    recorded_p50_ms: f64,
    recorded_p99_ms: f64,
    /// From the request's start to its answer (the `UserInvited` append committed).
    answered_p50_ms: f64,
    answered_p99_ms: f64,
    /// From the answer to the SMTP server's acceptance (relay, broker, worker, SMTP).
    after_p50_ms: f64,
    after_p99_ms: f64,
    /// From the acceptance to `InvitationMailSent` recorded (the appender's queue).
    append_p50_ms: f64,
    append_p99_ms: f64,
    /// The way from the answer to the acceptance split at the relay's `code_issued` record (its
    /// Kafka timestamp: the relay read the outbox row and handed librdkafka the record). `None`
    /// without the topic.
    published: Option<Published>,
    each: Vec<LatencyOne>,
}

/// [`Latency`]'s way from the answer to the SMTP server's acceptance, split at the relay's
/// record: up to it, and after it (the broker, the worker's fetch, the account's read, SMTP).
struct Published {
    relay_p50_ms: f64,
    relay_p99_ms: f64,
    delivered_p50_ms: f64,
    delivered_p99_ms: f64,
}

/// One latency invitation, in milliseconds from its request's start.
struct LatencyOne {
    user_id: String,
    sent_at: DateTime<Utc>,
    answered_ms: f64,
    invited_ms: f64,
    /// The Kafka timestamp of its `code_issued` record (NaN when not read).
    published_ms: f64,
    /// The SMTP server's acceptance (`InvitationMailSent`'s `sent_at`).
    accepted_ms: f64,
    /// `InvitationMailSent` recorded.
    mailed_ms: f64,
}

impl Latency {
    fn print(&self, rate: f64) {
        println!(
            "    invitation to mail accepted by the SMTP server at {rate:.0}/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.p50_ms, self.p99_ms, self.max_ms
        );
        println!(
            "      of which request to answer: p50 {:.1} ms, p99 {:.1} ms; answer to mail accepted: p50 {:.1} ms, p99 {:.1} ms",
            self.answered_p50_ms, self.answered_p99_ms, self.after_p50_ms, self.after_p99_ms
        );
        if let Some(p) = &self.published {
            println!(
                "      answer to the relay's record: p50 {:.1} ms, p99 {:.1} ms; the record to the mail accepted: p50 {:.1} ms, p99 {:.1} ms",
                p.relay_p50_ms, p.relay_p99_ms, p.delivered_p50_ms, p.delivered_p99_ms
            );
        }
        println!(
            "      then the mail accepted to InvitationMailSent recorded: p50 {:.1} ms, p99 {:.1} ms (invitation to recorded: p50 {:.1} ms, p99 {:.1} ms)",
            self.append_p50_ms, self.append_p99_ms, self.recorded_p50_ms, self.recorded_p99_ms
        );
    }

    fn write_csv(&self, out: &std::path::Path) -> anyhow::Result<()> {
        let mut csv = String::from(
            "user_id,sent_at_us,answered_ms,invited_ms,published_ms,accepted_ms,mailed_ms\n",
        );
        for l in &self.each {
            csv += &format!(
                "{},{},{:.3},{:.3},{:.3},{:.3},{:.3}\n",
                l.user_id,
                l.sent_at.timestamp_micros(),
                l.answered_ms,
                l.invited_ms,
                l.published_ms,
                l.accepted_ms,
                l.mailed_ms
            );
        }
        std::fs::write(out, csv).with_context(|| format!("writing {}", out.display()))
    }
}

/// A user's link, minted as the worker mints it for the mail.
struct Link {
    user_id: Uuid,
    token: String,
}

impl Bench {
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.args.base_url)
    }

    /// The records the relay published so far (`onboard_relay_published_total` of the engine's
    /// `/metrics`). Not the topic's high watermarks: tansu reports the start of the last batch
    /// (plus one) as a partition's high watermark, and the relay's batches hold many records.
    async fn relay_published(&self) -> f64 {
        self.metric("onboard_relay_published_total").await
    }

    /// The sum of a metric's series in the engine's `/metrics`; 0 when it is not there.
    /// The engine's heap as jemalloc counts it (ADR 0048; its Rust code's and librdkafka's
    /// allocations): bytes allocated and bytes resident, in MiB; null from an engine that does
    /// not report them.
    async fn heap(&self) -> Value {
        let allocated = self.metric("onboard_memory_allocated_bytes").await;
        let resident = self.metric("onboard_memory_allocator_resident_bytes").await;
        if resident > 0.0 {
            json!({"allocated_mib": allocated / 1048576.0, "resident_mib": resident / 1048576.0})
        } else {
            Value::Null
        }
    }

    async fn metric(&self, name: &str) -> f64 {
        let Ok(response) = self.http.get(self.url("/metrics")).send().await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The relay's Kafka batches and the records in them, from the engine's `/metrics`
    /// (`onboard_relay_kafka_batches_total`, `onboard_relay_kafka_batch_records_total`); zeros
    /// when it does not report them.
    async fn relay_batches(&self) -> (f64, f64) {
        (
            self.metric("onboard_relay_kafka_batches_total").await,
            self.metric("onboard_relay_kafka_batch_records_total").await,
        )
    }

    fn admin(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.bearer_auth(&self.args.admin_token)
    }

    /// Samples smtp-sink's count five times a second.
    fn watch_mails(&self) -> tokio::task::JoinHandle<()> {
        let (mails, sink, started) = (
            self.mails.clone(),
            Sink::new(&self.args.sink_log),
            self.started,
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                if let Ok(n) = sink.accepted() {
                    mails
                        .lock()
                        .expect("mail samples")
                        .push((started.elapsed().as_secs_f64(), n));
                }
            }
        })
    }

    async fn xacts(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&self.db)
        .await?)
    }

    fn unique(&self) -> String {
        Uuid::new_v4().simple().to_string()[..10].to_owned()
    }

    /// `n` invitations from `clients` concurrent clients; invitations a second.
    async fn invite_over_http(&self, n: usize, clients: usize) -> anyhow::Result<f64> {
        let tag = self.unique();
        let next = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (http, url, token) = (
                    self.http.clone(),
                    self.url("/api/v1/users"),
                    self.args.admin_token.clone(),
                );
                let (next, failed, tag) = (next.clone(), failed.clone(), tag.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok::<_, anyhow::Error>(());
                        }
                        let r = http
                            .post(&url)
                            .bearer_auth(&token)
                            .json(&json!({"username": format!("h{i}x{tag}"), "email": format!("h{i}.{tag}@pickup.example")}))
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
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let failed = failed.load(Ordering::Relaxed);
        ensure!(
            failed == 0,
            "{failed} of {n} invitations over HTTP were refused"
        );
        Ok(rate)
    }

    /// One CSV file of `n` rows, from the upload until the job is done; rows a second.
    async fn invite_in_bulk(&self, n: usize) -> anyhow::Result<f64> {
        let tag = self.unique();
        let mut csv = String::from("username,email\n");
        for i in 0..n {
            csv.push_str(&format!("b{i}x{tag},b{i}.{tag}@pickup.example\n"));
        }
        let started = Instant::now();
        let r = self
            .admin(self.http.post(self.url("/api/v1/bulk-invites")))
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await?;
        let status = r.status();
        let accepted: Value = r.json().await?;
        ensure!(
            status == 202,
            "the bulk file was refused: {status} {accepted}"
        );
        let job = accepted["job_id"]
            .as_str()
            .context("the bulk answer has no job_id")?;
        loop {
            let j: Value = self
                .admin(
                    self.http
                        .get(self.url(&format!("/api/v1/bulk-invites/{job}"))),
                )
                .send()
                .await?
                .json()
                .await?;
            if j["status"] == "done" {
                ensure!(
                    j["totals"]["created"] == n,
                    "the bulk job did not create every row: {}",
                    j["totals"]
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    }

    /// `n` invitation requests on the intake's topic, until the last one's outcome arrived;
    /// invitations a second.
    async fn invite_through_kafka(&self, n: usize) -> anyhow::Result<f64> {
        let tag = self.unique();
        let outcomes: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.args.brokers)
            .set("group.id", format!("onboarding-bench-outcomes-{tag}"))
            .set("auto.offset.reset", "latest")
            .set("enable.auto.commit", "false")
            .create()?;
        outcomes.subscribe(&[&self.args.outcomes_topic])?;
        // Joined before the first request goes out, so no outcome is missed.
        wait_for_assignment(&outcomes).await?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.args.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        let source = format!("bench-{tag}");
        let started = Instant::now();
        let requests_topic = self.args.requests_topic.clone();
        let produce = async {
            use futures::StreamExt;
            let mut in_flight = futures::stream::FuturesUnordered::new();
            for i in 0..n {
                let payload = json!({
                    "specversion": "1.0",
                    "id": format!("{i}"),
                    "source": source,
                    "type": "com.pickup.hr.user.invitation.requested",
                    "datacontenttype": "application/json",
                    "data": {"username": format!("k{i}x{tag}"), "email": format!("k{i}.{tag}@pickup.example")},
                })
                .to_string();
                let key = format!("{source}/{i}");
                let producer = &producer;
                let topic = &requests_topic;
                in_flight.push(async move {
                    producer
                        .send(
                            FutureRecord::to(topic).key(&key).payload(&payload).headers(
                                OwnedHeaders::new().insert(Header {
                                    key: "content-type",
                                    value: Some("application/cloudevents+json"),
                                }),
                            ),
                            Duration::from_secs(60),
                        )
                        .await
                        .map_err(|(e, _)| e)
                });
                if in_flight.len() >= 1000 {
                    if let Some(r) = in_flight.next().await {
                        r.context("an invitation request was not acknowledged")?;
                    }
                }
            }
            while let Some(r) = in_flight.next().await {
                r.context("an invitation request was not acknowledged")?;
            }
            Ok::<_, anyhow::Error>(())
        };
        let count = async {
            let (mut accepted, mut other) = (0usize, 0usize);
            while accepted + other < n {
                let m = tokio::time::timeout(Duration::from_secs(120), outcomes.recv())
                    .await
                    .with_context(|| {
                        format!("no intake outcome for 120 s ({accepted} accepted of {n})")
                    })??;
                // The bench is the only producer of requests: every outcome is one of ours.
                let kind = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "ce_type"))
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .unwrap_or_default()
                    .to_owned();
                if kind.ends_with("accepted.v1") {
                    accepted += 1;
                } else {
                    other += 1;
                    if other == 1 {
                        eprintln!(
                            "an intake request was not accepted: {kind} {}",
                            String::from_utf8_lossy(m.payload().unwrap_or_default())
                        );
                    }
                }
            }
            Ok::<_, anyhow::Error>((accepted, other))
        };
        let (produced, counted) = tokio::join!(produce, count);
        produced?;
        let (accepted, other) = counted?;
        let rate = n as f64 / started.elapsed().as_secs_f64();
        ensure!(
            other == 0 && accepted == n,
            "{other} of {n} intake requests were not accepted"
        );
        Ok(rate)
    }

    /// Waits until smtp-sink counted `total` mails; fails when the count stands still for
    /// two minutes.
    async fn wait_for_mails(&self, total: u64) -> anyhow::Result<()> {
        let mut last = (self.sink.accepted()?, Instant::now());
        loop {
            let now = self.sink.accepted()?;
            if now >= total {
                return Ok(());
            }
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(120) {
                bail!("smtp-sink accepted no mail for two minutes: its count is {now}, {total} expected");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The mail rate from the first invitation mail recorded after `since` until 98 % of
    /// `backlog` were: the `InvitationMailSent` events' times in the log, to the microsecond.
    /// (The rate from smtp-sink's sampled counter came out as 0 mails/s over 0 s in every run
    /// of tests/run; the log's times do not depend on when a sample was taken.)
    async fn sustained_mail_rate(
        &self,
        backlog: u64,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Mailed> {
        let wanted = i64::try_from((backlog * 98).div_ceil(100).max(2))?;
        let times: Vec<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT recorded_at FROM events \
             WHERE event_type = 'InvitationMailSent' AND recorded_at >= $1 \
             ORDER BY recorded_at LIMIT $2",
        )
        .bind(since)
        .bind(wanted)
        .fetch_all(&self.db)
        .await?;
        ensure!(
            times.len() as i64 == wanted,
            "only {} invitation mails were recorded, {wanted} expected",
            times.len()
        );
        let (first, last) = (times[0], times[times.len() - 1]);
        let window_seconds = (last - first).num_microseconds().unwrap_or(0) as f64 / 1e6;
        Ok(Mailed {
            rate: if window_seconds > 0.0 {
                (times.len() - 1) as f64 / window_seconds
            } else {
                0.0
            },
            window_seconds,
            first,
            last,
        })
    }

    /// `onboard audit replay` (the release binary, as an auditor runs it: it reads every
    /// account's events, rebuilds the projections in a scratch schema and compares them with
    /// the live ones) beside the raw SELECT of the same events that the replay makes, read to
    /// the end by one client, at its fastest: as PostgreSQL plans it (a sequential scan and a
    /// sort, which may spill to disk), and read through the primary key's index in its order
    /// (the replay's own join reads the log that way), whichever is faster. Both after the run,
    /// with the engine idle.
    async fn replay(&self) -> anyhow::Result<Replay> {
        let mut select_seconds = f64::INFINITY;
        let mut selected = 0u64;
        for by_index in [false, true] {
            let started = Instant::now();
            let mut tx = self.db.begin().await?;
            if by_index {
                sqlx::query("SET LOCAL enable_sort = off")
                    .execute(&mut *tx)
                    .await?;
            }
            let mut rows = sqlx::query(
                "SELECT aggregate_id, sequence, event_type, event_version, payload::text AS payload, recorded_at \
                 FROM events WHERE aggregate_type = 'Onboarding' ORDER BY aggregate_id, sequence",
            )
            .fetch(&mut *tx);
            let (mut n, mut bytes) = (0u64, 0usize);
            while let Some(row) = rows.try_next().await? {
                n += 1;
                bytes += row.try_get::<&str, _>("payload")?.len();
            }
            drop(rows);
            tx.rollback().await?;
            ensure!(bytes > 0 || n == 0, "the events carry no payload");
            let seconds = started.elapsed().as_secs_f64();
            if seconds < select_seconds {
                (select_seconds, selected) = (seconds, n);
            }
        }

        let started = Instant::now();
        let out = tokio::process::Command::new(&self.args.onboard)
            .arg("--config")
            .arg(&self.args.onboard_config)
            .args(["audit", "replay", "--from", "postgres"])
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.args.onboard.display()))?;
        let replay_seconds = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "onboard audit replay failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let events: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("events replayed: "))
            .context("onboard audit replay printed no \"events replayed\"")?
            .trim()
            .parse()?;
        // The two counts may differ by the few events appended between them (welcome mails
        // after the last passwords); each rate is taken over its own count.
        Ok(Replay {
            events,
            replay_seconds,
            replay_per_second: events as f64 / replay_seconds,
            select_seconds,
            select_per_second: selected as f64 / select_seconds,
        })
    }

    /// `n` invitations sent at `rate` a second (open loop); from each request's start to its
    /// `InvitationMailSent` in the log (recorded right after the SMTP server accepted the
    /// mail), and to the request's answer on the way.
    async fn latency(&self, n: usize, rate: f64) -> anyhow::Result<Latency> {
        let tag = self.unique();
        let sunk_before = self.sink.accepted()?;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            tick.tick().await;
            let http = self.http.clone();
            let url = self.url("/api/v1/users");
            let token = self.args.admin_token.clone();
            let tag = tag.clone();
            tasks.push(tokio::spawn(async move {
                let sent_at = Utc::now();
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"username": format!("l{i}x{tag}"), "email": format!("l{i}.{tag}@pickup.example")}))
                    .send()
                    .await?;
                let status = r.status();
                let body: Value = r.json().await?;
                let answered_at = Utc::now();
                ensure!(status == 201, "an invitation was refused: {status} {body}");
                let id = body["id"].as_str().context("no id")?.to_owned();
                Ok::<_, anyhow::Error>((id, (sent_at, answered_at)))
            }));
        }
        let mut sent: BTreeMap<String, (DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
        for t in tasks {
            let (id, at) = t.await??;
            sent.insert(id, at);
        }
        let ids: Vec<String> = sent.keys().cloned().collect();
        // The mails' times come from the log, read once smtp-sink has accepted them all (its
        // counter, a file): a query of the log while the last mails go out would share the
        // cores with them. The query names the aggregate type, so that it probes the primary
        // key per user; without it, it scanned the whole log, once per poll, for minutes at
        // 10,000 users.
        self.wait_for_mails(sunk_before + n as u64).await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let rows = loop {
            let rows = sqlx::query(
                "SELECT m.aggregate_id, min(m.recorded_at) AS mailed, \
                 min((m.payload->'InvitationMailSent'->>'sent_at')::timestamptz) AS accepted, \
                 (SELECT min(i.recorded_at) FROM events i WHERE i.aggregate_type = 'Onboarding' \
                  AND i.aggregate_id = m.aggregate_id AND i.event_type = 'UserInvited') AS invited \
                 FROM events m WHERE m.aggregate_type = 'Onboarding' AND m.aggregate_id = ANY($1) \
                 AND m.event_type = 'InvitationMailSent' GROUP BY m.aggregate_id",
            )
            .bind(&ids)
            .fetch_all(&self.db)
            .await?;
            if rows.len() == ids.len() {
                break rows;
            }
            ensure!(
                Instant::now() < deadline,
                "only {} of {} latency invitations were mailed after 5 minutes",
                rows.len(),
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let ms = |from: DateTime<Utc>, to: DateTime<Utc>| {
            (to - from).num_microseconds().unwrap_or(0) as f64 / 1000.0
        };
        let first_sent = sent.values().map(|(at, _)| *at).min();
        let published = match first_sent {
            Some(since) if !self.args.brokers.is_empty() => self.code_records(&ids, since).await?,
            _ => BTreeMap::new(),
        };
        let each: Vec<LatencyOne> = rows
            .iter()
            .map(|r| {
                let id: String = r.get("aggregate_id");
                let (sent_at, answered_at) = sent[&id];
                let invited: Option<DateTime<Utc>> = r.get("invited");
                let mailed: DateTime<Utc> = r.get("mailed");
                let accepted: DateTime<Utc> = r.get("accepted");
                LatencyOne {
                    sent_at,
                    answered_ms: ms(sent_at, answered_at),
                    invited_ms: invited.map_or(f64::NAN, |at| ms(sent_at, at)),
                    published_ms: published.get(&id).map_or(f64::NAN, |at| ms(sent_at, *at)),
                    accepted_ms: ms(sent_at, accepted),
                    mailed_ms: ms(sent_at, mailed),
                    user_id: id,
                }
            })
            .collect();
        let quantiles = |f: fn(&LatencyOne) -> f64| {
            let mut v: Vec<f64> = each.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            let pick = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
            (pick(0.50), pick(0.99), pick(1.0))
        };
        let (p50_ms, p99_ms, max_ms) = quantiles(|l| l.accepted_ms);
        let (recorded_p50_ms, recorded_p99_ms, _) = quantiles(|l| l.mailed_ms);
        let (answered_p50_ms, answered_p99_ms, _) = quantiles(|l| l.answered_ms);
        let (after_p50_ms, after_p99_ms, _) = quantiles(|l| l.accepted_ms - l.answered_ms);
        let (append_p50_ms, append_p99_ms, _) = quantiles(|l| l.mailed_ms - l.accepted_ms);
        let published = (published.len() == each.len()).then(|| {
            let (relay_p50_ms, relay_p99_ms, _) = quantiles(|l| l.published_ms - l.answered_ms);
            let (delivered_p50_ms, delivered_p99_ms, _) =
                quantiles(|l| l.accepted_ms - l.published_ms);
            Published {
                relay_p50_ms,
                relay_p99_ms,
                delivered_p50_ms,
                delivered_p99_ms,
            }
        });
        Ok(Latency {
            p50_ms,
            p99_ms,
            max_ms,
            recorded_p50_ms,
            recorded_p99_ms,
            answered_p50_ms,
            answered_p99_ms,
            after_p50_ms,
            after_p99_ms,
            append_p50_ms,
            append_p99_ms,
            published,
            each,
        })
    }

    /// The event topic's partitions, from the broker's metadata.
    fn event_partitions(&self) -> anyhow::Result<i32> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.args.brokers)
            .create()?;
        let topic = self.args.topic.clone();
        let metadata = tokio::task::block_in_place(|| {
            consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))
        })?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        ensure!(partitions > 0, "the event topic {topic} has no partitions");
        Ok(i32::try_from(partitions)?)
    }

    /// The Kafka timestamp (the producer's create time: when the relay handed the record to
    /// librdkafka) of each user's `code_issued` record on the event topic, for the users `ids`,
    /// read from the offsets of `since` on. Users whose record is not found within 60 s are
    /// left out.
    async fn code_records(
        &self,
        ids: &[String],
        since: DateTime<Utc>,
    ) -> anyhow::Result<BTreeMap<String, DateTime<Utc>>> {
        use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.args.brokers)
            .set(
                "group.id",
                format!("onboarding-bench-latency-{}", self.unique()),
            )
            .set("enable.auto.commit", "false")
            .create()?;
        let topic = self.args.topic.clone();
        let since_ms = since.timestamp_millis() - 1_000;
        let offsets = tokio::task::block_in_place(|| {
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let partitions = metadata
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len());
            let mut at = TopicPartitionList::new();
            for p in 0..partitions {
                at.add_partition_offset(&topic, p as i32, Offset::Offset(since_ms))?;
            }
            consumer.offsets_for_times(at, Duration::from_secs(10))
        })?;
        let mut start = TopicPartitionList::new();
        for e in offsets.elements() {
            // A partition with nothing since then: read from its end.
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::End,
            };
            start.add_partition_offset(&topic, e.partition(), offset)?;
        }
        consumer.assign(&start)?;
        let mut found = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while found.len() < wanted.len() && Instant::now() < deadline {
            let Ok(m) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else {
                continue;
            };
            let m = m?;
            let code_issued = m.headers().is_some_and(|h| {
                h.iter().any(|h| {
                    h.key == "ce_type"
                        && h.value == Some(onboarding_events::CodeIssuedV1::TYPE.as_bytes())
                })
            });
            let Some(user) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            if !code_issued || !wanted.contains(user) {
                continue;
            }
            if let Some(at) = m
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
            {
                found.entry(user.to_owned()).or_insert(at);
            }
        }
        Ok(found)
    }

    /// A few of every kind of request the run measures (invitations over the API, in a bulk
    /// file and through the intake, their mails, page views and password submissions), at the
    /// run's concurrency; the invitations made.
    async fn warm_up(&self) -> anyhow::Result<u64> {
        let n = (self.args.invitations / 100).clamp(50, 1_000);
        println!("--- engine: warm-up: {n} invitations over the API, {n} in a bulk file, {n} through the intake, page views and 16 passwords");
        let mails_before = self.sink.accepted()?;
        self.invite_over_http(n, 64).await?;
        self.invite_in_bulk(n).await?;
        self.invite_through_kafka(n).await?;
        self.wait_for_mails(mails_before + 3 * n as u64).await?;
        let links = self.links(3 * n as i64).await?;
        ensure!(
            links.len() > 16,
            "the warm-up found {} links of users without a password, more than 16 expected",
            links.len()
        );
        let (views, passwords) = links.split_at(links.len() - 16);
        self.confirm_views(views, 1.0, 64).await?;
        self.submit_passwords(passwords, 8).await?;
        // Their welcome mails, so that none is counted with the run's mails.
        self.wait_for_mails(mails_before + 3 * n as u64 + passwords.len() as u64)
            .await?;
        Ok(3 * n as u64)
    }

    /// Up to `n` users' links, oldest first, of users whose password is not set, minted from
    /// their `CodeIssued` events with the engine's key, exactly as the worker mints them for
    /// their mails.
    async fn links(&self, n: i64) -> anyhow::Result<Vec<Link>> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(&self.args.code_key)
            .context("--code-key is not base64")?;
        let keyring = CodeKeyring::new("k1", [("k1".to_owned(), key)])
            .map_err(|e| anyhow::anyhow!("the code key: {e:?}"))?;
        let rows = sqlx::query(
            "SELECT aggregate_id, payload FROM events c WHERE event_type = 'CodeIssued' \
             AND NOT EXISTS (SELECT 1 FROM events s WHERE s.aggregate_type = c.aggregate_type \
                             AND s.aggregate_id = c.aggregate_id AND s.event_type = 'PasswordSet') \
             ORDER BY global_position LIMIT $1",
        )
        .bind(n)
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|r| {
                let user_id: String = r.get("aggregate_id");
                let payload: Value = r.get("payload");
                let issued = payload
                    .get("CodeIssued")
                    .with_context(|| format!("an unexpected CodeIssued payload: {payload}"))?;
                let code_id: Uuid = serde_json::from_value(issued["code_id"].clone())?;
                let expires_at: DateTime<Utc> =
                    serde_json::from_value(issued["expires_at"].clone())?;
                let key_id = issued["key_id"].as_str().unwrap_or("k1");
                let user_id: Uuid = user_id.parse()?;
                let binding = CodeBinding {
                    user_id,
                    code_id: CodeId::from_random_bytes(*code_id.as_bytes()),
                    expires_at,
                };
                let token = keyring
                    .mint(key_id, &binding)
                    .context("the code's key is not the engine's")?;
                Ok(Link {
                    user_id,
                    token: token.expose().to_owned(),
                })
            })
            .collect()
    }

    /// `GET /confirm` from `clients` clients for `seconds`, over `links`; pages a second.
    async fn confirm_views(
        &self,
        links: &[Link],
        seconds: f64,
        clients: usize,
    ) -> anyhow::Result<f64> {
        ensure!(!links.is_empty(), "no links to open");
        let urls: Arc<Vec<String>> = Arc::new(
            links
                .iter()
                .map(|l| self.url(&format!("/confirm?code={}", urlencoding::encode(&l.token))))
                .collect(),
        );
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (http, urls) = (self.http.clone(), urls.clone());
                tokio::spawn(async move {
                    let (mut ok, mut i) = (0u64, c);
                    while Instant::now() < until {
                        let r = http.get(&urls[i % urls.len()]).send().await?;
                        let status = r.status();
                        let page = r.text().await?;
                        ensure!(
                            status == 200 && page.contains("name=\"csrf\""),
                            "GET /confirm did not show the form: {status}"
                        );
                        ok += 1;
                        i += clients;
                    }
                    Ok::<_, anyhow::Error>(ok)
                })
            })
            .collect();
        let mut pages = 0;
        for t in tasks {
            pages += t.await??;
        }
        Ok(pages as f64 / started.elapsed().as_secs_f64())
    }

    /// Each link's form opened and a password submitted, by `clients` clients; submissions a
    /// second (the form's `GET` included, as a user's browser does it).
    async fn submit_passwords(&self, links: &[Link], clients: usize) -> anyhow::Result<f64> {
        let forms: Arc<Vec<String>> = Arc::new(links.iter().map(|l| l.token.clone()).collect());
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (http, forms, next) = (self.http.clone(), forms.clone(), next.clone());
                let base = self.args.base_url.clone();
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(code) = forms.get(i) else {
                            return Ok::<_, anyhow::Error>(());
                        };
                        let page = http
                            .get(format!("{base}/confirm?code={}", urlencoding::encode(code)))
                            .send()
                            .await?
                            .text()
                            .await?;
                        let csrf = page
                            .split("name=\"csrf\" value=\"")
                            .nth(1)
                            .and_then(|rest| rest.split('"').next())
                            .context("the form has no csrf field")?
                            .to_owned();
                        let password = format!("Bench-{}-pass", Uuid::new_v4().simple());
                        let r = http
                            .post(format!("{base}/confirm"))
                            .form(&[
                                ("code", code.as_str()),
                                ("csrf", csrf.as_str()),
                                ("password", password.as_str()),
                                ("password_confirm", password.as_str()),
                            ])
                            .send()
                            .await?;
                        let status = r.status();
                        ensure!(
                            status.is_success(),
                            "a password submission was refused: {status} {}",
                            r.text().await.unwrap_or_default()
                        );
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        Ok(links.len() as f64 / started.elapsed().as_secs_f64())
    }

    /// Every invitation mailed once (the log), smtp-sink's count at least that, every password
    /// set.
    async fn check_all_mailed(
        &self,
        invited: u64,
        mails_before: u64,
        passwords: &[Link],
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let (accounts, mailed) = loop {
            let row = sqlx::query(
                "SELECT (SELECT count(*) FROM events WHERE event_type = 'UserInvited') AS accounts, \
                        (SELECT count(DISTINCT aggregate_id) FROM events \
                          WHERE event_type = 'InvitationMailSent') AS mailed",
            )
            .fetch_one(&self.db)
            .await?;
            let (accounts, mailed): (i64, i64) = (row.get("accounts"), row.get("mailed"));
            if mailed >= accounts || Instant::now() > deadline {
                break (accounts, mailed);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let failed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE event_type IN ('InvitationMailFailed', 'InvitationMailAbandoned')",
        )
        .fetch_one(&self.db)
        .await?;
        let ids: Vec<String> = passwords.iter().map(|l| l.user_id.to_string()).collect();
        let set: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'Onboarding' \
             AND aggregate_id = ANY($1) AND event_type = 'PasswordSet'",
        )
        .bind(&ids)
        .fetch_one(&self.db)
        .await?;
        let sunk = self.sink.accepted()? - mails_before;
        println!(
            "    {accounts} accounts, {mailed} mailed (the log), {sunk} mails accepted by smtp-sink, {failed} failed attempts, {set} of {} passwords set",
            passwords.len()
        );
        ensure!(
            accounts as u64 == invited,
            "{invited} invitations were accepted but {accounts} accounts exist"
        );
        ensure!(
            mailed == accounts,
            "{} of {accounts} invitations were never mailed",
            accounts - mailed
        );
        ensure!(
            sunk >= invited,
            "smtp-sink accepted {sunk} mails for {invited} invitations"
        );
        ensure!(
            set as usize == passwords.len(),
            "{set} of {} passwords were set",
            passwords.len()
        );
        Ok(
            json!({"accounts": accounts, "mailed": mailed, "smtp_sink_accepted": sunk,
                  "failed_attempts": failed, "passwords_set": set}),
        )
    }
}

async fn wait_for_assignment(consumer: &StreamConsumer) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Polling drives the group join; nobody writes outcomes yet.
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        if consumer.assignment().is_ok_and(|a| a.count() > 0) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the outcome reader got no partitions within 60 s"
        );
    }
}
