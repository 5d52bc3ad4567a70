//! The table: each figure beside the limit that bounds it, with the ratio.

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

/// The machine's limits measured in the same run.
pub struct Limits {
    pub json: Value,
    /// The mail path alone, from a backlog (`backlog.rs`).
    pub mail_from_backlog: Value,
    /// Accepting and publishing that backlog (`backlog.rs`).
    pub invitations_to_backlog: Value,
}

impl Limits {
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| -> anyhow::Result<Value> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(serde_json::from_str(&text)?)
        };
        Ok(Self {
            json: json!({
                "pgbench": read("pgbench.json")?,
                "argon2": read("argon2.json")?,
                "smtp_sink": read("smtp.json")?,
                "kafka": read("kafka.json")?,
                "mailer": read("mailer.json")?,
                "seal": read("seal.json")?,
            }),
            // An engine figure measured before `onboard serve` started (tests/bench/run).
            mail_from_backlog: read("mail_backlog.json")?,
            invitations_to_backlog: read("invite_backlog.json")?,
        })
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn ratio(figure: f64, limit: f64) -> String {
    if limit > 0.0 {
        format!("{:.0} %", figure / limit * 100.0)
    } else {
        "–".into()
    }
}

/// Prints the table (Markdown, so docs/performance.md can keep it as printed).
pub fn print(r: &Value) {
    let l = &r["limits"];
    let e = &r["engine"];
    let pg = |clients: &str| num(&l["pgbench"][clients]);
    let argon = num(&l["argon2"]["hashes_per_second"]);
    let smtp = num(&l["smtp_sink"]["mails_per_second"]);
    let kafka_one = num(&l["kafka"]["records_per_second_one_per_batch"]);
    let kafka_batched = num(&l["kafka"]["records_per_second_batched"]);
    let tx = num(&e["transactions_per_invitation"]);
    let records = num(&e["event_records_per_invitation"]);
    let batches = num(&e["relay_kafka_batches"]);
    let per_batch = if batches > 0.0 {
        format!(
            ", {:.1} records per relay batch",
            num(&e["relay_kafka_batch_records"]) / batches
        )
    } else {
        String::new()
    };
    let kafka_relay = num(&l["kafka"]["records_per_second_relay_batches"]);
    let http = num(&e["invitations_per_second_http"]);
    let bulk = num(&e["invitations_per_second_bulk"]);
    let intake = num(&e["invitations_per_second_kafka_intake"]);
    let mailed = num(&e["mails_per_second_sustained"]);
    let window = num(&e["mail_window_seconds"]);
    let views = num(&e["confirm_views_per_second"]);
    let passwords = num(&e["password_submissions_per_second"]);
    let lat = &e["latency"];

    println!();
    println!(
        "Machine: {} cores. {} invitations. Per invitation (intake to mail): {tx:.1} PostgreSQL transactions, {records:.1} Kafka records on the event topic.",
        r["machine"]["cores"], r["invitations"]
    );
    println!();
    println!("| Figure | Engine | Bounded by | Limit | Ratio |");
    println!("|---|---|---|---|---|");
    let row = |figure: &str, value: String, bound: &str, limit: String, ratio: String| {
        println!("| {figure} | {value} | {bound} | {limit} | {ratio} |");
    };
    row(
        "Invitations accepted, POST /api/v1/users (64 clients)",
        format!("{http:.0}/s"),
        "pgbench append, 32 clients",
        format!("{:.0}/s", pg("clients_32")),
        ratio(http, pg("clients_32")),
    );
    // The bulk runner's rows and the intake's requests are appended in the appender's group
    // commits, as the API's are.
    row(
        &format!(
            "Invitations accepted, one bulk file (bulk.concurrency {})",
            e["bulk_concurrency"]
        ),
        format!("{bulk:.0}/s"),
        "pgbench append, 32 clients",
        format!("{:.0}/s", pg("clients_32")),
        ratio(bulk, pg("clients_32")),
    );
    row(
        &format!(
            "Invitations accepted, Kafka intake (intake.concurrency {})",
            e["intake_concurrency"]
        ),
        format!("{intake:.0}/s"),
        "pgbench append, 32 clients",
        format!("{:.0}/s", pg("clients_32")),
        ratio(intake, pg("clients_32")),
    );
    // An invitation needs two appends (UserInvited with CodeIssued; InvitationMailSent). Each
    // process's appender commits every command waiting in one transaction (ADR 0023), so the
    // bound is PostgreSQL committing many appends at once, as pgbench's 32 clients do.
    row(
        &format!("Invitations mailed, sustained over {window:.0} s"),
        format!("{mailed:.0}/s"),
        "pgbench append, 32 clients, / 2 appends per invitation (group commit, ADR 0023)",
        format!("{:.0}/s", pg("clients_32") / 2.0),
        ratio(mailed, pg("clients_32") / 2.0),
    );
    row(
        &format!("Invitations mailed, sustained over {window:.0} s"),
        format!("{mailed:.0}/s"),
        "smtp-sink, one sequential client",
        format!("{smtp:.0}/s"),
        ratio(mailed, smtp),
    );
    // The mail path alone: the email worker(s) mailing invitations that waited in Kafka. Each
    // mail is one append (InvitationMailSent), group-committed, and one SMTP transaction.
    let b = &e["mail_from_backlog"];
    let backlog = num(&b["mails_per_second"]);
    let backlog_label = format!(
        "Invitations mailed from a backlog of {:.0}, the email worker alone ({} process), over {:.0} s",
        num(&b["invitations"]),
        b["workers"],
        num(&b["window_seconds"])
    );
    row(
        &backlog_label,
        format!("{backlog:.0}/s"),
        "pgbench append, 32 clients (1 append per mail)",
        format!("{:.0}/s", pg("clients_32")),
        ratio(backlog, pg("clients_32")),
    );
    row(
        &backlog_label,
        format!("{backlog:.0}/s"),
        "smtp-sink, one sequential client",
        format!("{smtp:.0}/s"),
        ratio(backlog, smtp),
    );
    let mailer_32 = num(&l["mailer"]["engine_mails_per_second_32"]);
    row(
        &backlog_label,
        format!("{backlog:.0}/s"),
        "the engine's Mailer alone, 32 senders (SMTP alone, below)",
        format!("{mailer_32:.0}/s"),
        ratio(backlog, mailer_32),
    );
    let m = &l["mailer"];
    for senders in ["1", "32"] {
        let engine = num(&m[format!("engine_mails_per_second_{senders}")]);
        let lettre = num(&m[format!("lettre_pool_mails_per_second_{senders}")]);
        row(
            &format!("SMTP alone: the engine's Mailer, {senders} sender(s) (lettre's pool before: {lettre:.0}/s)"),
            format!("{engine:.0}/s"),
            "smtp-sink, one sequential client",
            format!("{smtp:.0}/s"),
            ratio(engine, smtp),
        );
    }
    row(
        "Invitations mailed (goal)",
        format!("{mailed:.0}/s"),
        "the goal",
        "2000/s".into(),
        ratio(mailed, 2000.0),
    );
    // What the whole path costs the machine: the CPU of every process (the engine's, PostgreSQL's
    // backends, tansu, smtp-sink) per invitation, accepting and publishing it, then mailing it,
    // both measured on the backlog. The cores spend it at no more than this rate, even if nothing
    // waited on anything else; the load generator's own CPU is not counted.
    let cores = num(&r["machine"]["cores"]);
    let total_us = |v: &Value| -> f64 { v.as_object().map_or(0.0, |m| m.values().map(num).sum()) };
    let accept_us = total_us(&e["invitations_to_backlog"]["cpu_microseconds_per_invitation"]);
    let mail_us = total_us(&b["cpu_microseconds_per_mail"]);
    if accept_us > 0.0 && mail_us > 0.0 {
        let bound = cores * 1e6 / (accept_us + mail_us);
        row(
            "Invitations mailed (goal)",
            format!("{mailed:.0}/s"),
            &format!(
                "the machine's CPU: {cores:.0} cores / {:.0} µs per invitation ({accept_us:.0} accepting and publishing, {mail_us:.0} mailing, from the backlog)",
                accept_us + mail_us
            ),
            format!("{bound:.0}/s"),
            ratio(mailed, bound),
        );
        row(
            "The goal beside the machine's CPU bound",
            "2000/s".into(),
            "the machine's CPU, as above",
            format!("{bound:.0}/s"),
            ratio(2000.0, bound),
        );
    }
    row(
        &format!(
            "Invitation to mail accepted by the SMTP server at {:.0}/s: p50 / p99 (to InvitationMailSent recorded: {:.0} ms / {:.0} ms)",
            num(&lat["rate_per_second"]),
            num(&lat["recorded_p50_ms"]),
            num(&lat["recorded_p99_ms"])
        ),
        format!(
            "{:.0} ms / {:.0} ms",
            num(&lat["p50_ms"]),
            num(&lat["p99_ms"])
        ),
        "the goal: p99",
        "100 ms".into(),
        ratio(num(&lat["p99_ms"]), 100.0),
    );
    // The broker alone at the same rate: how much of the way after the relay's record is tansu's.
    let d = &e["kafka_delivery"];
    if d.is_object() {
        row(
            &format!(
                "tansu alone at {:.0}/s, a record from producer to consumer: p50 / p99, fresh topic; {} batches a partition (as the event topic)",
                num(&d["grown"]["rate_per_second"]),
                d["grown"]["batches_per_partition"]
            ),
            format!(
                "{:.0} / {:.0} ms; {:.0} / {:.0} ms",
                num(&d["fresh"]["p50_ms"]),
                num(&d["fresh"]["p99_ms"]),
                num(&d["grown"]["p50_ms"]),
                num(&d["grown"]["p99_ms"])
            ),
            "the engine: the relay's record to the mail accepted, p99",
            format!("{:.0} ms", num(&lat["record_to_accepted_p99_ms"])),
            ratio(
                num(&d["grown"]["p99_ms"]),
                num(&lat["record_to_accepted_p99_ms"]),
            ),
        );
    }
    row(
        "Password submissions (form and POST)",
        format!("{passwords:.1}/s"),
        "argon2id on every core",
        format!("{argon:.1}/s"),
        ratio(passwords, argon),
    );
    row(
        "GET /confirm (64 clients)",
        format!("{views:.0}/s"),
        "the goal",
        "5000/s".into(),
        ratio(views, 5000.0),
    );
    row(
        &format!("Event records on the topic while mailing ({records:.1} per invitation{per_batch})"),
        format!("{:.0}/s", mailed * records),
        "tansu from rdkafka, the relay's settings (up to 100 records a batch) / one record per batch / librdkafka's batching",
        format!("{kafka_relay:.0}/s / {kafka_one:.0}/s / {kafka_batched:.0}/s"),
        ratio(mailed * records, kafka_relay),
    );
    let replay = &e["audit_replay"];
    row(
        &format!(
            "Auditor's replay (onboard audit replay, {} events)",
            num(&replay["events"])
        ),
        format!("{:.0} events/s", num(&replay["replay_events_per_second"])),
        "a raw SELECT of the same events, one client",
        format!("{:.0} events/s", num(&replay["select_events_per_second"])),
        ratio(
            num(&replay["replay_events_per_second"]),
            num(&replay["select_events_per_second"]),
        ),
    );
    // The sustained window's cores: what kept the mails below the CPU bound.
    let w = &e["mail_window_cpu_cores"];
    if let Some(cores) = w["cores"].as_object() {
        let used: f64 = cores.values().map(num).sum();
        println!();
        println!(
            "While the mails were sustained ({:.0} s), the machine's {:.1} cores were {:.2} busy{}; {:.2} by other processes, {:.2} idle.",
            num(&w["seconds"]),
            num(&w["all_cores"]),
            num(&w["busy_cores"]),
            cores
                .iter()
                .map(|(name, c)| format!(", {:.2} of them {name}", num(c)))
                .collect::<String>(),
            (num(&w["busy_cores"]) - used).max(0.0),
            num(&w["all_cores"]) - num(&w["busy_cores"])
        );
    }
    let i = &e["invitations_to_backlog"];
    if let Some(cpu) = i["cpu_microseconds_per_invitation"].as_object() {
        println!();
        println!(
            "Accepting the backlog over POST /api/v1/users ({:.0}/s) and publishing it, per invitation: {:.2} PostgreSQL transactions{}.",
            num(&i["accepted_per_second"]),
            num(&i["transactions_per_invitation"]),
            cpu.iter()
                .map(|(name, us)| format!(", {:.0} µs of CPU in {name}", num(us)))
                .collect::<String>()
        );
    }
    if let Some(cpu) = b["cpu_microseconds_per_mail"].as_object() {
        println!();
        println!(
            "Mailing the backlog, per mail: {:.2} PostgreSQL transactions (the worker's and the relay's){} (CPU over the whole phase, the worker's start included).",
            num(&b["transactions_per_mail"]),
            cpu.iter()
                .map(|(name, us)| format!(", {:.0} µs of CPU in {name}", num(us)))
                .collect::<String>()
        );
    }
    // Sealing personal data: CPU beside each append, one thread (the store's own code).
    println!();
    println!("| Sealing a UserInvited's personal fields, one thread | seal | open (as a reader) | a new account's key |");
    println!("|---|---|---|---|");
    let seal = &l["seal"];
    for (mode, label) in [
        ("no_kek", "no key-encryption key"),
        ("kek", "with a key-encryption key"),
    ] {
        let s = &seal[mode];
        println!(
            "| {label} | {:.1} µs | {:.1} µs | {:.1} µs |",
            num(&s["seal_us"]),
            num(&s["open_us"]),
            num(&s["draw_us"])
        );
    }
    println!();
    println!("| Process | after warm-up | max | last | growth |");
    println!("|---|---|---|---|---|");
    if let Some(memory) = r["memory"].as_object() {
        for (name, m) in memory {
            println!(
                "| {name} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:+.1} % |",
                num(&m["after_warm_up_kib"]) / 1024.0,
                num(&m["max_kib"]) / 1024.0,
                num(&m["last_kib"]) / 1024.0,
                num(&m["growth_percent"])
            );
        }
    }
    // What of onboard's memory its malloc holds (the Rust code's and librdkafka's), as jemalloc
    // counts it.
    let heap = &r["engine_heap"];
    let at = |k: &str, f: &str| num(&heap[k][f]);
    if heap["end"].is_object() && heap["after_warm_up"].is_object() {
        println!();
        println!(
            "onboard's heap (jemalloc's statistics: the Rust code's and librdkafka's allocations), after the warm-up / after the three phases that invite / at the end: {:.0} / {:.0} / {:.0} MiB allocated, {:.0} / {:.0} / {:.0} MiB resident in jemalloc.",
            at("after_warm_up", "allocated_mib"),
            at("after_invitations", "allocated_mib"),
            at("end", "allocated_mib"),
            at("after_warm_up", "resident_mib"),
            at("after_invitations", "resident_mib"),
            at("end", "resident_mib")
        );
    }
    println!();
}
