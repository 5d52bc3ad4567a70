//! Benchmark (not a test): replay of a large log against a plain `SELECT` streaming the same
//! rows, with the peak memory of each. Run with `tests/bench-replay` (it starts a scratch
//! PostgreSQL); by hand: `cargo run --release -p onboarding-audit --example bench_replay --
//! <admin database url> [events]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::TryStreamExt;
use onboarding_domain::code::CodeId;
use onboarding_domain::password::{HashAlgorithm, HashScheme};
use onboarding_domain::value::{EmailAddress, Locale, TimeZone, UserDomain, Username};
use onboarding_domain::{CodeIssueReason, OnboardingEvent, TemplateRef};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Events per account: the whole happy path plus some link noise.
fn account(n: u64) -> (Uuid, Vec<OnboardingEvent>) {
    let user_id = Uuid::now_v7();
    let now = Utc::now();
    let code_id = CodeId::from_random_bytes(*Uuid::new_v4().as_bytes());
    let template = TemplateRef {
        id: "invitation".into(),
        version: "0123456789ab".into(),
        locale: "en".into(),
    };
    let events = vec![
        OnboardingEvent::UserInvited {
            user_id,
            username: Username::parse(&format!("user{n}")).unwrap(),
            email: EmailAddress::parse(&format!("user{n}@bench.example")).unwrap(),
            domain: UserDomain::primary(),
            locale: Some(Locale::parse("en-GB").unwrap()),
            time_zone: Some(TimeZone::parse("Europe/London").unwrap()),
            claims: Default::default(),
            invited_at: now,
        },
        OnboardingEvent::CodeIssued {
            code_id,
            key_id: "k1".into(),
            issued_at: now,
            expires_at: now + chrono::Duration::hours(24),
            reason: CodeIssueReason::Invitation,
        },
        OnboardingEvent::InvitationMailSent {
            code_id,
            message_id: format!("<{user_id}@bench.example>"),
            smtp_response: "250 2.0.0 Ok: queued".into(),
            template: Some(template.clone()),
            sent_at: now,
        },
        OnboardingEvent::LinkOpened {
            code_id,
            client: "link-scanner".into(),
            opened_at: now,
        },
        OnboardingEvent::LinkOpened {
            code_id,
            client: "browser".into(),
            opened_at: now,
        },
        OnboardingEvent::CodeCheckFailed {
            code_id,
            failures: 1,
            failed_at: now,
        },
        OnboardingEvent::LinkOpened {
            code_id,
            client: "browser".into(),
            opened_at: now,
        },
        // As the log stores it: the scheme, no hash (that is in `credentials`).
        OnboardingEvent::PasswordSet {
            code_id,
            scheme: HashScheme {
                algorithm: HashAlgorithm::Argon2id,
                version: 19,
                memory_kib: 19456,
                iterations: 2,
                parallelism: 1,
            },
            set_at: now,
            password_hash: None,
        },
        OnboardingEvent::UserActivated { activated_at: now },
        OnboardingEvent::WelcomeMailSent {
            message_id: format!("<welcome-{user_id}@bench.example>"),
            template,
            sent_at: now,
        },
    ];
    (user_id, events)
}

async fn load(pool: &PgPool, total: u64) {
    let started = Instant::now();
    let mut n = 0;
    let mut account_no = 0;
    while n < total {
        let (mut ids, mut seqs, mut types, mut versions, mut payloads) =
            (vec![], vec![], vec![], vec![], vec![]);
        while ids.len() < 10_000 && n < total {
            let (user_id, events) = account(account_no);
            account_no += 1;
            for (i, e) in events.into_iter().enumerate() {
                if n == total {
                    break;
                }
                ids.push(user_id.to_string());
                seqs.push(i as i64 + 1);
                types.push(e.name().to_owned());
                versions.push(OnboardingEvent::version_of(e.name()).to_owned());
                payloads.push(serde_json::to_value(&e).unwrap());
                n += 1;
            }
        }
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             SELECT 'Onboarding', id, seq, t, v, p, '{\"actor_kind\": \"system\", \"actor_id\": \"bench\"}' \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[]) AS x(id, seq, t, v, p)",
        )
        .bind(&ids)
        .bind(&seqs)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .execute(pool)
        .await
        .unwrap();
        eprint!("\rloaded {n}/{total} events");
    }
    // The relay is not running: the outbox copies are not part of the benchmark.
    sqlx::query("TRUNCATE outbox").execute(pool).await.unwrap();
    sqlx::query("VACUUM ANALYZE events")
        .execute(pool)
        .await
        .unwrap();
    eprintln!(
        "\rloaded {total} events ({account_no} accounts) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Resident memory now, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `work`, sampling resident memory every 20 ms: (seconds, peak RSS in MiB).
async fn measure<F: std::future::Future<Output = u64>>(work: F) -> (f64, u64, f64) {
    let peak = Arc::new(AtomicU64::new(rss_kib()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let rows = work.await;
    let secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    peak.fetch_max(rss_kib(), Ordering::Relaxed);
    (secs, rows, peak.load(Ordering::Relaxed) as f64 / 1024.0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let admin_url = args
        .next()
        .expect("usage: bench_replay <admin database url> [events]");
    let total: u64 = args.next().map(|n| n.parse().unwrap()).unwrap_or(1_000_000);
    let admin = PgPool::connect(&admin_url).await.unwrap();
    let db = format!("bench_replay_{}", &Uuid::new_v4().simple().to_string()[..8]);
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .unwrap();
    let url = format!("{}/{db}", admin_url.rsplit_once('/').unwrap().0);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    onboarding_store::migrate(&pool).await.unwrap();
    load(&pool, total).await;

    // Warm the cache once, then measure.
    let select = || async {
        let mut rows = sqlx::query(
            "SELECT aggregate_id, sequence, event_type, event_version, payload, recorded_at, global_position \
             FROM events WHERE aggregate_type = 'Onboarding' ORDER BY aggregate_id, sequence",
        )
        .fetch(&pool);
        let mut n = 0u64;
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await.unwrap() {
            let id: &str = row.try_get("aggregate_id").unwrap();
            let payload: serde_json::Value = row.try_get("payload").unwrap();
            bytes += id.len() + usize::from(payload.is_object());
            n += 1;
        }
        std::hint::black_box(bytes);
        n
    };
    select().await;
    let (select_s, select_n, select_mib) = measure(select()).await;
    let (replay_s, replay_n, replay_mib) = measure(async {
        let replayed = onboarding_audit::replay::from_postgres(
            &pool,
            &onboarding_store::PersonalKeys::default(),
            None,
        )
        .await
        .unwrap();
        assert!(
            replayed.differences.is_empty(),
            "{:?}",
            replayed.differences
        );
        replayed.events
    })
    .await;
    let rate = |n: u64, s: f64| n as f64 / s;
    println!("events: {total}");
    println!(
        "plain SELECT streaming (decode every row): {select_n} rows in {select_s:.2} s = {:.0} events/s, peak RSS {select_mib:.1} MiB",
        rate(select_n, select_s)
    );
    println!(
        "replay --from postgres (rebuild + compare):  {replay_n} events in {replay_s:.2} s = {:.0} events/s, peak RSS {replay_mib:.1} MiB",
        rate(replay_n, replay_s)
    );
    println!(
        "replay speed / SELECT speed: {:.2}",
        rate(replay_n, replay_s) / rate(select_n, select_s)
    );
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {db}"))
        .execute(&admin)
        .await
        .unwrap();
}
